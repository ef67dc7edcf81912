"""Browser access (CORS): which pages may call the gateway, answered before anything else.

Off by default (`[cors] allow_origins = []`). With origins allowed (or `"*"`):

- A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) from an
  allowed origin is answered 204 at once, before authentication and routing (a browser
  sends no key with it), whatever the path: the actual request then gets its own answer.
- Every other answer to an allowed origin carries `Access-Control-Allow-Origin` and
  exposes the headers clients read (`x-request-id`, `x-ratelimit-*`, `retry-after`,
  `x-should-retry`, which provider answered).
- An origin not allowed gets no CORS header at all; the browser then refuses the answer.

The requested headers are allowed as asked (the OpenAI SDKs send their own `x-stainless-*`
headers, and a `*` would not cover `Authorization`); no credentials (cookies) are involved.
"""

from __future__ import annotations

import re

from quart import Response

from schemas.config import Cors as CorsConfig

METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
EXPOSED = ", ".join((
    "x-request-id", "retry-after", "x-should-retry", "x-switchboard-provider",
    "x-switchboard-attempts",
    *(f"x-ratelimit-{what}-{kind}" for what in ("limit", "remaining", "reset")
      for kind in ("requests", "tokens"))))
_HEADER_LIST = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+(\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*$")
DEFAULT_HEADERS = "authorization, content-type, x-api-key, x-goog-api-key, anthropic-version"


class Cors:
    """The configured CORS policy."""

    def __init__(self, config: CorsConfig) -> None:
        self.any = "*" in config.allow_origins
        self.origins = frozenset(config.allow_origins)
        self.max_age = str(config.max_age_s)

    def allow(self, origin: str | None) -> str | None:
        """The `Access-Control-Allow-Origin` value for `origin`, or None (not allowed)."""
        if not origin:
            return None
        if self.any:
            return "*"
        return origin if origin in self.origins else None

    def preflight(self, method: str, headers: dict[str, str]) -> Response | None:
        """The 204 answer to a preflight from an allowed origin; None for anything else."""
        origin = self.allow(headers.get("origin"))
        if method != "OPTIONS" or origin is None or "access-control-request-method" not in headers:
            return None
        asked = headers.get("access-control-request-headers", "").strip()
        allowed = asked if asked and len(asked) <= 4096 and _HEADER_LIST.match(asked) \
            else DEFAULT_HEADERS
        answer = Response(b"", 204)
        answer.headers.update({
            "access-control-allow-origin": origin,
            "access-control-allow-methods": METHODS,
            "access-control-allow-headers": allowed,
            "access-control-max-age": self.max_age,
            "vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"})
        return answer

    def decorate(self, response: Response, origin: str | None) -> None:
        """Let an allowed origin read `response` and the headers clients need."""
        allowed = self.allow(origin)
        if allowed is None or "access-control-allow-origin" in response.headers:
            return
        response.headers["access-control-allow-origin"] = allowed
        response.headers["access-control-expose-headers"] = EXPOSED
        if allowed != "*":
            response.headers.add("vary", "Origin")
