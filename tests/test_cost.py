"""Route prices and the cost of each finished request, metered in micro-dollars."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import openai
import pytest
import trio

from ingress.dev import free_port
from schemas.config import ConfigError, parse_config
from tests.conftest import Gateway, make_config, start_gateway
from tests.fakes.openai_upstream import Behavior, FakeOpenAI
from tests.test_metrics import scrape_until, value
from workers.service import run_workers

HI = [{"role": "user", "content": "abcdefgh"}]
# Prices that make every cost a whole number of micro-dollars: the expected figures
# below are exact, not rounded the way the gateway rounds.
IN, OUT = 2.0, 8.0
SWITCHBOARD = str(Path(sys.executable).with_name("switchboard"))


def micro(prompt: int, completion: int) -> int:
    """Tokens times USD per million tokens is micro-dollars."""
    return int(prompt * IN + completion * OUT)


async def priced(nursery: trio.Nursery, redis_url: str, fake: FakeOpenAI, *,
                 workers: bool = True) -> Gateway:
    config = make_config(
        redis_url, {"up": {"kind": "openai", "base_url": fake.base_url, "max_retries": 0}},
        [{"slug": "paid", "routes": [{"provider": "up", "model": "u", "input_per_mtok": IN,
                                      "output_per_mtok": OUT}]},
         {"slug": "free", "routes": [{"provider": "up", "model": "u"}]}])
    return await start_gateway(nursery, config, workers=workers)


async def test_a_plain_request_on_a_priced_route_meters_its_exact_cost(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    gateway = await priced(nursery, redis_url, fake_openai)
    answer = await gateway.client().chat.completions.create(
        model="paid", messages=HI)  # type: ignore[arg-type]
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    usage = await gateway.usage()
    assert usage["cost_micro_usd"] == micro(answer.usage.prompt_tokens,
                                            answer.usage.completion_tokens)
    assert usage["priced_requests"] == usage["requests"] == 1


async def test_a_streamed_request_on_a_priced_route_meters_its_exact_cost(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    gateway = await priced(nursery, redis_url, fake_openai)
    stream = await gateway.client().chat.completions.create(
        model="paid", messages=HI, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True})
    last = [chunk async for chunk in stream if chunk.usage is not None][-1].usage
    assert last is not None and last.completion_tokens > 0
    with trio.fail_after(10):  # the stream's last event is published before it is metered
        while "cost_micro_usd" not in (usage := await gateway.usage()):
            await trio.sleep(0.05)
    assert usage["cost_micro_usd"] == micro(last.prompt_tokens, last.completion_tokens)


async def test_a_cut_stream_on_a_priced_route_costs_what_it_metered(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    gateway = await priced(nursery, redis_url, fake_openai)
    fake_openai.then(Behavior(chunks=["abcd", "efgh", "ijkl"], break_after=2))
    stream = await gateway.client().chat.completions.create(
        model="paid", messages=HI, stream=True)  # type: ignore[arg-type]
    with pytest.raises(openai.APIError):  # the error event that ends the cut stream
        async for _ in stream:
            pass
    with trio.fail_after(10):
        while not (usage := await gateway.usage()):
            await trio.sleep(0.05)
    assert usage["completion_tokens"] == 2  # the two chunks that went out (8 characters)
    assert usage["cost_micro_usd"] == micro(usage["prompt_tokens"], 2)


async def test_an_embeddings_route_prices_its_input_tokens(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    gateway = await priced(nursery, redis_url, fake_openai)
    answer = await gateway.client().embeddings.create(model="paid", input=["a", "b"])
    assert answer.usage.prompt_tokens == 6
    assert (await gateway.usage())["cost_micro_usd"] == micro(6, 0)


async def test_an_unpriced_route_costs_0_and_is_counted_unpriced(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    gateway = await priced(nursery, redis_url, fake_openai)
    client = gateway.client()
    await client.chat.completions.create(model="free", messages=HI)  # type: ignore[arg-type]
    await client.chat.completions.create(model="free", messages=HI)  # type: ignore[arg-type]
    usage = await gateway.usage()
    assert usage["requests"] == 2 and usage["completion_tokens"] > 0
    assert "cost_micro_usd" not in usage and "priced_requests" not in usage  # 0, and unpriced


@pytest.mark.parametrize("field", ["input_per_mtok", "output_per_mtok"])
def test_a_negative_price_is_a_config_error_naming_the_field(field: str) -> None:
    raw: dict[str, Any] = {"providers": {"up": {"kind": "mock"}},
                           "models": [{"slug": "m", "routes": [{"provider": "up", "model": "u",
                                                                field: -0.1}]}]}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, "sb.toml")
    assert f"$.models[0].routes[0].{field}" in str(caught.value)
    assert ">= 0" in str(caught.value)


async def test_the_worker_counts_the_cost_in_its_metrics(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI) -> None:
    gateway = await priced(nursery, redis_url, fake_openai, workers=False)
    port = free_port()
    await nursery.start(partial(run_workers, gateway.config, metrics_bind=("127.0.0.1", port)))
    answer = await gateway.client().chat.completions.create(
        model="paid", messages=HI)  # type: ignore[arg-type]
    assert answer.usage is not None
    await gateway.client().chat.completions.create(
        model="free", messages=HI)  # type: ignore[arg-type]
    expected = micro(answer.usage.prompt_tokens, answer.usage.completion_tokens) / 1e6
    samples = await scrape_until(f"http://127.0.0.1:{port}/metrics", lambda s: value(
        s, "switchboard_cost_usd_total", model="free", provider="up") is not None)
    assert value(samples, "switchboard_cost_usd_total", model="paid",
                 provider="up") == pytest.approx(expected)
    assert value(samples, "switchboard_cost_usd_total", model="free", provider="up") == 0


async def test_the_usage_command_shows_the_cost_and_says_unpriced(
        nursery: trio.Nursery, redis_url: str, fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    gateway = await priced(nursery, redis_url, fake_openai)
    answer = await gateway.client().chat.completions.create(
        model="paid", messages=HI)  # type: ignore[arg-type]
    assert answer.usage is not None
    config = tmp_path / "sb.toml"
    config.write_text(f'redis_url = "{redis_url}"\n')

    def usage() -> subprocess.CompletedProcess[str]:
        return subprocess.run([SWITCHBOARD, "usage", "--config", str(config), "--org", "acme"],
                              capture_output=True, text=True, timeout=30,
                              env={**os.environ, "REDIS_URL": redis_url})

    shown = await trio.to_thread.run_sync(usage)
    assert shown.returncode == 0, shown.stderr
    header, row = shown.stdout.splitlines()[:2]
    assert "COST USD" in header
    cost = micro(answer.usage.prompt_tokens, answer.usage.completion_tokens) / 1e6
    assert row.split()[6] == f"{cost:.6f}" and "unpriced" not in shown.stdout

    await gateway.client().chat.completions.create(model="free", messages=HI)  # type: ignore[arg-type]
    shown = await trio.to_thread.run_sync(usage)
    assert shown.stdout.splitlines()[1].split()[6] == f"{cost:.6f}*"
    assert "* 1 requests unpriced" in shown.stdout
