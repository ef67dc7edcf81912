"""The console's Usage page in headless Chromium: its figures are the admin API's, its CSV
is the API's CSV, its date range works with scripts on and off, and only the org's admin
(or the operator) sees the org's usage."""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import openai
import pytest
import trio
from playwright.sync_api import Page, expect

from ingress.console.chart import bar_chart
from tests.browser import browse, shot, sign_in
from tests.conftest import TLS
from tests.consoles import ConsoleGateway, start_console_gateway

# The console's models with prices (USD per million tokens), so the page has costs to show.
PRICED_MODELS = [
    {"slug": "echo", "routes": [
        {"provider": "local", "model": "echo", "input_per_mtok": 2.0, "output_per_mtok": 8.0},
        {"provider": "spare", "model": "echo-spare", "input_per_mtok": 2.0,
         "output_per_mtok": 8.0}]},
    {"slug": "solo", "routes": [{"provider": "spare", "model": "solo-1", "input_per_mtok": 3.0,
                                 "output_per_mtok": 5.0}]},
]


async def start_priced_console(nursery: trio.Nursery, redis_url: str) -> ConsoleGateway:
    """tests/consoles.py's gateway and keys, on priced routes."""
    return await start_console_gateway(nursery, redis_url, PRICED_MODELS)


@dataclass(frozen=True)
class Call:
    """One chat completion the traffic sends (`model` "nope" is refused: not in the catalog)."""

    key: str  # member or admin
    model: str
    content: str
    identity: str = ""
    thread: str = ""
    user: str = ""


TRAFFIC = [
    Call("member", "echo", "one two three", identity="ada", thread="t-1"),
    Call("member", "echo", "four five", identity="ada", thread="t-1"),
    Call("member", "solo", "six seven eight nine", identity="bob", thread="t-2"),
    Call("admin", "echo", "ten eleven", user="carol"),  # OpenAI's `user` is the identity
    Call("admin", "nope", "never answered", identity="bob"),
]


async def send_traffic(gw: ConsoleGateway) -> None:
    """Send TRAFFIC with the openai SDK."""
    for call in TRAFFIC:
        client = gw.client(api_key=gw.admin if call.key == "admin" else gw.member)
        extra: dict[str, Any] = {}
        if call.identity:
            extra["identity"] = {"id": call.identity}
        if call.thread:
            extra["thread"] = {"id": call.thread}
        kwargs: dict[str, Any] = {"user": call.user} if call.user else {}
        messages: Any = [{"role": "user", "content": call.content}]
        if call.model == "nope":
            with pytest.raises(openai.BadRequestError):
                await client.chat.completions.create(model=call.model, messages=messages,
                                                     extra_body=extra, **kwargs)
            continue
        answer = await client.chat.completions.create(model=call.model, messages=messages,
                                                      extra_body=extra, **kwargs)
        assert answer.usage is not None and answer.usage.prompt_tokens > 0


async def api_get(gw: ConsoleGateway, path: str, **params: str) -> httpx.Response:
    """GET an admin API path with the admin's bearer key."""
    async with httpx.AsyncClient(base_url=gw.base_url, verify=TLS, timeout=20,
                                 trust_env=False) as http:
        response = await http.get(path, params=params,
                                  headers={"authorization": f"Bearer {gw.admin}"})
    assert response.status_code == 200, response.text
    return response


@pytest.fixture
async def used(nursery: trio.Nursery, redis_url: str) -> ConsoleGateway:
    gw = await start_priced_console(nursery, redis_url)
    await send_traffic(gw)
    return gw


def number(text: str) -> float:
    """A figure as the page shows it ("1,234", "$0.000123") as a number."""
    return float(text.strip().lstrip("$").replace(",", ""))


def table_rows(page: Page, table: str) -> dict[str, list[float]]:
    """A usage table's rows: the row header's data-value (or text) -> its figures."""
    rows: dict[str, list[float]] = {}
    for row in page.locator(f"#{table} tbody tr").all():
        value = row.get_attribute("data-value")
        name = row.locator("th").inner_text().strip() if value is None else value
        rows[name] = [number(cell) for cell in row.locator("td").all_inner_texts()]
    return rows


def api_rows(report: dict[str, Any], group: str) -> dict[str, list[float]]:
    """The same rows from the API's report."""
    return {row[group]: [row["requests"], round(row["cost_usd"], 6), row["prompt_tokens"],
                         row["completion_tokens"], row["errors"]] for row in report["data"]}


def read_download(page: Page, link: str) -> str:
    """Click a download link; the downloaded file's text."""
    with page.expect_download() as info:
        page.locator(link).click()
    return Path(info.value.path()).read_text()


async def test_the_page_shows_what_the_api_answers_and_its_csv_is_the_apis(
        used: ConsoleGateway) -> None:
    reports = {group: (await api_get(used, "/v1/admin/usage", group_by=group)).json()
               for group in ("day", "model", "project", "key", "identity")}
    totals = reports["model"]["totals"]
    assert totals["requests"] == 4 and totals["cost_usd"] > 0  # the refusal is not metered

    def scenario(page: Page) -> dict[str, Any]:
        sign_in(page, used.base_url, used.admin)
        page.get_by_role("navigation", name="Console").get_by_role("link", name="Usage").click()
        expect(page).to_have_url(re.compile(r"/console/usage$"))
        expect(page.locator("#usage-model")).to_be_visible()
        shot(page, "usage")
        seen: dict[str, Any] = {
            "totals": {name: number(page.locator(f'[data-total="{name}"]').inner_text())
                       for name in ("requests", "tokens", "cost", "errors")},
            "days": table_rows(page, "usage-day"),
            "chart_bars": page.locator("svg.chart rect.bar").count(),
            "chart_titles": page.locator("svg.chart rect.bar title").all_text_contents(),
        }
        for group in ("model", "project", "key", "identity"):
            seen[group] = table_rows(page, f"usage-{group}")
        link = page.locator('a[href*="group_by=model"]')
        seen["csv_query"] = parse_qs(urlsplit(link.get_attribute("href") or "").query)
        seen["csv"] = read_download(page, 'a[href*="group_by=model"]')
        seen["day_csv"] = read_download(page, 'a[href*="group_by=day"]')
        return seen

    seen = await browse(scenario)
    assert seen["totals"] == {"requests": totals["requests"],
                              "tokens": totals["prompt_tokens"] + totals["completion_tokens"],
                              "cost": round(totals["cost_usd"], 6), "errors": totals["errors"]}
    for group in ("model", "project", "key", "identity"):
        assert seen[group] == api_rows(reports[group], group), group
    assert set(seen["model"]) == {"echo", "solo"}
    assert set(seen["identity"]) == {"ada", "bob", "carol"}
    assert seen["key"].keys() == {used.key_ids["member"], used.key_ids["admin"]}
    [today] = reports["day"]["data"]
    assert seen["days"] == {today["day"]: [
        today["requests"], round(today["cost_usd"], 6),
        today["prompt_tokens"] + today["completion_tokens"]]}
    # The chart has a bar per day of the month so far; today's carries today's tokens.
    first = datetime.date.fromisoformat(reports["day"]["from"])
    last = datetime.date.fromisoformat(reports["day"]["to"])
    assert seen["chart_bars"] == (last - first).days + 1
    tokens = today["prompt_tokens"] + today["completion_tokens"]
    assert seen["chart_titles"][-1].endswith(f": {tokens:,} tokens")
    # The downloads are the API's CSV for the same range.
    assert seen["csv_query"] == {"from": [reports["model"]["from"]],
                                 "to": [reports["model"]["to"]], "group_by": ["model"]}
    api_csv = await api_get(used, "/v1/admin/usage.csv", group_by="model")
    assert seen["csv"] == api_csv.text and seen["csv"].count("\n") == 3
    assert seen["day_csv"] == (await api_get(used, "/v1/admin/usage.csv", group_by="day")).text


async def test_the_date_range_form_works_with_scripts_off(used: ConsoleGateway) -> None:
    today = datetime.datetime.now(datetime.UTC).date()
    report = (await api_get(used, "/v1/admin/usage", **{
        "from": (today - datetime.timedelta(days=6)).isoformat(), "to": today.isoformat()})).json()

    def scenario(page: Page) -> dict[str, Any]:
        sign_in(page, used.base_url, used.admin)
        page.goto(used.base_url + "/console/usage")
        form = page.get_by_role("form", name="Date range")
        form.get_by_label("From").fill("2025-01-01")
        form.get_by_label("To").fill("2025-01-31")
        form.get_by_role("button", name="Show").click()
        expect(page).to_have_url(re.compile(r"from=2025-01-01&to=2025-01-31"))
        empty = page.locator("#no-usage").inner_text()
        charts = page.locator("svg.chart").count()
        form.get_by_label("From").fill((today - datetime.timedelta(days=6)).isoformat())
        form.get_by_label("To").fill(today.isoformat())
        form.get_by_role("button", name="Show").click()
        expect(page.locator("#usage-model")).to_be_visible()
        expect(page.get_by_role("link", name="Last 7 days")).to_have_attribute("aria-current",
                                                                               "true")
        return {"empty": empty, "charts": charts, "bars": page.locator("svg.chart rect.bar").count(),
                "requests": number(page.locator('[data-total="requests"]').inner_text()),
                "csv": read_download(page, 'a[href*="group_by=identity"]')}

    seen = await browse(scenario, javascript=False)
    assert "No usage from 2025-01-01 to 2025-01-31" in seen["empty"]
    assert "Send a request with an access key of acme" in seen["empty"]
    assert seen["charts"] == 0
    assert seen["bars"] == 7 and seen["requests"] == report["totals"]["requests"] == 4
    assert seen["csv"] == (await api_get(used, "/v1/admin/usage.csv", **{
        "from": report["from"], "to": report["to"], "group_by": "identity"})).text


async def test_on_a_phone_the_page_fits(used: ConsoleGateway) -> None:
    def scenario(page: Page) -> tuple[int, int]:
        sign_in(page, used.base_url, used.admin)
        page.goto(used.base_url + "/console/usage")
        expect(page.locator("svg.chart")).to_be_visible()
        shot(page, "usage-phone")
        chart = page.locator("svg.chart").bounding_box()
        assert chart is not None
        return int(chart["width"]), page.evaluate("document.documentElement.scrollWidth")

    chart_width, page_width = await browse(scenario, viewport=(390, 844))
    assert 300 < chart_width <= 390 and page_width <= 390


async def test_a_member_is_refused_and_another_org_sees_none_of_it(used: ConsoleGateway) -> None:
    def scenario(page: Page) -> dict[str, Any]:
        statuses = {}
        sign_in(page, used.base_url, used.member)
        for path in ("/console/usage", "/console/usage.csv"):
            response = page.goto(used.base_url + path)
            assert response is not None
            statuses[path] = response.status
        refusal = page.get_by_role("alert").inner_text()
        page.get_by_role("button", name="Sign out").click()
        sign_in(page, used.base_url, used.other)
        page.goto(used.base_url + "/console/usage")
        empty = page.locator("#no-usage").inner_text()
        named = page.goto(used.base_url + "/console/usage?org=acme")
        assert named is not None
        csv = page.request.get(used.base_url + "/console/usage.csv?group_by=model")
        return {"statuses": statuses, "refusal": refusal, "empty": empty,
                "named": named.status, "named_text": page.get_by_role("alert").inner_text(),
                "csv": csv.text(), "tables": page.locator("table").count()}

    seen = await browse(scenario)
    assert seen["statuses"] == {"/console/usage": 403, "/console/usage.csv": 403}
    assert "this page is for admin keys" in seen["refusal"]
    assert "No usage from" in seen["empty"] and "access key of globex" in seen["empty"]
    assert seen["named"] == 403 and seen["tables"] == 0
    assert seen["named_text"] == "this key manages organization 'globex' only"
    assert seen["csv"] == "model,requests,prompt_tokens,completion_tokens,cost_usd,errors," \
                          "unpriced_requests\n"


async def test_the_operator_picks_the_org(used: ConsoleGateway) -> None:
    report = (await api_get(used, "/v1/admin/usage", group_by="model")).json()

    def scenario(page: Page) -> dict[str, float]:
        sign_in(page, used.base_url, used.operator)
        page.goto(used.base_url + "/console/usage?org=globex")
        expect(page.locator("#no-usage")).to_contain_text("globex")
        page.get_by_label("Organization").select_option("acme")  # scripts submit the picker
        expect(page).to_have_url(re.compile(r"org=acme"))
        return {name: values[0] for name, values in table_rows(page, "usage-model").items()}

    assert await browse(scenario) == {row["model"]: row["requests"] for row in report["data"]}


@pytest.mark.parametrize(("query", "status", "words"), [
    ("from=2026-13-45", 422, "“2026-13-45” is not a date: write the `from` day as YYYY-MM-DD"),
    ("to=yesterday", 422, "“yesterday” is not a date: write the `to` day as YYYY-MM-DD"),
    ("from=2026-02-10&to=2026-02-01", 400, "`from` (2026-02-10) is after `to` (2026-02-01)"),
    ("from=2024-01-01&to=2026-01-01", 400, "is over 366 days; ask for it in parts"),
])
async def test_a_bad_range_is_a_page_in_words(console_gateway: ConsoleGateway, query: str,
                                              status: int, words: str) -> None:
    def scenario(page: Page) -> tuple[int, str]:
        sign_in(page, console_gateway.base_url, console_gateway.admin)
        response = page.goto(console_gateway.base_url + "/console/usage?" + query)
        assert response is not None
        return response.status, page.get_by_role("alert").inner_text()

    got_status, text = await browse(scenario, javascript=False)
    assert got_status == status and words in text


def test_the_chart_escapes_its_labels_and_scales_to_the_tallest_bar() -> None:
    svg = str(bar_chart([("<script>", 50), ("b&c", 100), ("zero", 0)], label='"x" <y>',
                        unit="tokens"))
    assert "<script>" not in svg and "&lt;script&gt;: 50 tokens" in svg
    assert "b&amp;c: 100 tokens" in svg and 'aria-label="&#34;x&#34; &lt;y&gt;"' in svg
    heights = [float(found) for found in re.findall(r'<rect[^>]* height="([0-9.]+)"', svg)]
    assert len(heights) == 3 and heights[1] == 2 * heights[0] and heights[2] == 0
    assert bar_chart([], label="none").count("<rect") == 0
