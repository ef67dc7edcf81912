"""What every provider adapter is: one small interface, one failure type.

An adapter translates a job into its provider's request, calls upstream with httpx,
and translates the answer back into client-ready OpenAI bytes whose `model` is the
slug the client sent. It knows nothing of Redis, frames, retries or failover: the
runner owns those.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from schemas.chat import Usage
from schemas.config import ProviderConfig
from schemas.envelopes import Job
from schemas.errors import GatewayError

Emit = Callable[[bytes], None]
"""Hands one client-ready chunk to the publisher; never blocks."""


class UpstreamFailure(GatewayError):
    """A provider call failed.

    `retryable`: the same route may succeed if tried again (timeouts, 5xx, 429).
    `failover`: another route may succeed (anything that is not the client's fault).
    """

    def __init__(self, status: int, code: str, message: str, *, provider: str,
                 upstream_status: int | None = None, retryable: bool = False,
                 failover: bool = True) -> None:
        details: dict[str, Any] = {"provider": provider}
        if upstream_status is not None:
            details["status"] = upstream_status
        super().__init__(status, code, message, details=details)
        self.retryable = retryable
        self.failover = failover


@dataclass(slots=True)
class Call:
    """One upstream attempt: the job and the upstream model its route names."""

    job: Job
    upstream_model: str


@dataclass(slots=True)
class Answer:
    """A complete non-streamed answer: client-ready body bytes and the usage to meter."""

    body: bytes
    usage: Usage


class Adapter(Protocol):
    """The interface of a provider kind. Construct with (name, config, http client)."""

    async def complete(self, call: Call) -> Answer:
        """Call upstream once and return the whole answer."""
        ...

    async def stream(self, call: Call, emit: Emit) -> Usage:
        """Call upstream once, `emit` each client-ready chunk, return the usage."""
        ...


def read_credential(name: str, config: ProviderConfig) -> str | None:
    """The provider's secret from its environment variable or secret file, if any."""
    if config.api_key_env:
        value = os.environ.get(config.api_key_env)
        if value:
            return value.strip()
    if config.api_key_file:
        try:
            return Path(config.api_key_file).read_text().strip()
        except OSError:
            return None
    return None


def transport_failure(provider: str, exc: Exception) -> UpstreamFailure:
    """Map an httpx error to a failure; never includes request headers or URLs with secrets."""
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamFailure(504, "upstream_timeout", f"provider {provider!r} timed out",
                               provider=provider, retryable=True)
    return UpstreamFailure(502, "upstream_error",
                           f"provider {provider!r} could not be reached ({type(exc).__name__})",
                           provider=provider, retryable=True)
