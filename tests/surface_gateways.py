"""The gateway the client-surface tests share (completions, images, audio, /v3/router):
slug `gpt-test` on an `openai` provider, `az-test` on an `azure` one (deployment
`my-deploy`), both FakeSurface upstreams, and `echo` on a mock provider."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import trio

from tests.conftest import Gateway, make_config, start_gateway
from tests.fakes.server import serve_asgi
from tests.fakes.surface_upstream import FakeSurface

AZURE_KEY = "azure-surface-key-77"
OPENAI_KEY = "sk-surface-upstream-88"


@dataclass
class Surface:
    gateway: Gateway
    openai: FakeSurface
    azure: FakeSurface


async def surface_gateway(nursery: trio.Nursery, redis_url: str, monkeypatch: pytest.MonkeyPatch,
                          plan: str = "", **extra: Any) -> Surface:
    """Start both fakes and the gateway (`extra`: more config, e.g. cors or plans)."""
    up, az = FakeSurface("/v1"), FakeSurface("")
    for fake in (up, az):
        fake.base_url = await nursery.start(serve_asgi, fake) + fake.base_path
    monkeypatch.setenv("SURFACE_OPENAI_KEY", OPENAI_KEY)
    monkeypatch.setenv("SURFACE_AZURE_KEY", AZURE_KEY)
    config = make_config(
        redis_url,
        {"up": {"kind": "openai", "base_url": up.base_url, "api_key_env": "SURFACE_OPENAI_KEY",
                "timeout_s": 5, "max_retries": 0},
         "az": {"kind": "azure", "base_url": az.base_url, "api_key_env": "SURFACE_AZURE_KEY",
                "api_version": "2024-10-21", "timeout_s": 5, "max_retries": 0},
         "local": {"kind": "mock"}},
        [{"slug": "gpt-test", "routes": [{"provider": "up", "model": "upstream-model-1"}]},
         {"slug": "az-test", "routes": [{"provider": "az", "model": "my-deploy"}]},
         {"slug": "echo", "routes": [{"provider": "local", "model": "echo"}]}],
        **extra)
    return Surface(await start_gateway(nursery, config, plan=plan), up, az)
