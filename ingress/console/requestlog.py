"""The console's Requests page (placeholder until its page is written)."""

from __future__ import annotations

from quart import Response

from ingress.console.base import console, page, signed_in


@console.get("/requests")
async def requests() -> Response:
    viewer = await signed_in("admin")
    return await page("placeholder.html", viewer, "requests", title="Requests")
