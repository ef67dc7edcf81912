"""What a finished request cost, from the route prices of the config (USD per million tokens).

Costs are integers in micro-dollars (1e-6 USD): the usage hash is counted with HINCRBY,
which takes integers only. Tokens times a price per million tokens is micro-dollars, so
one request's cost is `prompt * input_per_mtok + completion * output_per_mtok`, rounded
to the nearest micro-dollar (at most half a micro-dollar off per request).
"""

from __future__ import annotations

from schemas.config import Config, Route

MICRO_USD = 1_000_000  # micro-dollars in one dollar


class Prices:
    """The price of each (slug, provider, upstream model) route of one config.

    Jobs carry their routes bare (docs/architecture.md), so the worker that meters a job
    finds the price in its own config; a route it does not know (open routing, or a
    catalog that differs) is unpriced: it costs 0 and is not counted in `priced_requests`.
    """

    def __init__(self, config: Config) -> None:
        self._routes: dict[tuple[str, str, str], Route] = {}
        for model in config.models:
            for route in model.routes:
                if route.input_per_mtok is not None or route.output_per_mtok is not None:
                    self._routes.setdefault((model.slug, route.provider, route.model), route)

    def cost(self, slug: str, route: Route, prompt_tokens: int,
             completion_tokens: int) -> int | None:
        """The cost in micro-dollars, or None when the route has no price."""
        priced = self._routes.get((slug, route.provider, route.model))
        if priced is None:
            return None
        micro = (prompt_tokens * (priced.input_per_mtok or 0.0)
                 + completion_tokens * (priced.output_per_mtok or 0.0))
        return round(micro)
