"""How long a usage report and the request log's writer take (issue 10's figures).

Starts a private redis-server, fills `--days` day hashes of one org with `--tuples`
distinct dimension tuples each (five metrics per tuple, as the finish script writes
them), times `usage_report` for three groupings, then times `RequestLog.record` and how
fast one writer flushes `--records` records. Prints one line per figure.

    .venv/bin/python bench/usage_report.py [--days 30] [--tuples 1000] [--records 50000]
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import tempfile
import time

import trio

from ingress.dev import start_private_redis
from ingress.requestlog import RequestLog
from ingress.usage import usage_report
from schemas import names
from schemas.requestlog import RequestRecord
from schemas.usage import UsageQuery, encode_dimensions
from workers.connection import connect

METRICS = (("requests", 3), ("prompt_tokens", 300), ("completion_tokens", 90),
           ("cost_micro_usd", 1234), ("priced_requests", 3))


async def fill(redis: object, days: int, tuples: int) -> datetime.date:
    today = datetime.datetime.now(datetime.UTC).date()
    for back in range(days):
        key = names.usage_day("acme", (today - datetime.timedelta(days=back)).isoformat())
        async with redis.pipeline(transaction=False) as pipe:  # type: ignore[attr-defined]
            for t in range(tuples):
                dims = encode_dimensions(f"p{t % 5}", f"key_{t % 20}", f"m{t % 3}", "up",
                                         f"user-{t}", f"thread-{t}")
                for metric, amount in METRICS:
                    pipe.hincrby(key, f"{metric}:{dims}", amount)
    return today


async def main(port: int, args: argparse.Namespace) -> None:
    async with connect(f"redis://127.0.0.1:{port}/0") as redis:
        today = await fill(redis, args.days, args.tuples)
        for groups in ("", "day,model", "identity"):
            query = UsageQuery(from_=today - datetime.timedelta(days=args.days - 1), to=today,
                               group_by=groups)
            started = time.perf_counter()
            report = await usage_report(redis, "acme", query)
            print(f"report, {args.days} days x {args.tuples} tuples, group_by={groups!r}: "
                  f"{len(report.data)} rows in {(time.perf_counter() - started) * 1000:.0f} ms")
        log = RequestLog(redis, retention_days=30, buffer=args.records, timeout_s=30)
        record = RequestRecord(
            id="req_" + "0" * 32, time="2026-12-02T00:00:00.000Z", org="acme", project="web",
            key_id="key_0123456789abcdef", endpoint="chat", model="gpt-4o-mini",
            provider="openai", status=200, latency_ms=812.4, ttft_ms=95.1, prompt_tokens=31,
            completion_tokens=12, cost_usd=0.000012, identity="user-42", thread="t-7",
            stream=True)
        started = time.perf_counter()
        for _ in range(args.records):
            log.record(record)
        recorded = time.perf_counter()
        async with trio.open_nursery() as nursery:
            await nursery.start(log.serve)
            while log.written < args.records:
                await trio.sleep(0.01)
            flushed = time.perf_counter()
            nursery.cancel_scope.cancel()
        memory = await redis.memory_usage(names.request_log("acme"))
        print(f"record(): {(recorded - started) / args.records * 1e6:.1f} us each; writer: "
              f"{args.records / (flushed - recorded):.0f} records/s; "
              f"{(memory or 0) / args.records:.0f} bytes of Redis per record")


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--tuples", type=int, default=1000)
    parser.add_argument("--records", type=int, default=50_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        process, port = start_private_redis(pathlib.Path(workdir))
        try:
            trio.run(main, port, args)
        finally:
            process.terminate()
            process.wait(timeout=10)


if __name__ == "__main__":
    run()
