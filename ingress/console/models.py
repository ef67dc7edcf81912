"""The console's Models page (placeholder until its page is written)."""

from __future__ import annotations

from quart import Response

from ingress.console.base import console, page, signed_in


@console.get("/models")
async def models() -> Response:
    viewer = await signed_in("member")
    return await page("placeholder.html", viewer, "models", title="Models")
