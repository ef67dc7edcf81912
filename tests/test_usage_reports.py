"""Usage by dimension (issue 10): what the workers meter, and the reports that read it.

Requests by two orgs, two projects, two keys, two models on two priced providers, with
and without `identity` and `thread`, are sent with the openai SDK; every report grouping
must match exactly what was sent (tokens: the fake upstream's word counts; cost: the
route prices), and only an org's admin (or the operator) may read the org's figures.
"""

from __future__ import annotations

import csv
import datetime
import io
import os
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio

from ingress.keys import KeyStore
from schemas import names
from tests.conftest import TLS, Gateway, make_config, start_gateway
from tests.fakes.openai_upstream import Behavior, FakeOpenAI

PRICES = {"model-a": (2.0, 8.0), "model-b": (3.0, 5.0)}  # USD per million tokens: whole micro-$
PROVIDER = {"model-a": "up-a", "model-b": "up-b"}
SWITCHBOARD = str(Path(sys.executable).with_name("switchboard"))
RETENTION_DAYS = 7


@dataclass
class Caller:
    key_id: str
    secret: str
    org: str
    project: str


async def add_key(redis: Any, org: str, project: str = "", role: str = "member") -> Caller:
    """A key of `org`; `role` written into its hash (until the admin API creates roles)."""
    record, secret = await KeyStore(redis).create(org, project, "", "test")
    if role != "member":
        await redis.hset(names.key_by_hash(record.secret_hash), {"role": role})
    return Caller(record.key_id, secret, org, project)


@dataclass
class Sent:
    """One request as the test sent it: what the report must count."""

    org: str
    project: str
    key: str
    model: str
    identity: str
    thread: str
    words: int  # the fake upstream's prompt and completion tokens
    error: bool = False

    @property
    def metrics(self) -> dict[str, Any]:
        if self.error:
            return {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "micro": 0,
                    "errors": 1}
        price_in, price_out = PRICES[self.model]
        return {"requests": 1, "prompt_tokens": self.words, "completion_tokens": self.words,
                "micro": int(self.words * price_in + self.words * price_out), "errors": 0}


def expected(sent: list[Sent], org: str, groups: list[str]) -> tuple[list[dict[str, Any]],
                                                                      dict[str, Any]]:
    """The report's rows and totals computed from what was sent."""
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    sums: dict[tuple[str, ...], dict[str, Any]] = defaultdict(lambda: defaultdict(int))
    totals: dict[str, Any] = defaultdict(int)
    for request in (s for s in sent if s.org == org):
        values = {"day": today, "project": request.project, "key": request.key,
                  "model": request.model, "provider": PROVIDER[request.model],
                  "identity": request.identity, "thread": request.thread}
        group = tuple(values[g] for g in groups)
        for metric, amount in request.metrics.items():
            sums[group][metric] += amount
            totals[metric] += amount

    def row(counts: dict[str, Any], **fields: str) -> dict[str, Any]:
        return {**fields, "requests": counts["requests"], "prompt_tokens": counts["prompt_tokens"],
                "completion_tokens": counts["completion_tokens"],
                "cost_usd": counts["micro"] / 1e6, "errors": counts["errors"],
                "unpriced_requests": 0}

    rows = [row(sums[group], **dict(zip(groups, group, strict=True))) for group in sorted(sums)]
    return rows, row(totals)


@dataclass
class World:
    gateway: Gateway
    sent: list[Sent]
    callers: dict[str, Caller]  # by name: web, batch, globex, admin, globex_admin, operator
    fakes: tuple[FakeOpenAI, FakeOpenAI]

    async def get(self, path: str, caller: str | None = "admin",
                  **params: str) -> httpx.Response:
        headers = {} if caller is None else {
            "authorization": f"Bearer {self.callers[caller].secret}"}
        async with httpx.AsyncClient(verify=TLS, timeout=20) as http:
            return await http.get(self.gateway.base_url + path, params=params, headers=headers)


async def priced_world(nursery: trio.Nursery, redis_url: str, fake_a: FakeOpenAI,
                       fake_b: FakeOpenAI) -> World:
    config = make_config(
        redis_url,
        {"up-a": {"kind": "openai", "base_url": fake_a.base_url, "max_retries": 0},
         "up-b": {"kind": "openai", "base_url": fake_b.base_url, "max_retries": 0}},
        [{"slug": slug, "routes": [{"provider": PROVIDER[slug], "model": "u-" + slug,
                                    "input_per_mtok": price[0], "output_per_mtok": price[1]}]}
         for slug, price in PRICES.items()],
        usage={"retention_days": RETENTION_DAYS})
    gateway = await start_gateway(nursery, config)
    redis = gateway.redis
    callers = {"web": await add_key(redis, "acme", "web"),
               "batch": await add_key(redis, "acme", "batch"),
               "globex": await add_key(redis, "globex", "labs"),
               "admin": await add_key(redis, "acme", role="admin"),
               "globex_admin": await add_key(redis, "globex", role="admin"),
               "operator": await add_key(redis, "operations", role="operator")}
    return World(gateway, [], callers, (fake_a, fake_b))


async def send(world: World, caller: str, model: str, content: str, *, identity: str = "",
               thread: str = "", user: str = "", error: bool = False) -> None:
    who = world.callers[caller]
    client = world.gateway.client(api_key=who.secret)
    extra: dict[str, Any] = {}
    if identity:
        extra["identity"] = {"id": identity, "email": "someone@example.com"}
    if thread:
        extra["thread"] = {"id": thread}
    kwargs: dict[str, Any] = {"user": user} if user else {}
    if error:
        world.fakes[model == "model-b"].then(Behavior(status=500))
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model=model, extra_body=extra, messages=[
                {"role": "user", "content": content}], **kwargs)
    else:
        answer = await client.chat.completions.create(model=model, extra_body=extra, messages=[
            {"role": "user", "content": content}], **kwargs)
        assert answer.usage is not None
        assert answer.usage.prompt_tokens == answer.usage.completion_tokens == len(content.split())
    world.sent.append(Sent(who.org, who.project, who.key_id, model, identity or user, thread,
                           len(content.split()), error))


async def traffic(world: World) -> None:
    await send(world, "web", "model-a", "one two three", identity="ada", thread="t-1")
    await send(world, "web", "model-a", "four five", identity="ada", thread="t-1")
    await send(world, "web", "model-b", "six seven eight nine", identity="bob", thread="t-2")
    await send(world, "batch", "model-a", "ten", user="carol")  # OpenAI's `user` as identity
    await send(world, "batch", "model-b", "eleven twelve")
    await send(world, "batch", "model-b", "never answered", identity="bob", error=True)
    await send(world, "globex", "model-a", "thirteen fourteen fifteen sixteen", identity="dan")


@pytest.fixture
async def world(nursery: trio.Nursery, redis_url: str, fake_upstream: Any) -> World:
    built = await priced_world(nursery, redis_url, await fake_upstream("openai"),
                               await fake_upstream("openai"))
    await traffic(built)
    return built


GROUPINGS = [[], ["day"], ["project"], ["key"], ["model"], ["provider"], ["identity"],
             ["thread"], ["day", "model", "provider"], ["project", "key", "identity", "thread"],
             ["model", "identity"]]


@pytest.mark.parametrize("groups", GROUPINGS, ids=lambda g: ",".join(g) or "none")
async def test_the_report_grouped_each_way_matches_what_was_sent(world: World,
                                                                 groups: list[str]) -> None:
    response = await world.get("/v1/admin/usage", group_by=",".join(groups))
    assert response.status_code == 200, response.text
    report = response.json()
    rows, totals = expected(world.sent, "acme", groups)
    assert report["data"] == rows
    assert report["totals"] == totals
    assert report["org"] == "acme" and report["group_by"] == groups


async def test_errors_are_counted_apart_from_requests_that_used_tokens(world: World) -> None:
    report = (await world.get("/v1/admin/usage", group_by="model,identity")).json()
    [failed] = [row for row in report["data"] if row["errors"]]
    # The upstream 500 used no tokens: an error, not a metered request.
    assert failed == {"model": "model-b", "identity": "bob", "requests": 1,
                      "prompt_tokens": 4, "completion_tokens": 4, "cost_usd": 32 / 1e6,
                      "errors": 1, "unpriced_requests": 0}
    assert report["totals"]["errors"] == 1 and report["totals"]["requests"] == 5


async def test_the_csv_has_the_same_rows_as_the_json(world: World) -> None:
    params = {"group_by": "day,project,key,model,provider,identity,thread"}
    report = (await world.get("/v1/admin/usage", **params)).json()
    response = await world.get("/v1/admin/usage.csv", **params)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    lines = list(csv.DictReader(io.StringIO(response.text)))
    assert len(lines) == len(report["data"]) > 0
    header = response.text.splitlines()[0].split(",")
    assert header == [*params["group_by"].split(","), "requests", "prompt_tokens",
                      "completion_tokens", "cost_usd", "errors", "unpriced_requests"]
    for line, row in zip(lines, report["data"], strict=True):
        as_json = {name: (float(value) if name == "cost_usd" else int(value)
                          if name in ("requests", "prompt_tokens", "completion_tokens", "errors",
                                      "unpriced_requests") else value)
                   for name, value in line.items()}
        assert as_json == row


async def test_monthly_counters_per_project_and_key_hold_the_cost(world: World) -> None:
    month = names.month()
    redis = world.gateway.redis
    for name in ("web", "batch"):
        caller = world.callers[name]
        mine = [s for s in world.sent if s.key == caller.key_id and not s.error]
        micro = sum(s.metrics["micro"] for s in mine)
        for key in (names.usage_key(caller.key_id, month),
                    names.usage_project("acme", caller.project, month)):
            counters = {k.decode(): int(v) for k, v in (await redis.hgetall(key)).items()}
            assert counters["cost_micro_usd"] == micro and counters["requests"] == len(mine)
            assert counters["tokens"] == sum(2 * s.words for s in mine)
    org = await world.gateway.usage("acme")
    assert org["requests"] == 5 and "errors" not in org  # the plan's counter is unchanged
    # A key without a project meters no project hash.
    assert await redis.exists([names.usage_project("acme", "", month)]) == 0


async def test_the_day_breakdown_expires_after_the_retention(world: World) -> None:
    key = names.usage_day("acme", names.day())
    ttl = await world.gateway.redis.ttl(key)
    assert RETENTION_DAYS * 86_400 < ttl <= (RETENTION_DAYS + 1) * 86_400


async def test_an_admin_sees_its_own_org_only(world: World) -> None:
    refused = await world.get("/v1/admin/usage", "admin", org="globex")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    csv_refused = await world.get("/v1/admin/usage.csv", "admin", org="globex")
    assert csv_refused.status_code == 403 and "dan" not in csv_refused.text
    own = (await world.get("/v1/admin/usage", "globex_admin", group_by="identity")).json()
    assert own["data"] == expected(world.sent, "globex", ["identity"])[0]
    member = await world.get("/v1/admin/usage", "web")
    assert member.status_code == 403 and member.json()["error"]["code"] == "forbidden"
    assert (await world.get("/v1/admin/usage", None)).status_code == 401


async def test_the_operator_names_the_org(world: World) -> None:
    unnamed = await world.get("/v1/admin/usage", "operator")
    assert unnamed.status_code == 400 and unnamed.json()["error"]["param"] == "org"
    named = (await world.get("/v1/admin/usage", "operator", org="globex",
                             group_by="model")).json()
    assert named["data"] == expected(world.sent, "globex", ["model"])[0]


async def test_a_day_range_without_traffic_is_empty(world: World) -> None:
    report = (await world.get("/v1/admin/usage", **{"from": "2020-01-01",
                                                    "to": "2020-01-31"})).json()
    assert report["data"] == [] and report["totals"]["requests"] == 0


BAD_QUERIES = [
    ({"from": "2026-13-01"}, 422, "from"),
    ({"to": "yesterday"}, 422, "to"),
    ({"from": "2026-12-05", "to": "2026-12-01"}, 400, "from"),
    ({"from": "2025-01-01", "to": "2026-12-01"}, 400, "to"),
    ({"group_by": "day,colour"}, 400, "group_by"),
    ({"group_by": "model,model"}, 400, "group_by"),
    ({"grop_by": "day"}, 422, "grop_by"),
]


@pytest.mark.parametrize(("params", "status", "param"), BAD_QUERIES)
async def test_bad_parameters_are_refused_naming_them(nursery: trio.Nursery, redis_url: str,
                                                      fake_upstream: Any, params: dict[str, str],
                                                      status: int, param: str) -> None:
    world = await priced_world(nursery, redis_url, await fake_upstream("openai"),
                               await fake_upstream("openai"))
    for path in ("/v1/admin/usage", "/v1/admin/usage.csv"):
        response = await world.get(path, **params)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["param"] == param and error["message"]


async def test_the_openapi_document_describes_the_reports(openai_gateway: Gateway) -> None:
    async with httpx.AsyncClient(verify=TLS) as http:
        document = (await http.get(openai_gateway.base_url + "/openapi.json")).json()
    usage = document["paths"]["/v1/admin/usage"]["get"]
    assert {p["name"] for p in usage["parameters"]} == {"from", "to", "group_by", "org"}
    assert usage["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/UsageReport")
    assert {"403", "422"} <= set(usage["responses"])
    assert "text/csv" in document["paths"]["/v1/admin/usage.csv"]["get"]["responses"]["200"][
        "content"]
    log = document["paths"]["/v1/admin/requests"]["get"]
    assert {"status", "model", "key", "project", "identity", "thread", "limit", "cursor"} <= {
        p["name"] for p in log["parameters"]}
    assert "UsageRow" in document["components"]["schemas"]
    assert "RequestRecord" in document["components"]["schemas"]


async def test_the_usage_command_prints_the_same_report(world: World, tmp_path: Path) -> None:
    config = tmp_path / "sb.toml"
    config.write_text(f'redis_url = "{world.gateway.config.redis_url}"\n')
    today = names.day()

    def usage(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([SWITCHBOARD, "usage", "--config", str(config), *extra],
                              capture_output=True, text=True, timeout=30,
                              env={**os.environ, "REDIS_URL": world.gateway.config.redis_url})

    shown = await trio.to_thread.run_sync(usage, "--org", "acme", "--from", today,
                                          "--group-by", "model")
    assert shown.returncode == 0, shown.stderr
    lines = [line.split("\t") for line in shown.stdout.splitlines()]
    assert lines[0] == ["ORG", "MODEL", "REQUESTS", "PROMPT", "COMPLETION", "COST USD", "ERRORS",
                        "UNPRICED"]
    rows, _ = expected(world.sent, "acme", ["model"])
    assert lines[1:] == [["acme", row["model"], str(row["requests"]), str(row["prompt_tokens"]),
                          str(row["completion_tokens"]), f"{row['cost_usd']:.6f}",
                          str(row["errors"]), "0"] for row in rows]
    monthly = await trio.to_thread.run_sync(usage, "--org", "acme")
    _, totals = expected(world.sent, "acme", [])
    assert monthly.stdout.splitlines()[1].split()[:3] == ["acme", "-", str(totals["requests"])]
    bad = await trio.to_thread.run_sync(usage, "--group-by", "colour")
    assert bad.returncode == 2 and "colour" in bad.stderr


async def test_streams_embeddings_and_a_cut_stream_are_metered(
        nursery: trio.Nursery, redis_url: str, fake_upstream: Any) -> None:
    world = await priced_world(nursery, redis_url, await fake_upstream("openai"),
                               await fake_upstream("openai"))
    client = world.gateway.client(api_key=world.callers["web"].secret)
    tracked = {"identity": {"id": "ada"}, "thread": {"id": "t-9"}}
    stream = await client.chat.completions.create(
        model="model-a", messages=[{"role": "user", "content": "alpha beta gamma"}],
        stream=True, extra_body=tracked)
    async for _ in stream:
        pass
    embedded = await client.embeddings.create(model="model-b", input=["a", "b"],
                                              extra_body=tracked)
    assert embedded.usage.prompt_tokens == 6
    world.fakes[0].then(Behavior(chunks=["abcd", "efgh", "ijkl"], break_after=2))
    cut = await client.chat.completions.create(
        model="model-a", messages=[{"role": "user", "content": "x"}], stream=True,
        extra_body={"thread": {"id": "t-cut"}})
    with pytest.raises(openai.APIError):
        async for _ in cut:
            pass
    with trio.fail_after(10):  # a stream's last event goes out before its finish meters it
        while len((report := (await world.get("/v1/admin/usage",
                                              group_by="model,thread")).json())["data"]) < 3:
            await trio.sleep(0.05)
    rows = {(row["model"], row["thread"]): row for row in report["data"]}
    streamed = rows["model-a", "t-9"]
    assert (streamed["requests"], streamed["prompt_tokens"], streamed["completion_tokens"],
            streamed["errors"]) == (1, 3, 3, 0)
    assert rows["model-b", "t-9"]["prompt_tokens"] == 6
    assert rows["model-b", "t-9"]["cost_usd"] == 6 * 3.0 / 1e6  # input tokens only
    broken = rows["model-a", "t-cut"]
    # Output reached the client before the upstream broke off: billed, and an error.
    assert (broken["requests"], broken["completion_tokens"], broken["errors"]) == (1, 2, 1)


async def test_a_formula_in_an_identity_is_not_a_formula_in_the_csv(
        nursery: trio.Nursery, redis_url: str, fake_upstream: Any) -> None:
    world = await priced_world(nursery, redis_url, await fake_upstream("openai"),
                               await fake_upstream("openai"))
    formula = '=HYPERLINK("http://evil.example","x")'
    await send(world, "web", "model-a", "a b", identity=formula)
    report = (await world.get("/v1/admin/usage", group_by="identity")).json()
    assert [row["identity"] for row in report["data"]] == [formula]  # JSON: as sent
    [line] = list(csv.DictReader(io.StringIO(
        (await world.get("/v1/admin/usage.csv", group_by="identity")).text)))
    assert line["identity"] == "'" + formula
