"""The model catalog: slug to the ordered routes this deployment can serve.

Resolution order: catalog slugs first; then, with `open_routing = true`, a
`provider/model` slug goes to that configured provider with the model as is, and a
well-known model name (`claude-…`, `gemini-…`, `gpt-…`, `o3…`) goes to the configured
providers of its family. A `vendor` header pins one provider.
"""

from __future__ import annotations

from schemas.chat import (
    ModelCard,
    ModelList,
    ModelProvider,
    ModelProviderList,
    RouterModel,
    RouterModelList,
)
from schemas.config import Config, ModelConfig, Route
from schemas.errors import GatewayError
from schemas.kinds import KINDS, Kind, is_native


class Catalog:
    """Resolves slugs; routes to providers that are not configured here are skipped."""

    def __init__(self, config: Config, created: int = 0) -> None:
        self.config = config
        self.created = created
        self.models: dict[str, ModelConfig] = {m.slug: m for m in config.models}

    def routes(self, slug: str, *, endpoint: str = "chat", pin: str | None = None) -> list[Route]:
        """The usable routes of a slug in failover order, or a 400 that says why not.

        Only routes to configured providers whose kind serves `endpoint` are usable;
        `pin` (the `vendor` header) keeps only that provider.
        """
        if pin == "auto":
            pin = None
        if pin is not None and pin not in self.config.providers:
            raise GatewayError(400, "unknown_vendor",
                               f"vendor {pin!r} is not a configured provider", param="vendor")
        configured = [r for r in self._candidates(slug) if r.provider in self.config.providers]
        usable = [r for r in configured if endpoint in self.kind_of(r.provider).endpoints]
        if not usable:
            if configured and not is_native(endpoint):
                kinds = sorted({self.config.providers[r.provider].kind for r in configured})
                raise GatewayError(400, "unsupported_endpoint",
                                   f"provider kind {'/'.join(kinds)} does not serve {endpoint} "
                                   f"(model {slug!r})", param="model")
            serving = sorted(k for k, kind in KINDS.items() if endpoint in kind.endpoints)
            where = f" of kind {'/'.join(serving)}" if is_native(endpoint) else ""
            raise GatewayError(400, "no_provider",
                               f"model {slug!r} has no route to a provider{where} configured here",
                               param="model")
        if pin is not None:
            usable = [r for r in usable if r.provider == pin]
            if not usable:
                raise GatewayError(400, "vendor_cannot_serve",
                                   f"vendor {pin!r} cannot serve model {slug!r}", param="vendor")
        return usable

    def kind_of(self, provider: str) -> Kind:
        """The table row of a configured provider's kind."""
        return KINDS[self.config.providers[provider].kind]

    def _candidates(self, slug: str) -> list[Route]:
        model = self.models.get(slug)
        if model is not None:
            return model.routes
        if self.config.open_routing:
            provider, sep, upstream = slug.partition("/")
            if sep and upstream and provider in self.config.providers:
                return [Route(provider, upstream)]
            family = [Route(name, slug) for name, p in self.config.providers.items()
                      if KINDS[p.kind].families and slug.startswith(KINDS[p.kind].families)]
            if family:
                return family
        raise GatewayError(400, "model_not_found",
                           f"model {slug!r} is not in the catalog; GET /v1/models lists them",
                           param="model")

    def model_list(self) -> ModelList:
        return ModelList([ModelCard(m.slug, self.created, "switchboard") for m in self.models.values()])

    def model_card(self, slug: str) -> ModelCard:
        """One catalog model in OpenAI's model shape, or 404 `model_not_found`."""
        if slug not in self.models:
            raise GatewayError(404, "model_not_found", f"model {slug!r} is not in the catalog; "
                               "GET /v1/models lists them", param="model")
        return ModelCard(slug, self.created, "switchboard")

    def router_list(self) -> RouterModelList:
        return RouterModelList([RouterModel(m.slug, m.slug, m.name) for m in self.models.values()])

    def providers_of(self, slug: str) -> ModelProviderList:
        model = self.models.get(slug)
        if model is None:
            raise GatewayError(404, "model_not_found", f"model {slug!r} is not in the catalog")
        rows = [ModelProvider(r.provider, self.config.providers[r.provider].kind, r.model)
                for r in model.routes if r.provider in self.config.providers]
        return ModelProviderList(slug, rows)
