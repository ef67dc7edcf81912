"""Where `model: "agent/<name>"` finds its agent: the org's own, else the config's."""

from __future__ import annotations

import coredis

from schemas.agents import Agent
from schemas.config import Config


class Agents:
    """The agents a caller may invoke."""

    def __init__(self, config: Config, redis: coredis.Redis[bytes]) -> None:
        self.config = config
        self.redis = redis

    async def get(self, org: str, name: str) -> Agent | None:
        """The agent `name` as `org` sees it; None if there is none."""
        return self.config.agents.get(name)
