"""CORS: preflights from allowed origins answered 204 before authentication (and not
counted as errors), actual answers readable by those origins, nothing for others or
with CORS off."""

from __future__ import annotations

import httpx
import pytest
import trio

from ingress.cors import EXPOSED
from schemas.config import ConfigError, parse_config
from tests.surface_gateways import Surface, surface_gateway

APP = "https://app.example"
PREFLIGHT = {"origin": APP, "access-control-request-method": "POST",
             "access-control-request-headers": "authorization, content-type, x-stainless-os"}


async def _cors(nursery: trio.Nursery, redis_url: str, monkeypatch: pytest.MonkeyPatch,
                origins: list[str] | None) -> Surface:
    extra = {} if origins is None else {"cors": {"allow_origins": origins, "max_age_s": 300}}
    return await surface_gateway(nursery, redis_url, monkeypatch, **extra)


async def test_preflight_answered_before_auth(nursery: trio.Nursery, redis_url: str,
                                              monkeypatch: pytest.MonkeyPatch,
                                              switchboard_logs: pytest.LogCaptureFixture) -> None:
    surface = await _cors(nursery, redis_url, monkeypatch, [APP])
    async with httpx.AsyncClient(base_url=surface.gateway.base_url) as http:
        for path in ("/v1/chat/completions", "/v3/router/completions", "/v1/models/echo"):
            answer = await http.options(path, headers=PREFLIGHT)  # no key: a browser sends none
            assert answer.status_code == 204, path
            assert answer.headers["access-control-allow-origin"] == APP
            assert "POST" in answer.headers["access-control-allow-methods"]
            assert answer.headers["access-control-allow-headers"] == PREFLIGHT[
                "access-control-request-headers"]
            assert answer.headers["access-control-max-age"] == "300"
            assert answer.headers["x-request-id"].startswith("req_")
        # The actual request: readable by the page, headers clients need exposed.
        real = await http.post("/v1/chat/completions", headers={
            "origin": APP, "authorization": f"Bearer {surface.gateway.secret}"},
            json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]})
        assert real.status_code == 200 and real.headers["access-control-allow-origin"] == APP
        assert "x-request-id" in real.headers["access-control-expose-headers"]
        assert "x-ratelimit-remaining-requests" in real.headers["access-control-expose-headers"]
        assert "Origin" in real.headers["vary"]
        refused = await http.get("/v1/models", headers={"origin": APP})  # no key: 401, readable
        assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == APP
    # The preflights were no errors: the one rejection logged is the 401.
    rejected = [r.getMessage() for r in switchboard_logs.records
                if '"event":"request_rejected"' in r.getMessage()]
    assert len(rejected) == 1 and '"status":401' in rejected[0]


async def test_other_origins_and_cors_off_get_nothing(nursery: trio.Nursery, redis_url: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    surface = await _cors(nursery, redis_url, monkeypatch, [APP])
    async with httpx.AsyncClient(base_url=surface.gateway.base_url) as http:
        other = await http.options("/v1/chat/completions",
                                   headers={**PREFLIGHT, "origin": "https://evil.example"})
        assert other.status_code != 204 and "access-control-allow-origin" not in other.headers
        real = await http.get("/v1/models", headers={
            "origin": "https://evil.example", "authorization": f"Bearer {surface.gateway.secret}"})
        assert real.status_code == 200 and "access-control-allow-origin" not in real.headers


async def test_cors_off_by_default(nursery: trio.Nursery, redis_url: str,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    surface = await _cors(nursery, redis_url, monkeypatch, None)
    async with httpx.AsyncClient(base_url=surface.gateway.base_url) as http:
        preflight = await http.options("/v1/chat/completions", headers=PREFLIGHT)
        real = await http.get("/v1/models", headers={
            "origin": APP, "authorization": f"Bearer {surface.gateway.secret}"})
    assert "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-origin" not in real.headers


async def test_any_origin(nursery: trio.Nursery, redis_url: str,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    surface = await _cors(nursery, redis_url, monkeypatch, ["*"])
    async with httpx.AsyncClient(base_url=surface.gateway.base_url) as http:
        preflight = await http.options("/v1/embeddings",
                                       headers={**PREFLIGHT, "origin": "https://x.example"})
        real = await http.get("/healthz", headers={"origin": "https://x.example"})
    assert preflight.status_code == 204 and preflight.headers["access-control-allow-origin"] == "*"
    assert real.headers["access-control-allow-origin"] == "*"


def test_origins_are_validated() -> None:
    for bad in (["app.example"], ["https://app.example/path"], [""]):
        with pytest.raises(ConfigError):
            parse_config({"cors": {"allow_origins": bad}}, "<test>")
    assert EXPOSED.count("x-ratelimit-") == 6
