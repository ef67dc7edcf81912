"""The console's Limits & budgets page: the org's plan and limits and each project's, with
what each uses now against it; forms to set them.

    GET  /console/limits                    the page (`?org=` the operator's pick)
    POST /console/limits/org                the org's limits (its admin), and plan (the operator)
    POST /console/limits/projects           a new project, with its limits
    POST /console/limits/projects/<name>    a project's limits (its admin or the operator)

Limits are read with `Control.get_org` / `list_projects` and set with `update_org`,
`create_project` and `update_project`: the admin API's operations. Current use comes from
the counters admission keeps (`ingress.limits.scope_use`, `plan_use`), read on Redis's
clock the way admission reads them. Who may set what is the API's rule, checked by
`update_org` itself: the org's admin sets its limits, the operator also its plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from quart import Response, request, url_for
from werkzeug.datastructures import MultiDict

from ingress.console.base import (
    Viewer,
    checked_form,
    chosen_org,
    console,
    dollars,
    page,
    see_other,
    signed_in,
)
from ingress.limits import PlanUse, ScopeUse, plan_use, scope_use
from ingress.respond import gateway
from schemas import names
from schemas.admin import OrgUpdate, ProjectCreate, ProjectPatch
from schemas.errors import GatewayError
from schemas.limits import LimitSet, ScopedLimits
from schemas.pricing import MICRO_USD

LIMIT_FIELDS = ("rpm", "tpm", "max_concurrent", "monthly_budget_usd")
TITLES = {"rpm": "Requests per minute", "tpm": "Tokens per minute",
          "max_concurrent": "Requests in flight", "monthly_budget_usd": "Monthly budget",
          "monthly_tokens": "Plan tokens this month"}
HIGH_PERCENT = 80


@dataclass(frozen=True, slots=True)
class Gauge:
    """One limit beside its current use: `limit` None when unset; `percent` (0-100) and
    `level` ("", "high" over 80 %, "full" at 100 %) only when it is set."""

    name: str
    title: str
    use: str
    limit: str | None
    percent: int | None
    level: str
    note: str = ""

    @property
    def label(self) -> str:
        """The words a screen reader gives the meter."""
        return f"{self.title}: {self.use} of {self.limit}"


@dataclass(frozen=True, slots=True)
class Panel:
    """A scope (the org or one project): its limits as stored and their gauges."""

    scope: str
    name: str
    limits: LimitSet
    gauges: list[Gauge]


def field_value(limits: LimitSet | None, name: str) -> str:
    """A limit as its form field shows it: "" for none, dollars without trailing zeros."""
    value = getattr(limits, name) if limits is not None else None
    if value is None:
        return ""
    if name == "monthly_budget_usd":
        return f"{value:.6f}".rstrip("0").rstrip(".")
    return str(value)


def gauge(name: str, use: float, limit: float | None, shown_use: str, shown_limit: str,
          note: str = "") -> Gauge:
    """A Gauge of `use` against `limit` (None: no limit, no meter)."""
    if limit is None:
        return Gauge(name, TITLES[name], shown_use, None, None, "", note)
    percent = 100 if limit <= 0 else min(100, int(use * 100 // limit))
    level = "full" if percent >= 100 else "high" if percent > HIGH_PERCENT else ""
    return Gauge(name, TITLES[name], shown_use, shown_limit, percent, level, note)


def gauges(limits: LimitSet, use: ScopeUse) -> list[Gauge]:
    """The four limits of a scope against what it uses now."""
    spent = use.cost_micro_usd + use.held_cost_micro_usd
    budget = limits.monthly_budget_usd
    note = (f"{dollars(use.held_cost_micro_usd / MICRO_USD)} of it held by requests in flight"
            if use.held_cost_micro_usd else "")
    return [
        gauge("rpm", use.requests_minute, limits.rpm, f"{use.requests_minute:,}",
              f"{limits.rpm:,}" if limits.rpm is not None else ""),
        gauge("tpm", use.tokens_minute, limits.tpm, f"{use.tokens_minute:,}",
              f"{limits.tpm:,}" if limits.tpm is not None else ""),
        gauge("max_concurrent", use.in_flight, limits.max_concurrent, f"{use.in_flight:,}",
              f"{limits.max_concurrent:,}" if limits.max_concurrent is not None else ""),
        gauge("monthly_budget_usd", spent, None if budget is None else budget * MICRO_USD,
              dollars(spent / MICRO_USD), dollars(budget) if budget is not None else "", note),
    ]


def plan_gauge(monthly_tokens: int | None, use: PlanUse) -> Gauge:
    """The plan's monthly tokens against the month's (metered plus held)."""
    used = use.tokens + use.held_tokens
    note = f"{use.held_tokens:,} of them held by requests in flight" if use.held_tokens else ""
    return gauge("monthly_tokens", used, monthly_tokens, f"{used:,}",
                 f"{monthly_tokens:,}" if monthly_tokens is not None else "", note)


async def _panels(viewer: Viewer, org: str) -> tuple[str, Gauge, list[Panel]]:
    """The org's plan, its plan gauge, and the panels of the org and its projects."""
    gw = gateway()
    month = names.month()
    shown = await gw.redis_call(gw.control.get_org(viewer.identity, org))
    projects = await gw.redis_call(gw.control.list_projects(viewer.identity, org))
    org_use = await gw.redis_call(scope_use(gw.admission, ScopedLimits(
        scope="org", id=org, limits=shown.limits), org=org, project="", month=month))
    plan = gw.config.plans.get(shown.plan)
    tokens = await gw.redis_call(plan_use(gw.admission, org, month))
    panels = [Panel("org", org, shown.limits, gauges(shown.limits, org_use))]
    for project in projects.data:
        scoped = ScopedLimits(scope="project", id=f"{org}/{project.name}", limits=project.limits)
        use = await gw.redis_call(scope_use(gw.admission, scoped, org=org, project=project.name,
                                            month=month))
        panels.append(Panel("project", project.name, project.limits,
                            gauges(project.limits, use)))
    return shown.plan, plan_gauge(plan.monthly_tokens if plan else None, tokens), panels


@console.get("/limits")
async def limits() -> Response:
    """The org's plan and limits and its projects', each with its current use."""
    viewer = await signed_in("admin")
    org, orgs = await chosen_org(viewer)
    context: dict[str, Any] = {"org": org, "orgs": orgs, "saved": request.args.get("saved")}
    if org is not None:
        plan, plan_meter, panels = await _panels(viewer, org)
        context.update(plan=plan, plan_meter=plan_meter, org_panel=panels[0],
                       projects=panels[1:], plans=sorted(gateway().config.plans),
                       month=names.month())
    return await page("limits.html", viewer, "limits", title="Limits & budgets",
                      fields=LIMIT_FIELDS, titles=TITLES, field_value=field_value,
                      **context)


def posted_limits(fields: MultiDict[str, str]) -> LimitSet:
    """The limits a form posts: an empty field is no limit; 422 in words for a value that
    is not a number of 0 or more."""
    values: dict[str, int | float] = {}
    for name in LIMIT_FIELDS:
        text = (fields.get(name) or "").strip().replace(",", "").lstrip("$")
        if not text:
            continue
        try:
            values[name] = float(text) if name == "monthly_budget_usd" else int(text)
        except ValueError:
            kind = "an amount in dollars" if name == "monthly_budget_usd" else "a whole number"
            raise GatewayError(422, "validation_error",
                               f"{TITLES[name]} must be {kind} of 0 or more, or empty for no "
                               f"limit (got {text[:40]!r})", param=name) from None
    try:
        return msgspec.convert(values, LimitSet)
    except msgspec.ValidationError as exc:
        raise GatewayError(422, "validation_error",
                           f"Limits must be 0 or more, or empty for no limit ({exc})") from None


def _back(org: str, saved: str) -> Response:
    return see_other(url_for("console.limits", org=org, saved=saved))


@console.post("/limits/org")
async def set_org_limits() -> Response:
    """An org's limits (its admin or the operator) and, from the operator's form, its plan:
    the API's `update_org`, which refuses a plan from anyone but the operator (403)."""
    viewer = await signed_in("admin")
    fields = await checked_form(viewer)
    org = viewer.org(fields.get("org"))
    plan = fields.get("plan")
    body = OrgUpdate(limits=posted_limits(fields)) if plan is None else \
        OrgUpdate(plan=plan.strip(), limits=posted_limits(fields))
    gw = gateway()
    await gw.redis_call(gw.control.update_org(viewer.identity, org, body))
    return _back(org, "organization")


@console.post("/limits/projects")
async def create_project() -> Response:
    """A new project of the org, with its limits (the API's `create_project`)."""
    viewer = await signed_in("admin")
    fields = await checked_form(viewer)
    org = viewer.org(fields.get("org"))
    name = (fields.get("name") or "").strip()
    try:
        body = msgspec.convert({"name": name, "org": org}, ProjectCreate)
    except msgspec.ValidationError:
        raise GatewayError(422, "validation_error",
                           f"A project's name is 1-64 letters, digits, '.', '_' or '-', "
                           f"starting with a letter or digit (got {name[:64]!r})",
                           param="name") from None
    body = ProjectCreate(name=body.name, org=org, limits=posted_limits(fields))
    gw = gateway()
    await gw.redis_call(gw.control.create_project(viewer.identity, body))
    return _back(org, f"project {body.name}")


@console.post("/limits/projects/<name>")
async def set_project_limits(name: str) -> Response:
    """A project's limits (the API's `update_project`)."""
    viewer = await signed_in("admin")
    fields = await checked_form(viewer)
    org = viewer.org(fields.get("org"))
    gw = gateway()
    await gw.redis_call(gw.control.update_project(
        viewer.identity, name, ProjectPatch(org=org, limits=posted_limits(fields))))
    return _back(org, f"project {name}")
