"""What every console page shares: the blueprint, who is signed in, the navigation, the
page renderer and the checked form.

A page handler is three lines of plumbing and its own reads:

    @console.get("/things")
    async def things() -> Response:
        viewer = await signed_in("admin")     # sign-in page if signed out, 403 if too weak
        org = viewer.org(request.args.get("org"))   # an admin's own; the operator picks
        rows = await gateway().redis_call(...)      # the same operation the API calls
        return await page("things.html", viewer, "things", rows=rows)

and a state-changing one starts with `fields = await checked_form(viewer)` (403 without
the session's CSRF token). Errors are `GatewayError`s like everywhere else; the app's
one renderer draws them as a console page for paths under /console.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quart import Blueprint, Response, render_template, request
from werkzeug.datastructures import MultiDict

from ingress.access import managing_org
from ingress.console.session import COOKIE, Session, Sessions
from ingress.keys import Identity
from ingress.respond import gateway
from schemas.errors import GatewayError
from schemas.keys import Role

console = Blueprint("console", __name__, url_prefix="/console", template_folder="templates",
                    static_folder="static", static_url_path="/static")

RANK: dict[Role, int] = {"member": 0, "admin": 1, "operator": 2}


@dataclass(frozen=True, slots=True)
class NavEntry:
    """One item of the navigation: the view's endpoint, its title, the least role it needs."""

    endpoint: str
    title: str
    needs: Role


NAV = (
    NavEntry("console.models", "Models", "member"),
    NavEntry("console.keys", "Access keys", "admin"),
    NavEntry("console.usage", "Usage", "admin"),
    NavEntry("console.requests", "Requests", "admin"),
    NavEntry("console.limits", "Limits & budgets", "admin"),
    NavEntry("console.batches", "Batches", "admin"),
)


class SignInNeeded(Exception):
    """No live session: the app answers with the sign-in page's address (a 303)."""


@dataclass(frozen=True, slots=True)
class Viewer:
    """The signed-in browser's key, as pages use it."""

    session: Session

    @property
    def identity(self) -> Identity:
        return self.session.identity

    @property
    def role(self) -> Role:
        return self.session.identity.role

    def may(self, needs: Role) -> bool:
        """Whether this key's role reaches `needs`."""
        return RANK[self.role] >= RANK[needs]

    def org(self, requested: str | None) -> str:
        """The org a page acts on: an admin's own, or the one an operator names (`org`);
        400 when the operator names none, 403 when an admin names another."""
        return managing_org(self.identity, requested or None)

    def nav(self) -> list[NavEntry]:
        """The navigation entries this key may open."""
        return [entry for entry in NAV if self.may(entry.needs)]


async def org_choices(viewer: Viewer) -> list[str]:
    """The orgs this viewer may pick: an admin's own; for the operator, every org that has
    a key (an org exists once a key names it)."""
    if viewer.role != "operator":
        return [viewer.identity.org]
    gw = gateway()
    records = await gw.redis_call(gw.keys.list())
    return sorted({record.org for record in records if record.org})


async def chosen_org(viewer: Viewer) -> tuple[str | None, list[str]]:
    """The org a page shows and the orgs to pick from (`_org_picker.html` draws them):
    an admin's own; the operator's `?org=` (403 for an admin naming another org), else the
    first org there is; None when there is none yet."""
    choices = await org_choices(viewer)
    requested = request.args.get("org") or None
    if viewer.role != "operator":
        return viewer.org(requested), choices
    if requested:
        return viewer.org(requested), sorted({*choices, requested})
    return (choices[0] if choices else None), choices


def sessions() -> Sessions:
    """The console's session store (over the process's Redis and key store)."""
    gw = gateway()
    return Sessions(gw.redis, gw.keys, gw.config.console.session_ttl_s)


async def signed_in(needs: Role = "member") -> Viewer:
    """The signed-in viewer; SignInNeeded without a live session, 403 when its key's role
    does not reach `needs` (a member opening an admin page)."""
    gw = gateway()
    found = await gw.redis_call(sessions().read(request.cookies.get(COOKIE)))
    if found is None:
        raise SignInNeeded
    viewer = Viewer(found)
    if not viewer.may(needs):
        raise GatewayError(403, "forbidden", f"this page is for {needs} keys; you are signed "
                           f"in with a {viewer.role} key")
    return viewer


async def checked_form(viewer: Viewer) -> MultiDict[str, str]:
    """The posted form, once its CSRF token is the session's (403 otherwise)."""
    fields = await request.form
    Sessions.check_csrf(fields.get("csrf"), viewer.session.csrf)
    return fields


async def page(template: str, viewer: Viewer | None, current: str, *, status: int = 200,
               **context: Any) -> Response:
    """A console page: `template` inside the layout, the nav marking `current` (a view
    name such as "models")."""
    body = await render_template(template, viewer=viewer, current=current,
                                 nav=viewer.nav() if viewer else [], **context)
    response = Response(body, status, content_type="text/html; charset=utf-8")
    secure_headers(response)
    return response


def dollars(amount: float | None) -> str:
    """A cost in dollars, exact to the micro-dollar metered: `$0.000070` under a dollar,
    `$12.50` or `$12.3456` above; "—" when there is no price."""
    if amount is None:
        return "—"
    if amount < 1:
        return f"${amount:.6f}"
    whole, _, fraction = f"{amount:,.6f}".partition(".")
    return f"${whole}.{fraction.rstrip('0').ljust(2, '0')}"


def see_other(location: str) -> Response:
    """A 303 to `location` (where a form post leads: the browser then GETs it)."""
    response = Response("", 303, headers={"location": location})
    secure_headers(response)
    return response


def secure_headers(response: Response) -> None:
    """What every console answer carries: no caching of pages that show keys, no framing
    (clickjacking), and scripts and styles from this gateway only."""
    response.headers["cache-control"] = "no-store"
    response.headers["x-frame-options"] = "DENY"
    response.headers["x-content-type-options"] = "nosniff"
    response.headers["referrer-policy"] = "same-origin"
    response.headers["content-security-policy"] = (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
