"""The console's Limits & budgets page, in headless Chromium: limits set through its forms
are the admin API's, and the use shown beside each is what admission counts."""

from __future__ import annotations

import re
from typing import Any

import httpx
import trio
from playwright.sync_api import Locator, Page, expect

from ingress.console.base import dollars
from ingress.keys import KeyStore
from tests.browser import browse, shot, sign_in
from tests.conftest import make_config, start_gateway
from tests.consoles import ORG, ConsoleGateway
from tests.test_console_session import csrf_of, http_sign_in

HI = [{"role": "user", "content": "hello there"}]


async def admin_api(gw: Any, secret: str, method: str, path: str,
                    body: dict[str, Any] | None = None) -> httpx.Response:
    """One call of the admin API with `secret` as the bearer."""
    async with httpx.AsyncClient(base_url=gw.base_url, trust_env=False,
                                 headers={"authorization": f"Bearer {secret}"}) as http:
        return await http.request(method, "/v1/admin" + path, json=body)


def cell(page: Page, scope: str, name: str, limit: str, kind: str = "use") -> Locator:
    """The use (or `kind` "max": the limit) of one limit of one scope's table."""
    return page.locator(f'table[data-scope="{scope}"][data-name="{name}"] [data-{kind}="{limit}"]')


def meter(page: Page, scope: str, name: str, limit: str) -> Locator:
    return page.locator(f'table[data-scope="{scope}"][data-name="{name}"] [data-meter="{limit}"]')


def set_org_limits(page: Page, base: str, **values: str) -> None:
    """As the operator, fill the org's form on the limits page (already open) and save it."""
    form = page.get_by_role("form", name="Organization limits")
    if not form.is_visible():
        page.get_by_text("Set the organization's plan and limits").click()
    for label, value in values.items():
        form.get_by_label(label).fill(value)
    form.get_by_role("button", name="Save organization limits").click()
    page.wait_for_load_state()


async def test_operator_sets_the_orgs_limits_and_an_admin_its_projects(
        console_gateway: ConsoleGateway) -> None:
    gw = console_gateway
    base = gw.base_url

    def as_operator(page: Page) -> None:
        sign_in(page, base, gw.operator)
        page.goto(base + f"/console/limits?org={ORG}")
        expect(cell(page, "org", ORG, "rpm", "max")).to_have_text("none")
        set_org_limits(page, base, **{"Requests per minute": "120", "Tokens per minute": "50000",
                                      "Monthly budget (USD)": "25.5"})
        expect(page).to_have_url(re.compile(rf"/console/limits\?org={ORG}&saved="))
        expect(page.get_by_role("status")).to_contain_text("Saved the limits of organization")
        expect(cell(page, "org", ORG, "rpm", "max")).to_have_text("120")
        expect(cell(page, "org", ORG, "tpm", "max")).to_have_text("50,000")
        expect(cell(page, "org", ORG, "monthly_budget_usd", "max")).to_have_text("$25.50")
        expect(cell(page, "org", ORG, "max_concurrent", "max")).to_have_text("none")
        expect(meter(page, "org", ORG, "rpm")).to_have_attribute("aria-valuenow", "0")

    def as_admin(page: Page) -> None:
        sign_in(page, base, gw.admin)
        page.get_by_role("link", name="Limits & budgets").click()
        # The org's limits are the operator's: shown, not offered as a form.
        expect(cell(page, "org", ORG, "rpm", "max")).to_have_text("120")
        expect(page.get_by_role("form", name="Organization limits")).to_have_count(0)
        expect(cell(page, "project", "proj", "rpm", "max")).to_have_text("none")
        page.get_by_text("Set the limits of proj").click()
        form = page.get_by_role("form", name="Limits of project proj")
        form.get_by_label("Requests in flight").fill("4")
        form.get_by_label("Monthly budget (USD)").fill("2")
        form.get_by_role("button", name="Save limits of proj").click()
        expect(page.get_by_role("status")).to_contain_text("Saved the limits of project proj")
        expect(cell(page, "project", "proj", "max_concurrent", "max")).to_have_text("4")
        expect(cell(page, "project", "proj", "monthly_budget_usd", "max")).to_have_text("$2.00")
        new = page.get_by_role("form", name="New project")
        new.get_by_label("Project name").fill("web")
        new.get_by_label("Requests per minute").fill("30")
        new.get_by_role("button", name="Create project").click()
        expect(cell(page, "project", "web", "rpm", "max")).to_have_text("30")
        page.get_by_text("Set the limits of web").click()
        form = page.get_by_role("form", name="Limits of project web")
        expect(form.get_by_label("Requests per minute")).to_have_value("30")
        form.get_by_label("Requests per minute").fill("")  # empty: no limit
        form.get_by_label("Tokens per minute").fill("2,000")
        form.get_by_role("button", name="Save limits of web").click()
        expect(cell(page, "project", "web", "rpm", "max")).to_have_text("none")
        expect(cell(page, "project", "web", "tpm", "max")).to_have_text("2,000")
        shot(page, "limits")

    await browse(as_operator)
    await browse(as_admin)
    org = (await admin_api(gw, gw.admin, "GET", f"/orgs/{ORG}")).json()
    assert org["limits"] == {"rpm": 120, "tpm": 50000, "max_concurrent": None,
                             "monthly_budget_usd": 25.5}
    projects = (await admin_api(gw, gw.admin, "GET", "/projects")).json()["data"]
    assert [(p["name"], p["limits"]) for p in projects] == [
        ("proj", {"rpm": None, "tpm": None, "max_concurrent": 4, "monthly_budget_usd": 2.0}),
        ("web", {"rpm": None, "tpm": 2000, "max_concurrent": None, "monthly_budget_usd": None})]


async def test_rpm_use_is_the_requests_sent_in_the_minute(console_gateway: ConsoleGateway) -> None:
    gw = console_gateway
    assert (await admin_api(gw, gw.admin, "PATCH", "/projects/proj",
                            {"limits": {"rpm": 10, "tpm": 100000}})).status_code == 200
    put = await admin_api(gw, gw.operator, "PUT", f"/orgs/{ORG}", {"limits": {"rpm": 5}})
    assert put.status_code == 200, put.text
    client = gw.client()  # the member key, of project "proj"
    sent = 4
    for _ in range(sent):
        await client.chat.completions.create(model="echo", messages=HI)  # type: ignore[arg-type]

    def scenario(page: Page) -> dict[str, str]:
        sign_in(page, gw.base_url, gw.admin)
        page.goto(gw.base_url + "/console/limits")
        expect(cell(page, "org", ORG, "rpm")).to_have_text(str(sent))
        expect(cell(page, "project", "proj", "rpm")).to_have_text(str(sent))
        # 4 of 5 is 80%: not yet high; the project's 4 of 10 neither.
        expect(meter(page, "org", ORG, "rpm")).to_have_attribute("aria-valuenow", "80")
        expect(meter(page, "org", ORG, "rpm")).not_to_have_class(re.compile(r"\b(high|full)\b"))
        return {"tokens": cell(page, "project", "proj", "tpm").inner_text(),
                "in_flight": cell(page, "org", ORG, "max_concurrent").inner_text()}

    shown = await browse(scenario)
    assert int(shown["tokens"].replace(",", "")) > 0  # the project's tpm window has the tokens
    assert shown["in_flight"] == "0"  # every request has ended
    await client.chat.completions.create(model="echo", messages=HI)  # type: ignore[arg-type]

    def full(page: Page) -> None:
        sign_in(page, gw.base_url, gw.admin)
        page.goto(gw.base_url + "/console/limits")
        expect(cell(page, "org", ORG, "rpm")).to_have_text(str(sent + 1))
        expect(meter(page, "org", ORG, "rpm")).to_have_class(re.compile(r"\bfull\b"))
        expect(meter(page, "org", ORG, "rpm")).to_have_attribute("aria-valuenow", "100")

    await browse(full)


async def test_budget_use_shows_the_months_cost(nursery: trio.Nursery, redis_url: str) -> None:
    config = make_config(
        redis_url, {"local": {"kind": "mock"}},
        [{"slug": "paid", "routes": [{"provider": "local", "model": "echo",
                                      "input_per_mtok": 20.0, "output_per_mtok": 80.0}]}],
        plans={"team": {"monthly_tokens": 100000}})
    gw = await start_gateway(nursery, config, org=ORG, plan="team")
    _, admin = await KeyStore(gw.redis).create(ORG, name="acme-admin", role="admin")
    assert (await admin_api(gw, admin, "PUT", f"/orgs/{ORG}",
                            {"limits": {"monthly_budget_usd": 10}})).status_code == 200
    for _ in range(3):
        await gw.client().chat.completions.create(model="paid", messages=HI)  # type: ignore[arg-type]
    usage = await gw.usage()
    assert usage["cost_micro_usd"] > 0

    def scenario(page: Page) -> None:
        sign_in(page, gw.base_url, admin)
        page.goto(gw.base_url + "/console/limits")
        spent = dollars(usage["cost_micro_usd"] / 1e6)
        expect(cell(page, "org", ORG, "monthly_budget_usd")).to_have_text(spent)
        expect(cell(page, "org", ORG, "monthly_budget_usd", "max")).to_have_text("$10.00")
        percent = str(usage["cost_micro_usd"] * 100 // 10_000_000)
        expect(meter(page, "org", ORG, "monthly_budget_usd")).to_have_attribute(
            "aria-valuenow", percent)
        expect(page.locator("[data-plan]")).to_have_text("plan team")
        expect(page.locator('[data-use="monthly_tokens"]')).to_have_text(f"{usage['tokens']:,}")
        expect(page.locator('[data-max="monthly_tokens"]')).to_have_text("100,000")

    await browse(scenario)


async def test_a_member_is_refused_and_an_admin_sets_its_orgs_limits_but_not_its_plan(
        console_gateway: ConsoleGateway) -> None:
    gw = console_gateway

    def member(page: Page) -> int:
        sign_in(page, gw.base_url, gw.member)
        response = page.goto(gw.base_url + "/console/limits")
        assert response is not None
        expect(page.get_by_role("alert")).to_contain_text("this page is for admin keys")
        return response.status

    assert await browse(member) == 403
    before = (await admin_api(gw, gw.admin, "GET", f"/orgs/{ORG}")).json()
    projects = (await admin_api(gw, gw.admin, "GET", "/projects")).json()["data"]
    async with httpx.AsyncClient(base_url=gw.base_url, trust_env=False) as http:
        assert (await http_sign_in(http, gw.admin)).status_code == 303
        shown = await http.get("/console/limits")
        # The admin's form sets the org's limits, as PUT /v1/admin/orgs/{org} lets it; the
        # plan is not on it, and a crafted plan is the API's 403, changing nothing.
        assert shown.status_code == 200 and 'action="/console/limits/org"' in shown.text
        assert 'name="plan"' not in shown.text
        csrf = csrf_of(shown.text)
        crafted = await http.post("/console/limits/org",
                                  data={"csrf": csrf, "org": ORG, "rpm": "1", "plan": ""})
        assert crafted.status_code == 403
        assert "operator" in crafted.text
        assert (await admin_api(gw, gw.admin, "GET", f"/orgs/{ORG}")).json() == before
        # Without the session's token: refused before anything is read.
        made = await http.post("/console/limits/projects", data={"name": "web", "rpm": "1"})
        assert made.status_code == 403
        assert "out of date or did not come from the console" in made.text
        forged = await http.post("/console/limits/projects",
                                 data={"csrf": "forged", "name": "web", "rpm": "1"})
        assert forged.status_code == 403
        # Another org's: 403 whatever the token.
        other = await http.post("/console/limits/projects",
                                data={"csrf": csrf, "org": "globex", "name": "web"})
        assert other.status_code == 403
        # A value that is not a number: an error in words, nothing made.
        bad = await http.post("/console/limits/projects",
                              data={"csrf": csrf, "name": "web", "rpm": "lots"})
        assert bad.status_code == 422
        assert "Requests per minute must be a whole number of 0 or more" in bad.text
    assert (await admin_api(gw, gw.admin, "GET", f"/orgs/{ORG}")).json() == before
    # The API's operation the project form calls: 404 for a project the org lacks, 403 for
    # a member key.
    missing = await admin_api(gw, gw.admin, "PATCH", "/projects/nope", {"limits": {"rpm": 1}})
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "name"
    assert (await admin_api(gw, gw.member, "PATCH", "/projects/proj",
                            {"limits": {"rpm": 1}})).status_code == 403
    assert (await admin_api(gw, gw.admin, "GET", "/projects")).json()["data"] == projects
    async with httpx.AsyncClient(base_url=gw.base_url, trust_env=False) as http:
        assert (await http_sign_in(http, gw.admin)).status_code == 303
        csrf = csrf_of((await http.get("/console/limits")).text)
        saved = await http.post("/console/limits/org", data={"csrf": csrf, "org": ORG, "rpm": "7"})
        assert saved.status_code == 303, saved.text
    after = (await admin_api(gw, gw.admin, "GET", f"/orgs/{ORG}")).json()
    assert after["limits"]["rpm"] == 7 and after["plan"] == before["plan"]


async def test_the_forms_post_with_scripts_off(console_gateway: ConsoleGateway) -> None:
    gw = console_gateway
    base = gw.base_url

    def operator(page: Page) -> None:
        sign_in(page, base, gw.operator)
        page.goto(base + "/console/limits")
        page.get_by_label("Organization", exact=True).select_option("globex")
        page.get_by_role("button", name="Show").click()  # no script submits the picker
        expect(page).to_have_url(re.compile(r"org=globex"))
        set_org_limits(page, base, **{"Requests in flight": "7"})
        expect(cell(page, "org", "globex", "max_concurrent", "max")).to_have_text("7")

    def admin(page: Page) -> None:
        sign_in(page, base, gw.other)
        page.goto(base + "/console/limits")
        expect(cell(page, "org", "globex", "max_concurrent", "max")).to_have_text("7")
        expect(page.locator('[data-empty="projects"]')).to_contain_text("No projects yet")
        new = page.get_by_role("form", name="New project")
        new.get_by_label("Project name").fill("batch-jobs")
        new.get_by_role("button", name="Create project").click()
        page.get_by_text("Set the limits of batch-jobs").click()
        form = page.get_by_role("form", name="Limits of project batch-jobs")
        form.get_by_label("Tokens per minute").fill("9000")
        form.get_by_role("button", name="Save limits of batch-jobs").click()
        expect(cell(page, "project", "batch-jobs", "tpm", "max")).to_have_text("9,000")

    await browse(operator, javascript=False)
    await browse(admin, javascript=False)
    org = (await admin_api(gw, gw.other, "GET", "/orgs/globex")).json()
    assert org["limits"]["max_concurrent"] == 7
    projects = (await admin_api(gw, gw.other, "GET", "/projects")).json()["data"]
    assert [(p["name"], p["limits"]["tpm"]) for p in projects] == [("batch-jobs", 9000)]


async def test_the_page_reads_on_a_phone(console_gateway: ConsoleGateway) -> None:
    gw = console_gateway
    assert (await admin_api(gw, gw.operator, "PUT", f"/orgs/{ORG}",
                            {"limits": {"rpm": 10, "max_concurrent": 2}})).status_code == 200
    assert (await admin_api(gw, gw.admin, "PATCH", "/projects/proj",
                            {"limits": {"tpm": 20000}})).status_code == 200
    for _ in range(9):
        await gw.client().chat.completions.create(model="echo", messages=HI)  # type: ignore[arg-type]

    def scenario(page: Page) -> None:
        sign_in(page, gw.base_url, gw.admin)
        page.goto(gw.base_url + "/console/limits")
        expect(meter(page, "org", ORG, "rpm")).to_have_class(re.compile(r"\bhigh\b"))
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page is {width}px wide on a 390px phone"
        shot(page, "limits-phone")

    await browse(scenario, viewport=(390, 844))
