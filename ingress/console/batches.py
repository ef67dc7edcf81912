"""The console's Batches page (placeholder until its page is written)."""

from __future__ import annotations

from quart import Response

from ingress.console.base import console, page, signed_in


@console.get("/batches")
async def batches() -> Response:
    viewer = await signed_in("admin")
    return await page("placeholder.html", viewer, "batches", title="Batches")
