"""The console's Requests page in headless Chromium: it lists what `/v1/admin/requests`
answers, newest first; each filter narrows it as the API's does; pages follow the cursor;
scripts off works; only the org's admin (or the operator) sees the org's log."""

from __future__ import annotations

import re
from typing import Any

import pytest
import trio
from playwright.sync_api import Page, expect

from tests.browser import browse, shot, sign_in
from tests.consoles import ConsoleGateway
from tests.test_console_usage import TRAFFIC, api_get, send_traffic, start_priced_console


async def wait_logged(gw: ConsoleGateway, count: int) -> list[dict[str, Any]]:
    """The org's log once it holds `count` records (it is written off the request path)."""
    with trio.fail_after(10):
        while True:
            records = (await api_get(gw, "/v1/admin/requests")).json()["data"]
            if len(records) >= count:
                return records
            await trio.sleep(0.05)


@pytest.fixture
async def logged(nursery: trio.Nursery, redis_url: str) -> ConsoleGateway:
    gw = await start_priced_console(nursery, redis_url)
    await send_traffic(gw)
    await wait_logged(gw, len(TRAFFIC))
    return gw


async def api_ids(gw: ConsoleGateway, **filters: str) -> list[str]:
    """The ids `/v1/admin/requests` answers for `filters`, newest first."""
    return [record["id"] for record in
            (await api_get(gw, "/v1/admin/requests", **filters)).json()["data"]]


def shown_ids(page: Page) -> list[str]:
    """The ids of the rows the page shows, top to bottom."""
    page.wait_for_load_state()
    return [row.get_attribute("data-id") or "" for row in page.locator("#requests tbody tr").all()]


async def test_the_page_lists_the_log_and_each_filter_narrows_it(logged: ConsoleGateway) -> None:
    everything = (await api_get(logged, "/v1/admin/requests")).json()["data"]
    admin_key = logged.key_ids["admin"]
    filters = {"status": "4xx", "model": "solo", "key": admin_key, "identity": "ada",
               "thread": "t-2"}
    expected = {name: await api_ids(logged, **{name: value}) for name, value in filters.items()}

    def scenario(page: Page) -> dict[str, Any]:
        sign_in(page, logged.base_url, logged.admin)
        page.get_by_role("navigation", name="Console").get_by_role("link", name="Requests").click()
        expect(page.locator("#requests")).to_be_visible()
        shot(page, "requests")
        seen: dict[str, Any] = {"all": shown_ids(page),
                                "solo_row": page.locator("#requests tbody tr", has_text="solo")
                                .locator("td").all_inner_texts()}
        form = page.get_by_role("form", name="Filters")
        for name, value in filters.items():
            page.goto(logged.base_url + "/console/requests")
            if name in ("status", "key"):
                form.locator(f"select#{name}").select_option(value)
            else:
                form.locator(f"input#{name}").fill(value)
            form.get_by_role("button", name="Filter").click()
            expect(page).to_have_url(re.compile(rf"[?&]{name}="))
            seen[name] = shown_ids(page)
        page.get_by_role("link", name="Clear filters").click()
        seen["cleared"] = shown_ids(page)
        page.goto(logged.base_url + "/console/requests?status=400")  # one code, not a class
        seen["400"] = shown_ids(page)
        seen["400_selected"] = form.get_by_label("Status").input_value()
        return seen

    seen = await browse(scenario)
    assert seen["all"] == [record["id"] for record in everything] and len(seen["all"]) == 5
    assert seen["cleared"] == seen["all"]
    assert seen["400"] == expected["status"] and seen["400_selected"] == "400"
    for name in filters:
        assert seen[name] == expected[name], name
        assert 0 < len(seen[name]) < len(everything), name
    solo = next(record for record in everything if record["model"] == "solo")
    time, status, model, provider, key, identity, thread, tokens, cost, latency = seen["solo_row"]
    assert (status, model, provider, key, identity, thread) == ("200", "solo", "spare", "test",
                                                                "bob", "t-2")
    assert time == solo["time"].replace("T", " ")[:19]
    assert tokens == f"{solo['prompt_tokens']} / {solo['completion_tokens']}"
    assert cost == f"${solo['cost_usd']:.6f}" and solo["cost_usd"] > 0
    assert latency.endswith(" ms")


async def test_filters_and_pages_work_with_scripts_off(logged: ConsoleGateway) -> None:
    everything = await api_ids(logged)
    ada = await api_ids(logged, identity="ada")

    def scenario(page: Page) -> dict[str, Any]:
        sign_in(page, logged.base_url, logged.admin)
        page.goto(logged.base_url + "/console/requests?limit=2")
        pages = [shown_ids(page)]
        while page.get_by_role("link", name="Next page (older requests)").count():
            page.get_by_role("link", name="Next page (older requests)").click()
            pages.append(shown_ids(page))
        newest = page.get_by_role("link", name="Newest requests").count()
        page.goto(logged.base_url + "/console/requests")
        form = page.get_by_role("form", name="Filters")
        form.get_by_label("Identity").fill("ada")
        form.get_by_label("Status").select_option("2xx")
        form.get_by_role("button", name="Filter").click()
        filtered = shown_ids(page)
        form.get_by_label("Identity").fill("nobody")
        form.get_by_role("button", name="Filter").click()
        return {"pages": pages, "newest": newest, "filtered": filtered,
                "empty": page.locator("#no-requests").inner_text()}

    seen = await browse(scenario, javascript=False)
    assert [len(ids) for ids in seen["pages"]] == [2, 2, 1]
    assert [record for ids in seen["pages"] for record in ids] == everything
    assert seen["newest"] == 1
    assert seen["filtered"] == ada and len(ada) == 2
    assert "No requests match these filters" in seen["empty"]


async def test_on_a_phone_the_table_scrolls_inside_the_page(logged: ConsoleGateway) -> None:
    def scenario(page: Page) -> int:
        sign_in(page, logged.base_url, logged.admin)
        page.goto(logged.base_url + "/console/requests")
        expect(page.locator("#requests")).to_be_visible()
        shot(page, "requests-phone")
        return int(page.evaluate("document.documentElement.scrollWidth"))

    assert await browse(scenario, viewport=(390, 844)) <= 390


async def test_a_member_is_refused_and_another_org_sees_none_of_it(logged: ConsoleGateway) -> None:
    def scenario(page: Page) -> dict[str, Any]:
        sign_in(page, logged.base_url, logged.member)
        refused = page.goto(logged.base_url + "/console/requests")
        assert refused is not None
        refusal = page.get_by_role("alert").inner_text()
        page.get_by_role("button", name="Sign out").click()
        sign_in(page, logged.base_url, logged.other)
        page.goto(logged.base_url + "/console/requests")
        return {"status": refused.status, "refusal": refusal,
                "empty": page.locator("#no-requests").inner_text(),
                "rows": page.locator("#requests tbody tr").count()}

    seen = await browse(scenario)
    assert seen["status"] == 403 and "this page is for admin keys" in seen["refusal"]
    assert "No requests logged yet" in seen["empty"] and "access key of globex" in seen["empty"]
    assert seen["rows"] == 0


async def test_the_operator_sees_the_org_it_picks(logged: ConsoleGateway) -> None:
    everything = await api_ids(logged)

    def scenario(page: Page) -> list[str]:
        sign_in(page, logged.base_url, logged.operator)
        page.goto(logged.base_url + "/console/requests?org=globex")
        expect(page.locator("#no-requests")).to_be_visible()
        page.get_by_label("Organization").select_option("acme")
        page.get_by_role("button", name="Show").click()
        expect(page).to_have_url(re.compile(r"org=acme"))
        return shown_ids(page)

    assert await browse(scenario, javascript=False) == everything


@pytest.mark.parametrize(("query", "status", "words"), [
    ("from=2026-02-30", 422, "“2026-02-30” is not a date: write the `from` day as YYYY-MM-DD"),
    ("from=2026-02-10&to=2026-02-01", 400, "`from` (2026-02-10) is after `to` (2026-02-01)"),
    ("status=abc", 422, "invalid query parameter"),
])
async def test_a_bad_query_is_a_page_in_words(console_gateway: ConsoleGateway, query: str,
                                              status: int, words: str) -> None:
    def scenario(page: Page) -> tuple[int, str]:
        sign_in(page, console_gateway.base_url, console_gateway.admin)
        response = page.goto(console_gateway.base_url + "/console/requests?" + query)
        assert response is not None
        return response.status, page.get_by_role("alert").inner_text()

    got_status, text = await browse(scenario, javascript=False)
    assert got_status == status and words in text
