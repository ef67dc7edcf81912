"""Signing in and out of the console, and the console's error page."""

from __future__ import annotations

from urllib.parse import urlsplit

from quart import Response, request, url_for

from ingress.console.base import Viewer, checked_form, console, page, see_other, sessions, signed_in
from ingress.console.session import COOKIE, CSRF_COOKIE, PATH, new_token, same_token
from ingress.respond import gateway
from schemas.errors import GatewayError


def _safe_next(target: str | None) -> str:
    """Where to go after signing in: a console path only (never another site)."""
    if target and target.startswith(PATH + "/") and not urlsplit(target).netloc \
            and not target.startswith("//"):
        return target
    return url_for("console.models")


def _secure() -> bool:
    return request.scheme == "https"


@console.get("/")
async def index() -> Response:
    return see_other(url_for("console.models"))


async def sign_in_page(message: str = "", status: int = 200) -> Response:
    """The sign-in form with a fresh double-submit token (also what a failed sign-in shows)."""
    token = new_token()
    response = await page("sign_in.html", None, "sign_in", status=status, csrf=token,
                          message=message, next=_safe_next(request.args.get("next")))
    response.set_cookie(CSRF_COOKIE, token, path=PATH, httponly=True, samesite="Strict",
                        secure=_secure(), max_age=3600)
    return response


@console.get("/sign-in")
async def sign_in_form() -> Response:
    return await sign_in_page()


@console.post("/sign-in")
async def sign_in() -> Response:
    fields = await request.form
    if not same_token(fields.get("csrf"), request.cookies.get(CSRF_COOKIE, "")):
        raise GatewayError(403, "csrf_failed", "this sign-in form is out of date or did not "
                           "come from the console: reload the page and try again")
    secret = (fields.get("key") or "").strip()
    if not secret:
        return await sign_in_page("Paste an access key to sign in.", 400)
    gw = gateway()
    try:
        identity = await gw.authenticate(secret)
    except GatewayError as error:
        if error.status != 401:
            raise
        return await sign_in_page("That access key is not valid, or it has been revoked.", 401)
    store = sessions()
    token = await gw.redis_call(store.open(identity))
    response = see_other(_safe_next(fields.get("next")))
    response.set_cookie(COOKIE, token, path=PATH, httponly=True, samesite="Lax",
                        secure=_secure(), max_age=store.ttl_s)
    response.delete_cookie(CSRF_COOKIE, path=PATH)
    return response


@console.post("/sign-out")
async def sign_out() -> Response:
    viewer = await signed_in()
    await checked_form(viewer)
    await gateway().redis_call(sessions().close(request.cookies.get(COOKIE)))
    response = see_other(url_for("console.sign_in_form"))
    response.delete_cookie(COOKIE, path=PATH)
    return response


def sign_in_redirect() -> Response:
    """Where a signed-out browser is sent: the sign-in page, back here afterwards."""
    target = request.full_path.rstrip("?") if request.method == "GET" else None
    return see_other(url_for("console.sign_in_form", next=target))


async def error_page(error: GatewayError) -> Response:
    """A GatewayError drawn as a console page (the app's renderer calls this under /console),
    with the navigation when the browser is signed in and Redis answers."""
    viewer = None
    try:
        found = await gateway().redis_call(sessions().read(request.cookies.get(COOKIE)))
        viewer = Viewer(found) if found else None
    except GatewayError:
        pass  # Redis is away: the error page is drawn without the navigation
    return await page("error.html", viewer, "", status=error.status, error=error)
