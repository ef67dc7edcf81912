"""Where the CPU of a request goes: py-spy samples of the ingress and the worker.

`bench/overhead.py --py-spy DIR` samples both Switchboard processes (py-spy, from PyPI:
`pip install py-spy`, root or ptrace rights) while each measured Switchboard scenario runs,
`--nonblocking` (the process is not paused), and writes the collapsed stacks to
`DIR/<scenario>-<process>.txt`. Then, or later with

    .venv/bin/python bench/spy.py DIR [--top N]

it prints for each file the share of the samples in which each package's code was running
(the innermost frame's file: our `ingress/`, `workers/`, `schemas/`, or a library) and
the functions most often on the stack (inclusive) and running (self). Idle samples (the
event loop waiting in epoll) are left out by py-spy itself, so shares are of busy time.
A sampled run is slower than an unsampled one: use it for where, not how fast.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

RATE = 250  # samples per second per process
ENTRY = 3  # outermost frames every stack shares (the script, cli.main, trio.run): not shown
_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^():]+)(?::\d+)?\)$")
_LINE = re.compile(r":\d+\)$")
OURS = ("ingress/", "workers/", "schemas/")


def py_spy() -> str:
    """The py-spy executable next to this Python, or on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if not found:
        raise RuntimeError("--py-spy needs py-spy: .venv/bin/pip install py-spy")
    return found


class Sampler:
    """py-spy recording some pids until `stop()`; one collapsed-stacks file each."""

    def __init__(self, outputs: dict[int, Path], *, subprocesses: bool = False) -> None:
        # --subprocesses: a supervisor (`--processes N`) does no work itself; its children do.
        extra = ["--subprocesses"] if subprocesses else []
        self.recorders = [
            subprocess.Popen([py_spy(), "record", "--pid", str(pid), "--rate", str(RATE),
                              "--format", "raw", "--nonblocking", *extra, "--output", str(path)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
            for pid, path in outputs.items()]

    def stop(self) -> None:
        """SIGINT each recorder (it writes its file then) and wait for it."""
        for recorder in self.recorders:
            with contextlib.suppress(ProcessLookupError):
                recorder.send_signal(signal.SIGINT)
        for recorder in self.recorders:
            try:
                recorder.wait(timeout=30)
            except subprocess.TimeoutExpired:
                recorder.kill()
                recorder.wait()


def read_stacks(path: Path) -> Counter[tuple[str, ...]]:
    """Collapsed stacks (`outer;...;inner COUNT` per line) as frame tuples, outermost first."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            # The first frame is the thread ("process 123:..." / thread name): dropped.
            # Line numbers are dropped: a function is one row, wherever in it the sample fell.
            frames = tuple(_LINE.sub(")", frame) for frame in stack.split(";") if "(" in frame)
            stacks[frames] += int(count)
    return stacks


def package_of(frame: str) -> str:
    """`ingress/gateway.py` for our modules, else the library's top package (`quart`,
    `h11`, `<stdlib>`...), from the frame's file."""
    found = _FRAME.match(frame)
    path = found.group("file") if found else frame
    for ours in OURS:
        if ours in path:
            return path[path.index(ours):]
    head = path.split("/")[0]
    return head.removesuffix(".py") if "/" in path else f"<stdlib {head}>"


def summary(path: Path, top: int) -> str:
    """One file's tables, as Markdown."""
    stacks = read_stacks(path)
    total = sum(stacks.values())
    if not total:
        return f"### {path.name}\n\nno samples\n"
    by_package: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    for frames, count in stacks.items():
        if not frames:
            continue
        by_package[package_of(frames[-1])] += count
        self_time[frames[-1]] += count
        for frame in set(frames[ENTRY:]):
            inclusive[frame] += count

    def table(title: str, counter: Counter[str]) -> list[str]:
        rows = [f"| {title} | share |", "| --- | ---: |"]
        rows += [f"| `{name}` | {100 * count / total:.1f}% |" for name, count in counter.most_common(top)]
        return rows

    lines = [f"### {path.stem} ({total} busy samples at {RATE}/s)", "",
             *table("running in (innermost frame's module)", by_package), "",
             *table("on the stack (inclusive)", inclusive), "",
             *table("running (self)", self_time), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="where --py-spy wrote its files")
    parser.add_argument("--top", type=int, default=15, help="rows per table (default 15)")
    args = parser.parse_args(argv)
    files = sorted(args.directory.glob("*.txt"))
    if not files:
        print(f"spy: no *.txt in {args.directory}", file=sys.stderr)
        return 1
    for path in files:
        print(summary(path, args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
