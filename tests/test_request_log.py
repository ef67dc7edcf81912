"""The request log (issue 10): one metadata record per answered request, newest first.

Requests go through the openai SDK to fake upstreams with route prices; the log must
hold each one's record with the right figures, filter and page it, keep only the
retention window, show an org's records to its own admins only, and never hold a
prompt, an answer or a secret. Its writer never waits: a full buffer drops and counts.
"""

from __future__ import annotations

import datetime
import json
import time
from typing import Any

import httpx
import openai
import pytest
import trio

from ingress.keys import KeyStore
from ingress.requestlog import RequestLog
from schemas import names
from schemas.requestlog import RequestRecord, record_encoder
from tests.conftest import TLS, RedisServer, make_config, start_gateway
from tests.fakes.openai_upstream import Behavior, FakeOpenAI
from tests.fleet import Fleet
from tests.test_metrics import scrape_until, value
from tests.test_usage_reports import Caller, add_key
from workers.connection import connect

UPSTREAM_KEY = "sk-upstream-log-credential-99"
PRICES = {"model-a": (2.0, 8.0), "model-b": (3.0, 5.0)}
PROVIDER = {"model-a": "up-a", "model-b": "up-b"}
CONTENTS = ("zebra quantum lattice", "mango orbit", "velvet cipher storm", "ember drift",
            "hollow prism")
EMAIL = "ada@example.com"


def micro(model: str, prompt: int, completion: int) -> int:
    price_in, price_out = PRICES[model]
    return int(prompt * price_in + completion * price_out)


class Log:
    """A gateway with two priced providers, the keys of two orgs, and the requests sent."""

    def __init__(self, gateway: Any, callers: dict[str, Caller], fakes: tuple[FakeOpenAI, ...]):
        self.gateway = gateway
        self.callers = callers
        self.fakes = fakes
        self.ids: list[str] = []  # request ids of acme's requests, in the order sent

    async def get(self, caller: str | None = "admin", path: str = "/v1/admin/requests",
                  **params: str) -> httpx.Response:
        headers = {} if caller is None else {
            "authorization": f"Bearer {self.callers[caller].secret}"}
        async with httpx.AsyncClient(verify=TLS, timeout=20) as http:
            return await http.get(self.gateway.base_url + path, params=params, headers=headers)

    async def records(self, count: int, caller: str = "admin", **params: str) -> list[Any]:
        """The log's page once it holds `count` records (the writer flushes off the path)."""
        with trio.fail_after(10):
            while True:
                response = await self.get(caller, **params)
                assert response.status_code == 200, response.text
                if len(data := response.json()["data"]) >= count:
                    return data
                await trio.sleep(0.02)

    def client(self, caller: str) -> openai.AsyncOpenAI:
        return self.gateway.client(api_key=self.callers[caller].secret)


@pytest.fixture
async def log(nursery: trio.Nursery, redis_url: str, fake_upstream: Any,
              monkeypatch: pytest.MonkeyPatch) -> Log:
    monkeypatch.setenv("LOG_UP_KEY", UPSTREAM_KEY)
    fakes = (await fake_upstream("openai"), await fake_upstream("openai"))
    config = make_config(
        redis_url,
        {name: {"kind": "openai", "base_url": fake.base_url, "max_retries": 0,
                "api_key_env": "LOG_UP_KEY"} for name, fake in zip(("up-a", "up-b"), fakes, strict=True)},
        [{"slug": slug, "routes": [{"provider": PROVIDER[slug], "model": "u-" + slug,
                                    "input_per_mtok": price[0], "output_per_mtok": price[1]}]}
         for slug, price in PRICES.items()],
        plans={"tiny": {"monthly_tokens": 1}})
    gateway = await start_gateway(nursery, config)
    redis = gateway.redis
    callers = {"web": await add_key(redis, "acme", "web"),
               "batch": await add_key(redis, "acme", "batch"),
               "admin": await add_key(redis, "acme", role="admin"),
               "globex": await add_key(redis, "globex", "labs"),
               "globex_admin": await add_key(redis, "globex", role="admin"),
               "operator": await add_key(redis, "operations", role="operator")}
    record, secret = await KeyStore(redis).create("capped", "", "tiny", "t")
    callers["capped"] = Caller(record.key_id, secret, "capped", "")
    return Log(gateway, callers, fakes)


def messages(content: str) -> Any:
    return [{"role": "user", "content": content}]


async def traffic(log: Log) -> None:
    """Five acme requests (plain, streamed, an upstream 500, a 422), one of globex."""
    tracked = {"identity": {"id": "ada", "email": EMAIL}, "thread": {"id": "t-1"}}
    raw = await log.client("web").chat.completions.with_raw_response.create(
        model="model-a", messages=messages(CONTENTS[0]), extra_body=tracked)
    log.ids.append(raw.headers["x-request-id"])
    raw_stream = await log.client("web").chat.completions.with_raw_response.create(
        model="model-b", messages=messages(CONTENTS[1]), stream=True,
        stream_options={"include_usage": True}, extra_body={"thread": {"id": "t-1"}})
    log.ids.append(raw_stream.headers["x-request-id"])
    async for _ in raw_stream.parse():
        pass
    await log.records(2)  # the stream is recorded as it ends: keep the order of the log
    log.fakes[1].then(Behavior(status=500))
    with pytest.raises(openai.InternalServerError) as failed:
        await log.client("batch").chat.completions.create(
            model="model-b", messages=messages(CONTENTS[2]), user="carol")
    log.ids.append(failed.value.response.headers["x-request-id"])
    with pytest.raises(openai.UnprocessableEntityError) as invalid:
        await log.client("batch").chat.completions.create(
            model="model-a", messages=messages(CONTENTS[3]), extra_body={"identity": {}})
    log.ids.append(invalid.value.response.headers["x-request-id"])
    raw = await log.client("batch").chat.completions.with_raw_response.create(
        model="model-a", messages=messages(CONTENTS[4]), extra_body={"identity": {"id": "bob"}})
    log.ids.append(raw.headers["x-request-id"])
    await log.client("globex").chat.completions.create(model="model-a",
                                                        messages=messages("globex words"))


async def test_each_request_has_its_record_newest_first(log: Log) -> None:
    started = time.time()
    await traffic(log)
    records = await log.records(5)
    assert [r["id"] for r in records] == log.ids[::-1]
    web, batch = log.callers["web"], log.callers["batch"]
    newest, invalid, failed, streamed, plain = records
    assert plain | {"time": "", "latency_ms": 0} == {
        "id": log.ids[0], "time": "", "org": "acme", "project": "web", "key_id": web.key_id,
        "endpoint": "chat", "model": "model-a", "provider": "up-a", "status": 200, "code": "",
        "latency_ms": 0, "ttft_ms": None, "prompt_tokens": 3, "completion_tokens": 3,
        "cost_usd": micro("model-a", 3, 3) / 1e6, "identity": "ada", "thread": "t-1",
        "stream": False}
    assert plain["latency_ms"] > 0
    when = datetime.datetime.fromisoformat(plain["time"]).timestamp()
    assert started - 1 <= when <= time.time() + 1 and plain["time"].endswith("Z")
    assert streamed["stream"] is True and streamed["provider"] == "up-b"
    assert (streamed["prompt_tokens"], streamed["completion_tokens"]) == (2, 2)
    assert streamed["cost_usd"] == micro("model-b", 2, 2) / 1e6
    assert streamed["ttft_ms"] is not None and 0 < streamed["ttft_ms"] <= streamed["latency_ms"]
    assert (streamed["identity"], streamed["thread"]) == ("", "t-1")
    assert failed | {"latency_ms": 0, "time": ""} == {
        "id": log.ids[2], "time": "", "org": "acme", "project": "batch", "key_id": batch.key_id,
        "endpoint": "chat", "model": "model-b", "provider": "up-b", "status": 502,
        "code": "upstream_error", "latency_ms": 0, "ttft_ms": None, "prompt_tokens": 0,
        "completion_tokens": 0, "cost_usd": 0.0, "identity": "carol", "thread": "",
        "stream": False}
    # Refused at the edge after authentication: recorded, with no provider and no cost.
    assert (invalid["status"], invalid["code"], invalid["provider"], invalid["cost_usd"]) == (
        422, "validation_error", "", None)
    assert invalid["key_id"] == batch.key_id and invalid["model"] == ""
    assert newest["identity"] == "bob" and newest["status"] == 200


async def test_a_refusal_by_a_limit_is_recorded(log: Log) -> None:
    capped = log.client("capped")  # its plan admits while nothing is used: one request
    await capped.chat.completions.create(model="model-a", messages=messages("x y"))
    with pytest.raises(openai.RateLimitError) as refused:
        await log.client("capped").chat.completions.create(model="model-a",
                                                            messages=messages("x y"))
    record, first = await log.records(2, "operator", org="capped")
    assert first["status"] == 200
    assert record["id"] == refused.value.response.headers["x-request-id"]
    assert (record["status"], record["code"], record["model"]) == (429, "subscription_limit",
                                                                   "model-a")


@pytest.mark.parametrize(("params", "positions"), [
    ({"status": "502"}, [2]),
    ({"status": "4xx"}, [3]),
    ({"status": "2xx"}, [4, 1, 0]),
    ({"model": "model-b"}, [2, 1]),
    ({"project": "web"}, [1, 0]),
    ({"identity": "ada"}, [0]),
    ({"thread": "t-1"}, [1, 0]),
    ({"project": "batch", "status": "200"}, [4]),
])
async def test_filters_pick_the_records(log: Log, params: dict[str, str],
                                        positions: list[int]) -> None:
    await traffic(log)
    await log.records(5)
    data = (await log.get(**params)).json()["data"]
    assert [r["id"] for r in data] == [log.ids[i] for i in positions]
    by_key = (await log.get(key=log.callers["batch"].key_id)).json()["data"]
    assert [r["id"] for r in by_key] == [log.ids[i] for i in (4, 3, 2)]


async def test_pages_follow_the_cursor(log: Log) -> None:
    await traffic(log)
    everything = await log.records(5)
    seen: list[str] = []
    cursor: str | None = ""
    while cursor is not None:
        page = (await log.get(limit="2", **({"cursor": cursor} if cursor else {}))).json()
        assert len(page["data"]) <= 2
        seen += [r["id"] for r in page["data"]]
        cursor = page["next_cursor"]
    assert seen == [r["id"] for r in everything]
    today = names.day()
    assert len((await log.get(**{"from": today, "to": today})).json()["data"]) == 5
    assert (await log.get(**{"from": "2020-01-01", "to": "2020-01-02"})).json()["data"] == []


async def test_the_log_never_holds_content_or_secrets(log: Log) -> None:
    await traffic(log)
    await log.records(5)
    stored = b"".join(value for entry in await log.gateway.redis.xrange(
        names.request_log("acme")) for value in entry.field_values.values())
    shown = (await log.get()).content + (await log.get("operator", org="globex")).content
    secrets = [c.encode() for c in CONTENTS] + [b"globex words", UPSTREAM_KEY.encode(),
                                                EMAIL.encode(), log.gateway.secret.encode()]
    secrets += [caller.secret.encode() for caller in log.callers.values()]
    for text in secrets:
        assert text not in stored and text not in shown
    assert b"mango" not in stored and b"zebra" not in shown  # (words of the prompts)


async def test_retention_trims_old_records(log: Log) -> None:
    redis = log.gateway.redis
    key = names.request_log("acme")
    old_ms = int((time.time() - 31 * 86_400) * 1000)  # request_log_days defaults to 30

    def old_record(request_id: str) -> dict[str, bytes]:
        record = RequestRecord(id=request_id, time="2020-01-01T00:00:00.000Z", org="acme",
                               project="", key_id="k", endpoint="chat", model="m", provider="p",
                               status=200, latency_ms=1.0)
        return {"r": record_encoder.encode(record)}

    await redis.xadd(key, old_record("req_old"), identifier=f"{old_ms}-0")
    await log.client("web").chat.completions.create(model="model-a", messages=messages("a b"))
    with trio.fail_after(10):
        while await redis.xlen(key) != 1:  # the flush trimmed the old record away
            await trio.sleep(0.02)
    [kept] = await log.records(1)
    assert kept["id"] != "req_old"
    assert 29 * 86_400_000 < await redis.pttl(key) <= 30 * 86_400_000
    # Past the window a record is never shown, even before a flush trimmed it.
    await redis.xadd(names.request_log("globex"), old_record("req_old_2"),
                     identifier=f"{old_ms}-0")
    assert (await log.get("globex_admin")).json()["data"] == []


async def test_an_admin_sees_its_own_org_only(log: Log) -> None:
    await traffic(log)
    await log.records(5)
    refused = await log.get("admin", org="globex")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert "data" not in refused.json()
    [own] = await log.records(1, "globex_admin")
    assert own["org"] == "globex"
    member = await log.get("web")
    assert member.status_code == 403 and member.json()["error"]["code"] == "forbidden"
    assert (await log.get(None)).status_code == 401
    unnamed = await log.get("operator")
    assert unnamed.status_code == 400 and unnamed.json()["error"]["param"] == "org"


@pytest.mark.parametrize(("params", "status", "param"), [
    ({"limit": "0"}, 422, "limit"),
    ({"limit": "5000"}, 422, "limit"),
    ({"cursor": "abc"}, 422, "cursor"),
    ({"status": "teapot"}, 422, "status"),
    ({"from": "2026-02-30"}, 422, "from"),
    ({"from": "2026-12-05", "to": "2026-12-01"}, 400, "from"),
    ({"colour": "red"}, 422, "colour"),
])
async def test_bad_parameters_are_refused_naming_them(log: Log, params: dict[str, str],
                                                      status: int, param: str) -> None:
    response = await log.get(**params)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param


def record(n: int) -> RequestRecord:
    return RequestRecord(id=f"req_{n}", time="2026-12-02T00:00:00.000Z", org="acme", project="",
                         key_id="k", endpoint="chat", model="m", provider="p", status=200,
                         latency_ms=1.0)


async def test_a_full_buffer_drops_and_counts_instead_of_waiting(
        nursery: trio.Nursery, redis_url: str, redis_server: RedisServer,
        switchboard_logs: pytest.LogCaptureFixture) -> None:
    async with connect(redis_url) as redis:
        writer = RequestLog(redis, retention_days=1, buffer=3, timeout_s=30)
        await nursery.start(writer.serve)
        assert redis_server.command("CLIENT", "PAUSE", "10000", "WRITE").startswith(b"+OK")
        try:
            writer.record(record(0))  # taken by the writer, whose flush now waits on Redis
            await trio.sleep(0.3)
            assert writer.statistics()["buffered"] == 0
            for n in range(1, 9):  # no await: recording never waits, whatever Redis does
                writer.record(record(n))
            assert writer.statistics() == {"written": 0, "dropped": 5, "buffered": 3}
        finally:
            redis_server.command("CLIENT", "UNPAUSE")
        with trio.fail_after(10):
            while writer.statistics()["written"] < 4:
                await trio.sleep(0.02)
        lines = [json.loads(r.getMessage()) for r in switchboard_logs.records
                 if '"request_log_dropped"' in r.getMessage()]
        assert [(line["records"], line["error"]) for line in lines] == [(5, "buffer_full")]
        entries = await redis.xrange(names.request_log("acme"))
        assert [b"req_%d" % n in entry.field_values[b"r"] for n, entry in enumerate(entries)] == [
            True] * 4
        writer.close()
        writer.record(record(9))  # after close: dropped, counted
        assert writer.statistics()["dropped"] == 6


FLEET_CONFIG = """
[limits]
key_cache_s = 0
[providers.mock]
kind = "mock"
latency_ms = 5
[[models]]
slug = "echo"
routes = [{ provider = "mock", model = "echo", input_per_mtok = 1.0, output_per_mtok = 2.0 }]
"""


async def test_two_ingresses_write_one_log_and_one_report(redis_url: str, tmp_path: Any) -> None:
    async with connect(redis_url) as redis:
        member = await add_key(redis, "acme", "web")
        admin = await add_key(redis, "acme", role="admin")
    fleet = Fleet(tmp_path, FLEET_CONFIG, redis_url)
    sent: dict[str, int] = {}  # request id -> the ingress that answered it
    try:
        bases = [await fleet.serve("in1"), await fleet.serve("in2")]
        await fleet.worker("w1")
        clients = [openai.AsyncOpenAI(base_url=base + "/v1", api_key=member.secret,
                                      max_retries=0) for base in bases]
        for n in range(10):
            raw = await clients[n % 2].chat.completions.with_raw_response.create(
                model="echo", messages=messages(f"word{n} other{n}"))
            sent[raw.headers["x-request-id"]] = n % 2
        for client in clients:
            await client.close()
        headers = {"authorization": f"Bearer {admin.secret}"}
        async with httpx.AsyncClient(timeout=20, headers=headers) as http:
            with trio.fail_after(10):
                while len(records := (await http.get(bases[1] + "/v1/admin/requests")).json()[
                        "data"]) < 10:
                    await trio.sleep(0.05)
            report = (await http.get(bases[0] + "/v1/admin/usage",
                                     params={"group_by": "model,provider"})).json()
    finally:
        statuses = fleet.stop_all()
    assert {r["id"] for r in records} == set(sent)
    for ingress in (0, 1):  # each ingress's records in the order it answered, newest first
        mine = [r["id"] for r in records if sent[r["id"]] == ingress]
        assert mine == [rid for rid in reversed(sent) if sent[rid] == ingress]
    assert all(r["provider"] == "mock" and r["status"] == 200 for r in records)
    [row] = report["data"]
    assert (row["model"], row["provider"], row["requests"], row["errors"]) == (
        "echo", "mock", 10, 0)
    assert row["prompt_tokens"] == sum(r["prompt_tokens"] for r in records)
    assert row["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in records))
    assert set(statuses.values()) == {0}, fleet.log_text()


async def test_the_ingress_counts_the_records_it_wrote_in_its_metrics(
        nursery: trio.Nursery, redis_url: str) -> None:
    config = make_config(redis_url, {"local": {"kind": "mock"}},
                         [{"slug": "echo", "routes": [{"provider": "local", "model": "echo"}]}],
                         metrics={"ingress": "open"})
    gateway = await start_gateway(nursery, config)
    client = gateway.client()
    for word in ("one", "two"):
        await client.chat.completions.create(model="echo", messages=messages(word))
    with pytest.raises(openai.BadRequestError):  # refused after authentication: recorded too
        await client.chat.completions.create(model="no-such-model", messages=messages("x"))
    samples = await scrape_until(gateway.base_url + "/metrics", lambda s: value(
        s, "switchboard_request_log_records_total", outcome="written") == 3)
    assert value(samples, "switchboard_request_log_records_total", outcome="written") == 3
    assert value(samples, "switchboard_request_log_records_total", outcome="dropped") == 0
