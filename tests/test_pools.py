"""The worker's pooled upstream transport (workers/providers/_pools.py): requests spread
over small pools, each pool's slot held until its response is closed, never leaked."""

from __future__ import annotations

import ssl

import httpx2
import trio

from tests.fakes.openai_upstream import Behavior, FakeOpenAI
from workers.providers._pools import PooledTransport

POOL_SIZE = 20
HELD = 3 * POOL_SIZE


async def test_held_streams_spread_over_the_pools_and_give_their_slots_back(
        fake_openai: FakeOpenAI) -> None:
    fake_openai.when("hold", *[Behavior(chunks=["a", "b"], chunk_delay_s=1.0)] * HELD)
    transport = PooledTransport(HELD, verify=ssl.create_default_context(), pool_size=POOL_SIZE)
    assert len(transport.pools) == 3
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hold"}]}
    opened = trio.Semaphore(0)
    done: list[bytes] = []
    async with httpx2.AsyncClient(transport=transport, timeout=30) as http:

        async def one() -> None:
            async with http.stream("POST", fake_openai.base_url + "/chat/completions",
                                   json=body) as response:
                opened.release()
                done.append(await response.aread())

        with trio.fail_after(20):  # (a pool that never gave a slot back would hang here)
            async with trio.open_nursery() as nursery:
                for _ in range(HELD):
                    nursery.start_soon(one)
                for _ in range(HELD):
                    await opened.acquire()
                # Every stream is open at once: each pool holds a third of them.
                assert transport.in_flight == [POOL_SIZE] * 3
        assert transport.in_flight == [0, 0, 0]
        assert len(done) == HELD and all(b"data: [DONE]" in answer for answer in done)
        assert sum(len(pool._pool.connections) for pool in transport.pools) == HELD


async def test_a_refused_or_cancelled_request_gives_its_slot_back() -> None:
    transport = PooledTransport(10, verify=ssl.create_default_context(), pool_size=10)
    async with httpx2.AsyncClient(transport=transport, timeout=5) as http:
        # Nothing listens on port 9 of the loopback: refused at once.
        for _ in range(3):
            try:
                await http.post("http://127.0.0.1:9/v1/chat/completions", content=b"{}")
            except httpx2.ConnectError:
                pass
            else:
                raise AssertionError("a refused connection answered")
        assert transport.in_flight == [0]
        with trio.move_on_after(0):  # cancelled before it could send
            await http.post("http://127.0.0.1:9/v1/chat/completions", content=b"{}")
        assert transport.in_flight == [0]
