"""What a stream frame costs the worker to publish: alone, and through the Outbox.

    .venv/bin/python bench/publish.py [--frames 20000] [--streams 1,4,16,64]

A worker publishes each chunk of each stream it runs (`workers.publisher`). This script
measures, against a private redis-server, this process's CPU (user+system, as
`time.process_time` counts it) per published frame:

- **alone**: `workers.connection.publish`, one SPUBLISH per round trip, one after the
  other: what every frame cost before the Outbox;
- **outbox, N streams**: N tasks, each publishing its frames one after the other through
  one `workers.outbox.Outbox`, as N streams of one worker do; the frames handed in while a
  round trip is out share the next one. The rounds it took are printed too.

Nobody subscribes: SPUBLISH costs Redis the same either way, and what is measured is the
client's side. Run it with nothing else busy on the machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import trio

from ingress.dev import start_private_redis
from workers.connection import RedisClient, connect, publish
from workers.outbox import Outbox

PAYLOAD = b'{"t":"chunk","seq":1,"data":"' + b"x" * 160 + b'"}'
WARMUP = 2000
TIMEOUT_S = 5.0


async def alone(redis: RedisClient, frames: int) -> tuple[float, int]:
    """CPU seconds for `frames` publishes one at a time, and the round trips (= frames)."""
    started = time.process_time()
    for _ in range(frames):
        await publish(redis, "sb:bench:{x}", PAYLOAD)
    return time.process_time() - started, frames


async def through_outbox(redis: RedisClient, frames: int, streams: int) -> tuple[float, int]:
    """CPU seconds for `frames` publishes by `streams` concurrent streams, and the rounds."""
    outbox = Outbox(redis)
    each = frames // streams

    async def stream(index: int) -> None:
        channel = f"sb:bench:{{x}}:{index}"
        for _ in range(each):
            await outbox.publish(channel, PAYLOAD, TIMEOUT_S)

    started = time.process_time()
    async with trio.open_nursery() as nursery:
        for index in range(streams):
            nursery.start_soon(stream, index)
    return time.process_time() - started, outbox.rounds


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        server, port = start_private_redis(Path(workdir))
        try:
            async with connect(f"redis://127.0.0.1:{port}/0") as redis:
                await alone(redis, WARMUP)
                cpu, rounds = await alone(redis, args.frames)
                print(f"{'how':<20} {'frames':>7} {'rounds':>7} {'CPU us/frame':>13}")
                print(f"{'alone':<20} {args.frames:>7} {rounds:>7} {cpu / args.frames * 1e6:>13.1f}")
                for streams in args.streams:
                    frames = args.frames // streams * streams
                    cpu, rounds = await through_outbox(redis, frames, streams)
                    print(f"{f'outbox, {streams} streams':<20} {frames:>7} {rounds:>7} "
                          f"{cpu / frames * 1e6:>13.1f}")
        finally:
            server.kill()
            server.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--streams", type=lambda s: [int(n) for n in s.split(",")],
                        default=[1, 4, 16, 64])
    trio.run(main, parser.parse_args())
