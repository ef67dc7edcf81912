"""Peak resident memory of each target's process tree, from /proc (Linux only).

`peak_rss_mb` is read once, at the end of a run while everything still runs: the
VmHWM ("high water mark", the peak RSS since the process started) of the root and of
every descendant found through /proc/*/stat parent links, added up. A sum of
per-process peaks is an upper bound on the tree's simultaneous peak (the processes
need not have peaked at the same moment); children that already exited are missed.
"""

from __future__ import annotations

import os
from pathlib import Path

# The process trees behind each measured path; "direct" is the fake upstream itself.
TREES = {
    "direct": ("upstream",),
    "switchboard": ("ingress", "worker", "redis"),
    "litellm": ("litellm",),
    "portkey": ("portkey",),
}


def descendants(root: int) -> list[int]:
    """`root` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def status_kib(pid: int, field: str) -> int:
    """A memory field of /proc/PID/status (VmHWM, VmRSS) in KiB (0 if the process is gone
    or has no memory of its own)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def peak_rss_kib(pid: int) -> int:
    """VmHWM of one process in KiB."""
    return status_kib(pid, "VmHWM")


def tree_peak_rss_mb(root: int) -> float:
    """The VmHWM of `root` and its descendants, added up, in MB (10^6 bytes)."""
    return round(sum(peak_rss_kib(pid) for pid in descendants(root)) * 1024 / 1e6, 1)


def peak_rss_mb(pids: dict[str, int]) -> dict[str, dict[str, float]]:
    """{path: {process: MB, ..., "total": MB}} for each path whose processes are in `pids`
    (process name -> pid of the root of its tree)."""
    table: dict[str, dict[str, float]] = {}
    for path, names in TREES.items():
        if all(name in pids for name in names):
            row = {name: tree_peak_rss_mb(pids[name]) for name in names}
            row["total"] = round(sum(row.values()), 1)
            table[path] = row
    return table


def render(table: dict[str, dict[str, float]]) -> str:
    """The peak-RSS table as Markdown."""
    lines = ["Peak RSS of each path's process tree, MB (VmHWM of every process at the end of the run,"
             " added up; direct = the fake upstream):", "",
             "| path | processes | peak RSS MB |", "| --- | --- | ---: |"]
    for path, row in table.items():
        parts = ", ".join(f"{name} {mb:.1f}" for name, mb in row.items() if name != "total")
        lines.append(f"| {path} | {parts} | {row['total']:.1f} |")
    return "\n".join(lines)
