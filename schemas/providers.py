"""Each provider kind's configuration (`[providers.NAME]`), a tagged union on `kind`.

Every kind has the shared knobs of `ProviderBase` and only its own options beside them,
so a wrong option for a kind is a config error naming the file, the provider and the
field. Adding a kind adds its Struct here and to `ProviderConfig`.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct


class ProviderBase(Struct, forbid_unknown_fields=True, tag_field="kind", kw_only=True):
    """What every upstream provider has: where it is, its credential, its capacity."""

    base_url: str = ""  # empty: the kind's default
    api_key_env: str | None = None  # the credential is read from this variable...
    api_key_file: str | None = None  # ...or this file; it is never stored in config
    max_concurrency: Annotated[int, Meta(ge=1)] = 256  # in-flight calls per worker process
    max_queue: Annotated[int, Meta(ge=1)] = 10000  # queued jobs before the ingress says 429
    # One org's jobs in this provider's stream (queued or running) before it gets 429,
    # so one tenant cannot take the whole queue. Unset: a quarter of max_queue.
    max_queue_per_org: Annotated[int, Meta(ge=1)] | None = None
    # Redis memory the provider's stream may take (running jobs included) before the
    # ingress says 429, so one caller's big bodies cannot fill Redis (ingress/admission.py).
    max_queue_bytes: Annotated[int, Meta(ge=64 * 1024)] = 256 * 1024 * 1024
    timeout_s: Annotated[float, Meta(gt=0)] = 600.0  # one upstream attempt
    max_retries: Annotated[int, Meta(ge=0, le=10)] = 1  # retries of one route before failover
    # This many failed jobs in a row (5xx, timeouts, connection errors) put the provider on
    # a cool-down of `cooldown_s`, shared by every worker and ingress; 0 never does.
    cooldown_failures: Annotated[int, Meta(ge=0)] = 5
    cooldown_s: Annotated[float, Meta(gt=0)] = 30.0
    # What the provider's account allows, shared by every worker process through Redis
    # (workers/pace.py): at most `rpm` calls and `tpm` tokens in any rolling 60 s, for all
    # traffic; a job waits in the queue rather than being sent into a 429. None: no limit.
    rpm: Annotated[int, Meta(ge=1)] | None = None
    tpm: Annotated[int, Meta(ge=1)] | None = None
    # Batch lines are priced at this share of the route's price (OpenAI's Batch API: 0.5).
    batch_price_factor: Annotated[float, Meta(ge=0, le=1)] = 1.0

    @property
    def org_queue_cap(self) -> int:
        """How many of this provider's jobs one org may have in flight."""
        return self.max_queue_per_org or max(1, self.max_queue // 4)

    @property
    def kind(self) -> str:
        """The provider kind (the `kind` tag of the config table)."""
        return str(self.__struct_config__.tag)


class OpenAIProvider(ProviderBase, tag="openai"):
    """Any OpenAI-compatible server: OpenAI, vLLM, Ollama, ...

    `responses`: how `/v1/responses` is served on this provider: `translate` (its chat
    completions, as on every kind) or `native` (relayed to its own `/responses`).
    """

    responses: Literal["translate", "native"] = "translate"


class AzureProvider(ProviderBase, tag="azure"):
    """Azure OpenAI: `base_url` is `https://{resource}.openai.azure.com`; routes name deployments."""

    api_version: str = "2024-10-21"

    def __post_init__(self) -> None:
        if not self.base_url:  # there is no default resource
            raise msgspec.ValidationError(
                'kind "azure" needs base_url = "https://{resource}.openai.azure.com" - at `$.base_url`')


class AnthropicProvider(ProviderBase, tag="anthropic"):
    """Anthropic's Messages API."""

    default_max_tokens: Annotated[int, Meta(ge=1)] = 4096  # Anthropic requires max_tokens
    anthropic_version: str = "2023-06-01"


class GeminiProvider(ProviderBase, tag="gemini"):
    """Google's Gemini API."""


class MockProvider(ProviderBase, tag="mock"):
    """Deterministic local answers, no network."""

    latency_ms: Annotated[float, Meta(ge=0)] = 0.0  # before the first chunk
    chunks: Annotated[int, Meta(ge=1)] = 8  # pieces of a streamed answer
    chunk_delay_ms: Annotated[float, Meta(ge=0)] = 0.0  # between chunks


ProviderConfig = OpenAIProvider | AzureProvider | AnthropicProvider | GeminiProvider | MockProvider
