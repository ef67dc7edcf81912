"""The configuration file (TOML), decoded into Structs at start-up.

A wrong or missing field is a `ConfigError` that names the file and the field path.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from schemas.providers import ProviderConfig


class Route(Struct, forbid_unknown_fields=True):
    provider: str
    model: str


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
    redis_timeout_s: Annotated[float, Meta(gt=0)] = 5.0
    key_cache_s: Annotated[float, Meta(ge=0)] = 5.0
    # Worker liveness: running jobs are re-claimed by their worker every heartbeat;
    # a job untouched for `reclaim_after_s` belongs to a dead worker.
    heartbeat_s: Annotated[float, Meta(gt=0)] = 5.0
    reclaim_after_s: Annotated[float, Meta(gt=0)] = 20.0
    max_deliveries: Annotated[int, Meta(ge=1)] = 3
    request_timeout_s: Annotated[float, Meta(gt=0)] = 600.0
    # SIGTERM: intake stops; running jobs and open requests get this long to finish
    shutdown_grace_s: Annotated[float, Meta(ge=0)] = 30.0


class Config(Struct, forbid_unknown_fields=True):
    redis_url: str = "redis://127.0.0.1:6379/0"
    # `provider/model` slugs and well-known model names outside the catalog are served
    open_routing: bool = False
    providers: dict[str, ProviderConfig] = msgspec.field(default_factory=dict)
    models: list[ModelConfig] = msgspec.field(default_factory=list)
    plans: dict[str, Plan] = msgspec.field(default_factory=dict)
    limits: Limits = msgspec.field(default_factory=Limits)

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
    for table, shape in (("providers", ProviderConfig), ("plans", Plan)):
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
