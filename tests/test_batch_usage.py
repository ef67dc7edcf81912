"""Usage by traffic: batch lines apart from interactive requests in every usage report.

The day's breakdown hash is written as the workers' finish script writes it: interactive
fields with the six dimensions they always had, batch lines with
`encode_dimensions(..., traffic="batch")`. Then `GET /v1/admin/usage`, its CSV and
`switchboard usage` must show the two apart, and the totals must hold both.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import httpx
import trio

from ingress.keys import KeyStore
from schemas import names
from schemas.usage import encode_dimensions
from tests.conftest import TLS, Gateway, make_config, start_gateway
from tests.test_cli import run, write_config

INTERACTIVE = {"requests": 3, "prompt_tokens": 30, "completion_tokens": 12,
               "cost_micro_usd": 600, "priced_requests": 3, "errors": 1}
BATCH = {"requests": 5, "prompt_tokens": 50, "completion_tokens": 20, "cost_micro_usd": 250,
         "priced_requests": 5, "errors": 2}
OTHER_MODEL = {"requests": 1, "prompt_tokens": 4, "completion_tokens": 4,
               "cost_micro_usd": 10, "priced_requests": 1}


async def meter(redis: Any, org: str, fields: dict[str, int], *, model: str = "m",
                traffic: str = "") -> None:
    """Count one dimension tuple's metrics in today's hash, as the finish script does."""
    dims = encode_dimensions("web", "key_1", model, "up", "", "", traffic=traffic)
    for metric, amount in fields.items():
        await redis.hincrby(names.usage_day(org, names.day()), f"{metric}:{dims}", amount)


def row(counts: dict[str, int], **groups: str) -> dict[str, Any]:
    return {**groups, "requests": counts["requests"], "prompt_tokens": counts["prompt_tokens"],
            "completion_tokens": counts["completion_tokens"],
            "cost_usd": counts["cost_micro_usd"] / 1e6, "errors": counts.get("errors", 0),
            "unpriced_requests": 0}


async def metered(nursery: trio.Nursery, redis_url: str) -> tuple[Gateway, str]:
    """A gateway (no workers) whose org acme has interactive and batch usage today."""
    config = make_config(redis_url, {"up": {"kind": "mock"}},
                         [{"slug": "m", "routes": [{"provider": "up", "model": "echo"}]}])
    gateway = await start_gateway(nursery, config, workers=False)
    _, admin = await KeyStore(gateway.redis).create("acme", "", "", "admin", role="admin")
    await meter(gateway.redis, "acme", INTERACTIVE)
    await meter(gateway.redis, "acme", BATCH, traffic="batch")
    await meter(gateway.redis, "acme", OTHER_MODEL, model="m2")
    return gateway, admin


async def get(gateway: Gateway, secret: str, path: str, **params: str) -> httpx.Response:
    async with httpx.AsyncClient(verify=TLS) as http:
        response = await http.get(gateway.base_url + path, params=params,
                                  headers={"authorization": f"Bearer {secret}"})
    assert response.status_code == 200, response.text
    return response


async def test_the_usage_report_groups_batch_apart_from_interactive(
        nursery: trio.Nursery, redis_url: str) -> None:
    gateway, admin = await metered(nursery, redis_url)
    interactive = {k: INTERACTIVE.get(k, 0) + OTHER_MODEL.get(k, 0) for k in INTERACTIVE}
    report = (await get(gateway, admin, "/v1/admin/usage", group_by="traffic")).json()
    assert report["group_by"] == ["traffic"]
    assert report["data"] == [row(BATCH, traffic="batch"),
                              row(interactive, traffic="interactive")]
    both = {k: interactive[k] + BATCH[k] for k in INTERACTIVE}
    assert report["totals"] == row(both)

    by_model = (await get(gateway, admin, "/v1/admin/usage", group_by="traffic,model")).json()
    assert by_model["data"] == [row(BATCH, traffic="batch", model="m"),
                                row(INTERACTIVE, traffic="interactive", model="m"),
                                row({**OTHER_MODEL, "errors": 0}, traffic="interactive",
                                    model="m2")]
    # Without the traffic group, batch and interactive usage of a model add up.
    plain = (await get(gateway, admin, "/v1/admin/usage", group_by="model")).json()
    assert plain["data"][0] == row({k: INTERACTIVE[k] + BATCH[k] for k in BATCH}, model="m")

    text = (await get(gateway, admin, "/v1/admin/usage.csv", group_by="traffic")).text
    assert list(csv.reader(io.StringIO(text))) == [
        ["traffic", "requests", "prompt_tokens", "completion_tokens", "cost_usd", "errors",
         "unpriced_requests"],
        ["batch", "5", "50", "20", "0.000250", "2", "0"],
        ["interactive", "4", "34", "16", "0.000610", "1", "0"]]


async def test_switchboard_usage_groups_by_traffic(nursery: trio.Nursery, redis_url: str,
                                                   tmp_path: Path) -> None:
    await metered(nursery, redis_url)
    config = str(write_config(tmp_path / "sb.toml", redis_url, "http://127.0.0.1:9/v1"))
    env = {**os.environ, "REDIS_URL": redis_url}
    grouped = await trio.to_thread.run_sync(lambda: run(
        "usage", "--config", config, "--org", "acme", "--group-by", "traffic", env=env))
    assert grouped.returncode == 0, grouped.stderr
    assert [line.split("\t") for line in grouped.stdout.splitlines()] == [
        ["ORG", "TRAFFIC", "REQUESTS", "PROMPT", "COMPLETION", "COST USD", "ERRORS", "UNPRICED"],
        ["acme", "batch", "5", "50", "20", "0.000250", "2", "0"],
        ["acme", "interactive", "4", "34", "16", "0.000610", "1", "0"]]
    month = await trio.to_thread.run_sync(lambda: run(
        "usage", "--config", config, "--org", "acme", env=env))
    assert month.stdout.splitlines()[1].split()[2] == "9"  # the month's requests hold both
    helped = await trio.to_thread.run_sync(lambda: run("usage", "--help", env=env))
    assert "traffic" in helped.stdout


async def test_the_openapi_document_names_the_traffic_group(nursery: trio.Nursery,
                                                            redis_url: str) -> None:
    gateway, _ = await metered(nursery, redis_url)
    async with httpx.AsyncClient(verify=TLS) as http:
        document = (await http.get(gateway.base_url + "/openapi.json")).json()
    usage = document["paths"]["/v1/admin/usage"]["get"]
    assert "traffic" in usage["summary"]
    group_by = next(p for p in usage["parameters"] if p["name"] == "group_by")
    assert "traffic" in group_by["schema"]["description"]
