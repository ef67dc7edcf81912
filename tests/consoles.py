"""A gateway for the console's tests: ingress + workers on mock providers, and a key of
each role (see the `console_gateway` fixture in conftest.py).

    gw.member    a member key of org "acme" (project "proj": the gateway's own test key)
    gw.admin     an admin key of "acme"
    gw.operator  the operator key (every org)
    gw.other     an admin key of another org, "globex"

Model "echo" is routed to provider "local" (a mock) first and "spare" (another mock)
second; "solo" to "spare" only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trio

from ingress.keys import KeyStore
from tests.conftest import Gateway, make_config, start_gateway

ORG = "acme"
OTHER_ORG = "globex"
MODELS = [
    {"slug": "echo", "routes": [{"provider": "local", "model": "echo"},
                                {"provider": "spare", "model": "echo-spare"}]},
    {"slug": "solo", "routes": [{"provider": "spare", "model": "solo-1"}]},
]


@dataclass
class ConsoleGateway(Gateway):
    """A running gateway and one key secret per role (ids in `key_ids`)."""

    admin: str = field(default="", kw_only=True)
    operator: str = field(default="", kw_only=True)
    other: str = field(default="", kw_only=True)
    key_ids: dict[str, str] = field(default_factory=dict, kw_only=True)

    @property
    def member(self) -> str:
        return self.secret


async def start_console_gateway(nursery: trio.Nursery, redis_url: str,
                                models: list[dict[str, Any]] | None = None,
                                **extra: Any) -> ConsoleGateway:
    """Start the gateway and create the keys (`models`: another catalog on the same two
    mock providers; `extra`: more config tables)."""
    config = make_config(redis_url, {"local": {"kind": "mock"}, "spare": {"kind": "mock"}},
                         MODELS if models is None else models, **extra)
    base = await start_gateway(nursery, config, org=ORG)
    keys = KeyStore(base.redis)
    admin, admin_secret = await keys.create(ORG, name="acme-admin", role="admin")
    operator, operator_secret = await keys.create("", name="ops", role="operator")
    other, other_secret = await keys.create(OTHER_ORG, name="globex-admin", role="admin")
    return ConsoleGateway(**vars(base), admin=admin_secret, operator=operator_secret,
                          other=other_secret,
                          key_ids={"member": base.key_id, "admin": admin.key_id,
                                   "operator": operator.key_id, "other": other.key_id})
