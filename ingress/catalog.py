"""The model catalog: slug to the ordered routes this deployment can serve."""

from __future__ import annotations

from schemas.chat import ModelCard, ModelList, ModelProvider, ModelProviderList, RouterModel, RouterModelList
from schemas.config import Config, ModelConfig, Route
from schemas.errors import GatewayError


class Catalog:
    """Resolves slugs; routes to providers that are not configured here are skipped."""

    def __init__(self, config: Config, created: int = 0) -> None:
        self.config = config
        self.created = created
        self.models: dict[str, ModelConfig] = {m.slug: m for m in config.models}

    def routes(self, slug: str) -> list[Route]:
        """The usable routes of a slug, in failover order; 400 if there are none."""
        model = self.models.get(slug)
        if model is None:
            raise GatewayError(400, "model_not_found",
                               f"model {slug!r} is not in the catalog; GET /v1/models lists them",
                               param="model")
        usable = [r for r in model.routes if r.provider in self.config.providers]
        if not usable:
            raise GatewayError(400, "no_provider",
                               f"model {slug!r} has no route to a provider configured here",
                               param="model")
        return usable

    def model_list(self) -> ModelList:
        return ModelList([ModelCard(m.slug, self.created, "switchboard") for m in self.models.values()])

    def router_list(self) -> RouterModelList:
        return RouterModelList([RouterModel(m.slug, m.slug, m.name) for m in self.models.values()])

    def providers_of(self, slug: str) -> ModelProviderList:
        model = self.models.get(slug)
        if model is None:
            raise GatewayError(404, "model_not_found", f"model {slug!r} is not in the catalog")
        rows = [ModelProvider(r.provider, self.config.providers[r.provider].kind, r.model)
                for r in model.routes if r.provider in self.config.providers]
        return ModelProviderList(slug, rows)
