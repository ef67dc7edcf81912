"""The console's Access keys page: an org's keys listed, created, revoked, rotated and
limited.

Every action calls the operation the admin API calls (`gateway().control`, see
ingress/control.py) with the viewer's `Identity`, so who may do what is the API's own
rule (an admin: its org; another org's key id: 404; the operator: every org). Form fields
become the API's Structs (`KeyCreate`, `KeyPatch`) through `msgspec.convert`, so a bad
value is the API's 422, said in words on the form. A new or rotated secret is shown once,
in the answer to the post that made it, and kept nowhere (console pages are `no-store`).

    GET  /console/keys                      the list and the create form (`?org=`: operator)
    POST /console/keys                      create: the list again, the secret on top
    GET  /console/keys/<id>                 one key: its settings, rotate, revoke
    POST /console/keys/<id>/settings        name and limits; 303 back with a notice
    POST /console/keys/<id>/rotate          the key's page, the new secret on top
    POST /console/keys/<id>/revoke          303 to the list with a notice
"""

from __future__ import annotations

import time
from typing import Any, TypeVar

import msgspec
from quart import Response, request, url_for
from werkzeug.datastructures import MultiDict

from ingress.console.base import (
    Viewer,
    checked_form,
    chosen_org,
    console,
    dollars,
    org_choices,
    page,
    see_other,
    signed_in,
)
from ingress.respond import gateway
from schemas.admin import KeyCreate, KeyCreated, KeyPatch, KeyView, valid_id
from schemas.errors import GatewayError
from schemas.limits import LimitSet

S = TypeVar("S")

# The notices a post that changed something leads back to (`?done=`): a fixed set, so a
# link cannot make the page say anything else.
NOTICES = {
    "revoked": "Key revoked. Requests with its secret are refused (401) on every ingress.",
    "saved": "Settings saved. Every ingress applies them to the next request.",
}
# The limit fields of a key, in the order the forms show them, with their labels.
LIMIT_FIELDS = (
    ("rpm", "Requests per minute"),
    ("tpm", "Tokens per minute"),
    ("max_concurrent", "Requests at once"),
    ("monthly_budget_usd", "Monthly budget (USD)"),
)
# What to tell a person whose form value the Struct refused, by field.
HINTS = {
    "role": "The role is member (inference only) or admin (also manages the org).",
    "org": "An organization id is 1-64 letters, digits, '.', '_' or '-', starting with a "
           "letter or digit.",
    "project": "A project id is 1-64 letters, digits, '.', '_' or '-', starting with a "
               "letter or digit; leave it empty for a key of the whole organization.",
    "name": "A key's name is at most 200 characters.",
    "rpm": "Requests per minute is a whole number, 0 or more; leave it empty for no limit.",
    "tpm": "Tokens per minute is a whole number, 0 or more; leave it empty for no limit.",
    "max_concurrent": "Requests at once is a whole number, 0 or more; leave it empty for no "
                      "limit.",
    "monthly_budget_usd": "The monthly budget is an amount of US dollars, 0 or more (such as "
                          "25 or 7.50); leave it empty for no budget.",
}
# The form errors shown on the form itself; any other error is the console's error page.
FORM_ERRORS = (400, 404, 409, 422)


def struct_of(shape: type[S], data: dict[str, Any]) -> S:
    """Form fields as the API's Struct: 422 naming the field, in words, as the API would."""
    try:
        return msgspec.convert(data, shape, strict=False)
    except msgspec.ValidationError as exc:
        message = str(exc)
        reason, _, where = message.partition(" - at `")
        path = where.rstrip("`") or "$"
        field = path.rsplit(".", 1)[-1]
        hint = HINTS.get(field)
        raise GatewayError(422, "validation_error",
                           f"{hint} (invalid request: {message})" if hint
                           else f"invalid request: {message}",
                           param=path.removeprefix("$.") if path != "$" else None,
                           details={"field": path, "reason": reason}) from None


def when(stamp: int | None, never: str = "never", *, utc: bool = True) -> str:
    """A unix time as the pages show it (UTC, to the minute; `utc=False` leaves the zone
    out, for a table whose heading names it)."""
    if not stamp:
        return never
    return time.strftime("%Y-%m-%d %H:%M" + (" UTC" if utc else ""), time.gmtime(stamp))


def limits_text(limits: LimitSet) -> str:
    """A key's limits in a few words ("none" when it has none)."""
    parts = []
    if limits.rpm is not None:
        parts.append(f"{limits.rpm:,} rpm")
    if limits.tpm is not None:
        parts.append(f"{limits.tpm:,} tpm")
    if limits.max_concurrent is not None:
        parts.append(f"{limits.max_concurrent:,} at once")
    if limits.monthly_budget_usd is not None:
        parts.append(f"{dollars(limits.monthly_budget_usd)}/month")
    return " · ".join(parts) or "none"


def limit_value(limits: LimitSet, field: str) -> str:
    """A limit as its form field shows it ("" for none)."""
    value = getattr(limits, field)
    if value is None:
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _limits_of(fields: MultiDict[str, str]) -> dict[str, str]:
    """The limit fields that were filled in (an empty one is no limit)."""
    return {name: value for name, _ in LIMIT_FIELDS
            if (value := (fields.get(name) or "").strip())}


def _list_url(viewer: Viewer, org: str, done: str | None = None) -> str:
    return url_for("console.keys", org=org if viewer.role == "operator" else None, done=done)


def _api_base() -> str:
    return request.host_url.rstrip("/") + "/v1"


async def _list_page(viewer: Viewer, org: str | None, orgs: list[str], *, status: int = 200,
                     **context: Any) -> Response:
    """The list of `org`'s keys and the create form (`context`: a notice, an error, the
    form's values, a new key's secret)."""
    gw = gateway()
    keys: list[KeyView] = []
    projects: list[str] = []
    if org is not None:
        keys = (await gw.redis_call(gw.control.list_keys(viewer.identity, org))).data
        listed = await gw.redis_call(gw.control.list_projects(viewer.identity, org))
        projects = [project.name for project in listed.data]
    context.setdefault("form", {})
    return await page("keys.html", viewer, "keys", status=status, title="Access keys", org=org,
                      orgs=orgs, keys=keys, projects=projects, when=when,
                      limits_text=limits_text, api_base=_api_base(), **context)


async def _key_page(viewer: Viewer, key: KeyView, *, status: int = 200,
                    **context: Any) -> Response:
    """One key's page: what it is, its settings form, rotate and revoke."""
    context.setdefault("form", {"name": key.name, **{name: limit_value(key.limits, name)
                                                     for name, _ in LIMIT_FIELDS}})
    return await page("keys_detail.html", viewer, "keys", status=status,
                      title=f"Key {key.name or key.id}", key=key, when=when,
                      limits_text=limits_text, limit_fields=LIMIT_FIELDS,
                      back=_list_url(viewer, key.org), api_base=_api_base(), **context)


@console.get("/keys")
async def keys() -> Response:
    """The org's keys (the operator picks the org) and the form that creates one."""
    viewer = await signed_in("admin")
    org, orgs = await chosen_org(viewer)
    return await _list_page(viewer, org, orgs, notice=NOTICES.get(request.args.get("done", "")))


@console.post("/keys")
async def create_key() -> Response:
    """Create a key (`KeyCreate` from the form); the answer shows its secret this once."""
    viewer = await signed_in("admin")
    fields = await checked_form(viewer)
    data: dict[str, Any] = {"role": fields.get("role", ""),
                            "name": (fields.get("name") or "").strip(),
                            "project": (fields.get("project") or "").strip() or None}
    org = viewer.identity.org
    if viewer.role == "operator":
        org = (fields.get("org") or "").strip()
        data["org"] = org or None
    gw = gateway()
    try:
        body = struct_of(KeyCreate, data)
        created: KeyCreated = await gw.redis_call(gw.control.create_key(viewer.identity, body))
    except GatewayError as error:
        if error.status not in FORM_ERRORS:
            raise
        shown = org if org and valid_id(org) else None
        orgs = await org_choices(viewer)
        if shown is not None:
            orgs = sorted({*orgs, shown})
        return await _list_page(viewer, shown, orgs, status=error.status, error=error.message,
                                form=fields)
    orgs = sorted({*await org_choices(viewer), created.org})
    return await _list_page(viewer, created.org, orgs, status=201, secret=created,
                            notice=f"Key {created.name or created.id} created.")


async def _visible(viewer: Viewer, key_id: str) -> KeyView:
    """The key as the API shows it to this viewer (404 for a key it may not see)."""
    gw = gateway()
    return await gw.redis_call(gw.control.get_key(viewer.identity, key_id))


@console.get("/keys/<key_id>")
async def key_detail(key_id: str) -> Response:
    """One key: its record, its settings (name, limits), rotate and revoke."""
    viewer = await signed_in("admin")
    key = await _visible(viewer, key_id)
    return await _key_page(viewer, key, notice=NOTICES.get(request.args.get("done", "")))


@console.post("/keys/<key_id>/settings")
async def update_key(key_id: str) -> Response:
    """Set a key's name and limits (`KeyPatch`: the limits as a whole, empty ones none)."""
    viewer = await signed_in("admin")
    fields = await checked_form(viewer)
    key = await _visible(viewer, key_id)
    gw = gateway()
    try:
        body = struct_of(KeyPatch, {"name": (fields.get("name") or "").strip(),
                                    "limits": _limits_of(fields)})
        await gw.redis_call(gw.control.update_key(viewer.identity, key_id, body))
    except GatewayError as error:
        if error.status not in FORM_ERRORS:
            raise
        return await _key_page(viewer, key, status=error.status, error=error.message,
                               form=fields)
    return see_other(url_for("console.key_detail", key_id=key_id, done="saved"))


@console.post("/keys/<key_id>/rotate")
async def rotate_key(key_id: str) -> Response:
    """A new secret for the key, shown this once; the old one stops working at once."""
    viewer = await signed_in("admin")
    await checked_form(viewer)
    gw = gateway()
    rotated = await gw.redis_call(gw.control.rotate_key(viewer.identity, key_id))
    return await _key_page(viewer, rotated, secret=rotated,
                           notice="Key rotated: the old secret no longer works.")


@console.post("/keys/<key_id>/revoke")
async def revoke_key(key_id: str) -> Response:
    """Revoke the key on every ingress at once; back to the list with a notice."""
    viewer = await signed_in("admin")
    await checked_form(viewer)
    gw = gateway()
    revoked = await gw.redis_call(gw.control.revoke_key(viewer.identity, key_id))
    return see_other(_list_url(viewer, revoked.org, "revoked"))
