"""The console's Access keys page (placeholder until its page is written)."""

from __future__ import annotations

from quart import Response

from ingress.console.base import console, page, signed_in


@console.get("/keys")
async def keys() -> Response:
    viewer = await signed_in("admin")
    return await page("placeholder.html", viewer, "keys", title="Access keys")
