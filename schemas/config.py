"""The configuration file (TOML), decoded into Structs at start-up.

A wrong or missing field is a `ConfigError` that names the file and the field path.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from schemas.agents import Agent
from schemas.providers import ProviderConfig


class Route(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One way to serve a slug: a provider and the model name it knows.

    `priority`: lower values are tried first (as in DNS SRV records). Among the routes of
    the best priority, `weight` spreads the first choice; a route without a weight (or 0)
    is only a failover there. With no weights at all, routes are tried in their order.

    `input_per_mtok` / `output_per_mtok`: the route's price in USD per million prompt
    (an embeddings route: input) and completion tokens; a route with neither is unpriced:
    it costs 0 and usage reports it as unpriced (schemas/pricing.py).
    """

    provider: str
    model: str
    weight: Annotated[int, Meta(ge=0, le=1_000_000)] | None = None
    priority: int = 0
    input_per_mtok: Annotated[float, Meta(ge=0)] | None = None
    output_per_mtok: Annotated[float, Meta(ge=0)] | None = None


class ModelConfig(Struct, forbid_unknown_fields=True):
    slug: str
    routes: Annotated[list[Route], Meta(min_length=1)]
    name: str = ""


class Plan(Struct, forbid_unknown_fields=True):
    monthly_tokens: Annotated[int, Meta(ge=0)]


class Limits(Struct, forbid_unknown_fields=True):
    """Edge limits; defaults suit production."""

    # Input bounds: what one request may carry (ingress/bounds.py). A body over
    # `max_body_bytes` is a 413, any other bound a 400 `limit_exceeded` naming its knob.
    max_body_bytes: Annotated[int, Meta(ge=1024)] = 4 * 1024 * 1024
    max_json_depth: Annotated[int, Meta(ge=2, le=256)] = 64  # nested arrays and objects
    max_messages: Annotated[int, Meta(ge=1)] = 2048  # chat `messages`, native `messages`/`contents`
    max_tools: Annotated[int, Meta(ge=0)] = 128  # `tools` (the native APIs' too)
    max_inputs: Annotated[int, Meta(ge=1)] = 2048  # embeddings `input` entries
    max_model_chars: Annotated[int, Meta(ge=8)] = 256  # a model slug (echoed in errors and logs)
    max_dimensions: Annotated[int, Meta(ge=1)] = 8192  # embeddings `dimensions`
    body_timeout_s: Annotated[float, Meta(gt=0)] = 60.0  # the whole body must arrive in this time
    redis_timeout_s: Annotated[float, Meta(gt=0)] = 2.0  # a healthy Redis answers in ms
    key_cache_s: Annotated[float, Meta(ge=0)] = 5.0
    # Unknown keys are remembered this long (each guess would cost a Redis lookup).
    key_miss_cache_s: Annotated[float, Meta(ge=0)] = 5.0
    # Reserved against a plan for the answer of a request that sets no max_tokens.
    reserve_output_tokens: Annotated[int, Meta(ge=0)] = 4096
    # Worker liveness: every heartbeat a worker refreshes its liveness key (which expires
    # after `reclaim_after_s`) and the idle time of its running jobs; the jobs of a worker
    # whose key expired are re-run by the others. Must exceed heartbeat_s.
    heartbeat_s: Annotated[float, Meta(gt=0)] = 1.0
    reclaim_after_s: Annotated[float, Meta(gt=0)] = 3.0
    max_deliveries: Annotated[int, Meta(ge=1)] = 3
    request_timeout_s: Annotated[float, Meta(gt=0)] = 600.0
    # One write of an answer to the client (an SSE event, a body): a client that stops
    # reading for this long is cut off and its job withdrawn
    write_timeout_s: Annotated[float, Meta(gt=0)] = 30.0
    # SIGTERM: intake stops; running jobs and open requests get this long to finish
    shutdown_grace_s: Annotated[float, Meta(ge=0)] = 30.0
    # Routing: how often an ingress re-reads the providers' cool-downs and queue depths,
    # and how many more waiting jobs make a route's queue "much deeper" than the others'.
    route_refresh_s: Annotated[float, Meta(gt=0)] = 0.5
    backlog_skew: Annotated[int, Meta(ge=1)] = 32

    # Reply frames stay below this size (Redis drops a subscriber whose pub/sub output buffer
    # passes 32 MB): stream chunks are batched up to it, a bigger whole answer is stored
    # under a key the ingress reads.
    max_frame_bytes: Annotated[int, Meta(ge=1024)] = 1024 * 1024
    # Chunks a stream may have waiting for publication; past it the stream ends in an error
    stream_buffer_bytes: Annotated[int, Meta(ge=1024)] = 8 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.reclaim_after_s <= self.heartbeat_s:  # live workers would look dead
            raise msgspec.ValidationError(
                "reclaim_after_s must be greater than heartbeat_s - at `$.limits`")

    def transfer_s(self, size: int) -> float:
        """How long moving `size` bytes through Redis may take: the usual timeout, plus
        time for the bytes at a pace any healthy Redis link beats (10 MiB/s)."""
        return self.redis_timeout_s + size / (10 * 1024 * 1024)


class Metrics(Struct, forbid_unknown_fields=True):
    """Who may read an ingress's `GET /metrics` (a worker's `--metrics-port` is always open).

    `off` (the default: the ingress faces clients, and its metrics show every org's models
    and volumes): 404. `open`: anyone who reaches the port (an internal network only).
    `operator`: operator keys only (`switchboard keys create --operator`); others get 403.
    `key`: any valid access key, of any org (kept for existing configs; prefer `operator`).
    """

    ingress: Literal["off", "open", "operator", "key"] = "off"


class Usage(Struct, forbid_unknown_fields=True):
    """How long usage and the request log are kept (docs/architecture.md, "Usage").

    `retention_days`: the per-day usage breakdown (`/v1/admin/usage`); the monthly
    counters that plans and budgets read are kept regardless. `request_log_days`: the
    request log (`/v1/admin/requests`). `request_log_buffer`: records an ingress holds
    while Redis is slow; past it new records are dropped (and counted), never waited for.
    """

    retention_days: Annotated[int, Meta(ge=1, le=3660)] = 400
    request_log_days: Annotated[int, Meta(ge=1, le=3660)] = 30
    request_log_buffer: Annotated[int, Meta(ge=1)] = 10_000


class Responses(Struct, forbid_unknown_fields=True):
    """Stored Responses API responses (`store: true`, the default): kept this many days
    after they were written, then Redis expires them (`{sb}:resp:{id}`)."""

    retention_days: Annotated[int, Meta(ge=1, le=3660)] = 30


class Batches(Struct, forbid_unknown_fields=True):
    """The Files and Batch APIs (`[batch]`; docs/architecture.md, "Batches").

    `max_file_bytes`: an upload above it is a 413. `max_lines`: lines one batch input file
    may hold. `retention_days`: files (inputs and outputs) and batch records are kept this
    long after they were created. `interactive_share`: the part of each provider's
    concurrency (per worker) and of its `rpm`/`tpm` that batch lines never use, kept for
    interactive traffic. `feed_ahead`: lines of one provider waiting in its batch stream at
    most (the rest wait in the batch's own list, so cancelling stops them at once).
    `retry_base_s`/`retry_max_s`: the back-off of a line that failed with a retryable
    error (doubling from the base, capped), within the batch's completion window.
    """

    max_file_bytes: Annotated[int, Meta(ge=1024)] = 200 * 1024 * 1024
    max_lines: Annotated[int, Meta(ge=1)] = 50_000
    retention_days: Annotated[int, Meta(ge=1, le=3660)] = 30
    interactive_share: Annotated[float, Meta(ge=0, lt=1)] = 0.25
    feed_ahead: Annotated[int, Meta(ge=1)] = 64
    retry_base_s: Annotated[float, Meta(gt=0)] = 1.0
    retry_max_s: Annotated[float, Meta(gt=0)] = 300.0


class Console(Struct, forbid_unknown_fields=True):
    """The web console at `/console` (`[console]`; README, "Console").

    `enabled`: off, `/console` answers 404 like any path that is not served.
    `session_ttl_s`: how long a sign-in lasts (the session cookie's Max-Age and the
    session's lifetime in Redis); signing out or revoking the key ends it sooner.
    """

    enabled: bool = True
    session_ttl_s: Annotated[int, Meta(ge=60, le=30 * 86_400)] = 8 * 3600


class Tracing(Struct, forbid_unknown_fields=True):
    """OTLP/HTTP span export: off unless the `[tracing]` table is there (workers/tracing.py).

    Needs the `otel` extra (`pip install 'switchboard[otel]'`). Headers for the collector
    come from OpenTelemetry's own variables (`OTEL_EXPORTER_OTLP_HEADERS`), so a token
    never sits in the config file.
    """

    # The collector's OTLP/HTTP base URL; spans go to {otlp_endpoint}/v1/traces.
    otlp_endpoint: Annotated[str, Meta(pattern=r"^https?://[^/\s]+")]
    service_name: Annotated[str, Meta(min_length=1, max_length=256)] = "switchboard"
    timeout_s: Annotated[float, Meta(gt=0, le=60)] = 5.0  # one export; and the flush at exit


class Cors(Struct, forbid_unknown_fields=True):
    """Browser access (CORS), off by default: the origins whose pages may call the gateway
    (`"*"`: any), and how long a browser may cache a preflight's answer (ingress/cors.py)."""

    allow_origins: list[Annotated[str, Meta(pattern=r"^(\*|https?://[^/\s]+)$")]] = \
        msgspec.field(default_factory=list)
    max_age_s: Annotated[int, Meta(ge=0, le=86400)] = 600


class Config(Struct, forbid_unknown_fields=True):
    redis_url: str = "redis://127.0.0.1:6379/0"
    # `provider/model` slugs and well-known model names outside the catalog are served
    open_routing: bool = False
    providers: dict[str, ProviderConfig] = msgspec.field(default_factory=dict)
    models: list[ModelConfig] = msgspec.field(default_factory=list)
    plans: dict[str, Plan] = msgspec.field(default_factory=dict)
    limits: Limits = msgspec.field(default_factory=Limits)
    metrics: Metrics = msgspec.field(default_factory=Metrics)
    usage: Usage = msgspec.field(default_factory=Usage)
    tracing: Tracing | None = None  # OTLP span export; None (no `[tracing]` table): off
    agents: dict[str, Agent] = msgspec.field(default_factory=dict)  # `model: "agent/<name>"`
    responses: Responses = msgspec.field(default_factory=Responses)  # stored responses
    cors: Cors = msgspec.field(default_factory=Cors)  # browser access; off by default
    batch: Batches = msgspec.field(default_factory=Batches)  # the Files and Batch APIs
    console: Console = msgspec.field(default_factory=Console)  # the web console at /console

    def __post_init__(self) -> None:
        # Routes may name providers this deployment does not configure (a shared
        # catalog); such routes are skipped at request time, see ingress/catalog.py.
        slugs = [model.slug for model in self.models]
        if len(set(slugs)) != len(slugs):
            raise msgspec.ValidationError("model slugs must be unique - at `$.models`")
        for model in self.models:
            if not model.name:
                model.name = model.slug


class ConfigError(Exception):
    """The configuration file cannot be used; the message names the file and field."""


def load_config(path: str | Path, environ: os._Environ[str] | dict[str, str] | None = None) -> Config:
    """Read and validate a config file. REDIS_URL in the environment overrides `redis_url`."""
    env = os.environ if environ is None else environ
    path = Path(path)
    try:
        raw: dict[str, Any] = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse_config(raw, str(path), env)


def parse_config(raw: dict[str, Any], source: str, env: Any = None) -> Config:
    """Validate an already-parsed TOML document; `source` names it in errors."""
    # Tables keyed by name are checked one by one so errors can name the entry.
    for table, shape in (("providers", ProviderConfig), ("plans", Plan), ("agents", Agent)):
        entries = raw.get(table)
        for name, value in (entries.items() if isinstance(entries, dict) else ()):
            try:
                msgspec.convert(value, shape)
            except msgspec.ValidationError as exc:
                where = f"$.{table}.{name}"
                message = str(exc).replace("at `$", f"at `{where}")
                if "at `" not in message:
                    message += f" - at `{where}`"
                raise ConfigError(f"{source}: {message}") from exc
    try:
        config = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    redis_url = (env or {}).get("REDIS_URL")
    if redis_url:
        config.redis_url = redis_url
    return config
