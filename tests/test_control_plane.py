"""The control plane end to end over HTTP only: what an admin sets through /v1/admin is
what admission enforces, and what the worker meters is what budgets and reports read.

No test here writes to Redis itself: the limits come from the admin API, the spend from
real requests, so the parts (keys, limits, metering, reports) are tested as one.
"""

from __future__ import annotations

from typing import Any

import httpx
import openai
import trio

from ingress.keys import KeyStore
from tests.conftest import Gateway, make_config, start_gateway
from tests.test_admin_keys import Admin

HI = [{"role": "user", "content": "hi"}]
PRICE = 100.0  # USD per million tokens: 100 micro-dollars a token, in and out


def config(redis_url: str) -> Any:
    return make_config(redis_url, {"local": {"kind": "mock"}},
                       [{"slug": "echo", "routes": [{"provider": "local", "model": "echo",
                                                      "input_per_mtok": PRICE,
                                                      "output_per_mtok": PRICE}]}],
                       limits={"key_cache_s": 60.0})  # a change seen at once is broadcast


async def admin_of(gateway: Gateway, http: httpx.AsyncClient, org: str) -> Admin:
    """An admin of `org`, made by an operator over HTTP."""
    _, secret = await KeyStore(gateway.redis).create("", role="operator", name="ops")
    created = await Admin(http, secret)("POST", "/keys", {"org": org, "role": "admin"})
    assert created.status_code == 201, created.text
    return Admin(http, created.json()["secret"])


async def ask(gateway: Gateway, secret: str) -> Any:
    return await gateway.client(api_key=secret).chat.completions.with_raw_response.create(
        model="echo", messages=HI, max_tokens=5)  # type: ignore[arg-type]


async def test_limits_set_over_http_are_enforced_and_changed_at_once(
        nursery: trio.Nursery, redis_url: str) -> None:
    gateway = await start_gateway(nursery, config(redis_url), org="acme")
    async with httpx.AsyncClient(base_url=gateway.base_url, trust_env=False) as http:
        admin = await admin_of(gateway, http, "acme")
        assert (await admin("POST", "/projects", {"name": "web"})).status_code == 201
        made = await admin("POST", "/keys", {"role": "member", "project": "web",
                                            "limits": {"rpm": 3}})
        assert made.status_code == 201, made.text
        member, key_id = made.json()["secret"], made.json()["id"]
        remaining = []
        for _ in range(3):
            reply = await ask(gateway, member)
            remaining.append(reply.headers["x-ratelimit-remaining-requests"])
        assert remaining == ["2", "1", "0"]
        assert reply.headers["x-ratelimit-limit-requests"] == "3"
        try:
            await ask(gateway, member)
            raise AssertionError("a 4th request within the minute was admitted")
        except openai.RateLimitError as exc:
            error = exc.response.json()["error"]
            assert error["code"] == "rate_limit_exceeded"
            assert error["details"] == {"scope": "key", "id": key_id, "limit": "rpm", "max": 3}
            assert 0 < int(exc.response.headers["retry-after"]) <= 61
        # Raised over HTTP: the cached key (60 s) sees it on the next request.
        patched = await admin("PATCH", f"/keys/{key_id}", {"limits": {"rpm": 5}})
        assert patched.status_code == 200
        reply = await ask(gateway, member)
        assert reply.headers["x-ratelimit-remaining-requests"] == "1"


async def test_a_project_budget_is_spent_by_metered_requests_and_reported(
        nursery: trio.Nursery, redis_url: str) -> None:
    gateway = await start_gateway(nursery, config(redis_url), org="acme")
    budget = 0.01  # 10,000 micro-dollars; a request costs ~200 and reserves a few thousand
    async with httpx.AsyncClient(base_url=gateway.base_url, trust_env=False) as http:
        admin = await admin_of(gateway, http, "acme")
        made = await admin("POST", "/projects", {"name": "web",
                                                 "limits": {"monthly_budget_usd": budget}})
        assert made.status_code == 201, made.text
        member = (await admin("POST", "/keys", {"role": "member", "project": "web"})).json()
        other = (await admin("POST", "/keys", {"role": "member"})).json()  # no project
        admitted = 0
        with trio.fail_after(60):
            while True:
                try:
                    await ask(gateway, member["secret"])
                    admitted += 1
                except openai.RateLimitError as exc:
                    refusal = exc.response.json()["error"]
                    break
        assert refusal["code"] == "budget_exceeded"
        assert refusal["details"]["scope"] == "project"
        assert refusal["details"]["id"] == "acme/web"
        # The org's other keys are not in the project: not limited by its budget.
        assert (await ask(gateway, other["secret"])).status_code == 200
        report = await admin("GET", "/usage", group_by="project")
        assert report.status_code == 200, report.text
        rows = {row["project"]: row for row in report.json()["data"]}
        assert rows["web"]["requests"] == admitted > 5
        assert rows[""]["requests"] == 1
        # Never overshot: what was metered fits the budget, and the next estimate did not.
        assert rows["web"]["cost_usd"] <= budget
        assert rows["web"]["cost_usd"] + refusal["details"]["requested"] > budget
