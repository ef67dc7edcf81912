"""`switchboard batches list|show|cancel`: the operator's view of every org's batches.

Each verb reads Redis through `ingress.batchstore.BatchStore` as the operator (org None).
`show` follows a batch until it has finished: on a terminal a progress bar redrawn in
place, otherwise one line per change (and one every `HEARTBEAT_S` without change), then
a final line. The rate is the lines ended per minute over the last `RATE_WINDOW_S` of
polls (before two polls, the average since the batch started); the ETA is the remaining
lines at that rate.
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import TextIO

import coredis
import trio

from ingress.batchstore import BatchStore
from schemas.batch import ACTIVE, BatchState
from schemas.config import Config

RATE_WINDOW_S = 60.0
HEARTBEAT_S = 30.0
BAR_WIDTH = 30
NOT_COMPLETED = 3  # exit status of `show` for a batch that finished other than completed


def add_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser],
               config_flag: Callable[[argparse.ArgumentParser], None]) -> None:
    """The `batches` verb and its own verbs."""
    batches = verbs.add_parser("batches", help="follow and cancel batches (every org's)")
    batch_verbs = batches.add_subparsers(dest="batches_verb", required=True)
    listing = batch_verbs.add_parser("list", help="batches newest first: status and counts")
    config_flag(listing)
    listing.add_argument("--org", default=None, help="only this org's; default: every org's")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    show = batch_verbs.add_parser(
        "show", help="lines done / failed / remaining, rate and ETA, until the batch has "
        f"finished (exit 0 if completed, {NOT_COMPLETED} if failed, expired or cancelled)")
    config_flag(show)
    show.add_argument("batch_id")
    show.add_argument("--once", action="store_true", help="print the figures now and return")
    show.add_argument("--interval", type=float, default=1.0, help="seconds between reads")
    cancel = batch_verbs.add_parser("cancel", help="cancel a batch; prints its status after")
    config_flag(cancel)
    cancel.add_argument("batch_id")


async def run(config: Config, args: argparse.Namespace) -> int:
    """Run one `batches` verb; 1 (one line on stderr) for a batch id that is not there."""
    from workers.connection import connect

    try:
        async with connect(config.redis_url) as redis:
            store = BatchStore(redis)
            if args.batches_verb == "list":
                return await _list(store, args.org, args.limit)
            if args.batches_verb == "cancel":
                state = await store.cancel(args.batch_id, None)
                if state is None:
                    return _unknown(args.batch_id)
                print(f"{state.record.id} {state.status}")
                return 0
            return await _show(store, args.batch_id, args.once, max(args.interval, 0.01),
                               sys.stdout)
    except Exception as exc:
        failure = _redis_failure(exc)
        if failure is None:
            raise
        print(f"switchboard: Redis at {config.redis_url.rsplit('@', 1)[-1]} failed: "
              f"{failure}", file=sys.stderr)
        return 2


def _redis_failure(exc: BaseException) -> BaseException | None:
    """The Redis error behind `exc` (the client's task group wraps it), else None."""
    if isinstance(exc, BaseExceptionGroup):
        leaves = [_redis_failure(inner) for inner in exc.exceptions]
        return leaves[0] if leaves and all(leaves) else None
    return exc if isinstance(exc, coredis.exceptions.RedisError | OSError) else None


def _unknown(batch_id: str) -> int:
    print(f"switchboard: no batch {batch_id!r}", file=sys.stderr)
    return 1


def _time(unix: int) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def _list(store: BatchStore, org: str | None, limit: int) -> int:
    if limit < 1:
        print("switchboard: --limit must be at least 1", file=sys.stderr)
        return 2
    states, more = await store.list(org, limit=limit)
    width = max([len(s.record.id) for s in states] + [8])
    orgs = max([len(s.org) for s in states] + [3])
    print(f"{'BATCH ID':{width}} {'ORG':{orgs}} {'STATUS':11} {'DONE/FAILED/TOTAL':>19} CREATED")
    for s in states:
        counts = f"{s.completed}/{s.failed}/{s.total}"
        print(f"{s.record.id:{width}} {s.org:{orgs}} {s.status:11} {counts:>19} "
              f"{_time(s.record.created_at)}")
    if more:
        print(f"(more batches: raise --limit above {limit})")
    return 0


def remaining(state: BatchState) -> int:
    return max(state.total - state.completed - state.failed, 0)


class Rate:
    """Lines ended per minute over the last RATE_WINDOW_S of reads."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, state: BatchState) -> float | None:
        """Record a read; the rate now (None: not known yet)."""
        ended = state.completed + state.failed
        self.samples.append((now, ended))
        while len(self.samples) > 2 and now - self.samples[1][0] >= RATE_WINDOW_S:
            self.samples.popleft()
        first_at, first = self.samples[0]
        if now - first_at >= 1.0:
            return (ended - first) / (now - first_at) * 60
        return average_rate(state)


def average_rate(state: BatchState) -> float | None:
    """Lines ended per minute since the batch went in_progress (None: not started)."""
    if not state.in_progress_at:
        return None
    end = next((getattr(state, f) for f in ("finalizing_at", "cancelling_at") if
                getattr(state, f)), 0) or time.time()
    seconds = end - state.in_progress_at
    return (state.completed + state.failed) / seconds * 60 if seconds >= 1 else None


def _duration(seconds: float) -> str:
    whole = int(seconds)
    if whole >= 3600:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    if whole >= 60:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole}s"


def figures(state: BatchState, rate: float | None) -> str:
    """done / failed / remaining, rate and ETA, on one line."""
    left = remaining(state)
    eta = "-"
    if state.status in ("validating", "in_progress") and rate and left:
        eta = _duration(left / rate * 60)
    elif state.status == "in_progress" and not left:
        eta = "0s"
    rate_text = "-" if rate is None else f"{rate:.1f}/min"
    return (f"done {state.completed}  failed {state.failed}  remaining {left} of {state.total}"
            f"  rate {rate_text}  ETA {eta}")


def bar(state: BatchState, rate: float | None, columns: int = 200) -> str:
    """The progress bar line (without the carriage return), narrower than `columns`: a
    line that wrapped could not be redrawn in place."""
    ended = state.completed + state.failed
    share = ended / state.total if state.total else 0.0
    head, tail = f"{state.status:11} ", f" {share * 100:5.1f}%  {figures(state, rate)}"
    width = max(min(BAR_WIDTH, columns - 3 - len(head) - len(tail)), 10)
    filled = int(share * width)
    return f"{head}[{'#' * filled}{'.' * (width - filled)}]{tail}"[:max(columns - 1, 1)]


def header(state: BatchState) -> str:
    record = state.record
    return (f"{record.id}  org {state.org}  {record.endpoint}  created "
            f"{_time(record.created_at)}  expires {_time(record.expires_at)}")


def final(state: BatchState) -> str:
    """What a finished batch ended as: its counts, how long it took, its files."""
    ended_at = getattr(state, f"{state.status}_at", 0) or int(time.time())
    words = [f"{state.record.id} {state.status}: {state.completed} done, {state.failed} failed"]
    if left := remaining(state):
        words.append(f"{left} not run")
    words.append(f"of {state.total} in {_duration(max(ended_at - state.record.created_at, 0))}")
    text = ", ".join(words)
    if state.output_file_id:
        text += f"; output {state.output_file_id}"
    if state.error_file_id:
        text += f"; errors {state.error_file_id}"
    if state.errors:
        first = state.errors[0]
        where = f"line {first.line}: " if first.line else ""
        text += f"; {len(state.errors)} validation errors, first: {where}{first.message}"
    return text


async def _show(store: BatchStore, batch_id: str, once: bool, interval: float,
                out: TextIO) -> int:
    state = await store.get(batch_id, None)
    if state is None:
        return _unknown(batch_id)
    if once:
        print(header(state), file=out)
        print(f"{state.status}  {figures(state, average_rate(state))}", file=out)
        if state.status not in ACTIVE:
            print(final(state), file=out)
        return 0
    tty = out.isatty()
    rate = Rate()
    print(header(state), file=out, flush=True)
    drawn, last, last_at = False, "", 0.0
    try:
        while True:
            now = trio.current_time()
            current = rate.add(now, state)
            if tty:
                columns = shutil.get_terminal_size().columns  # read again: resizes
                out.write("\r" + bar(state, current, columns) + "\x1b[K")
                out.flush()
                drawn = True
            else:
                seen = (state.status, state.completed, state.failed)
                if str(seen) != last or now - last_at >= HEARTBEAT_S:
                    stamp = datetime.datetime.now(datetime.UTC).strftime("%H:%M:%SZ")
                    print(f"{stamp} {state.status}  {figures(state, current)}", file=out,
                          flush=True)
                    last, last_at = str(seen), now
            if state.status not in ACTIVE:
                break
            await trio.sleep(interval)
            read = await store.get(batch_id, None)
            if read is None:  # expired from Redis (retention) while we watched
                if drawn:
                    out.write("\n")
                    drawn = False
                print(f"switchboard: batch {batch_id!r} is gone", file=sys.stderr)
                return 1
            state = read
    finally:
        if drawn:
            out.write("\n")
            out.flush()
    print(final(state), file=out, flush=True)
    return 0 if state.status == "completed" else NOT_COMPLETED
