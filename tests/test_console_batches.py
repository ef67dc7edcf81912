"""The console's Batches page, in headless Chromium: batches made with the openai SDK show
with the status and counts `batches.retrieve` gives, a progress bar, pages, and cancel."""

from __future__ import annotations

import re
from typing import Any

import httpx
import openai
import trio
from playwright.sync_api import Locator, Page, expect

from ingress.keys import KeyStore
from tests.batchfiles import batch_gateway, jsonl, line
from tests.browser import browse, shot, sign_in
from tests.consoles import ConsoleGateway
from tests.test_batch_e2e import poll
from tests.test_console_session import csrf_of, http_sign_in


async def start_batch(client: openai.AsyncOpenAI, lines: int) -> Any:
    """Upload `lines` chat lines and create a batch of them, as a user does."""
    upload = await client.files.create(file=("in.jsonl", jsonl([line(n) for n in range(lines)])),
                                       purpose="batch")
    return await client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                       completion_window="24h")


def row(page: Page, batch_id: str) -> Locator:
    return page.locator(f'tr[data-batch="{batch_id}"]')


async def test_a_completed_batch_shows_its_status_counts_and_a_full_bar(
        console_gateway: ConsoleGateway) -> None:
    gw = console_gateway
    client = gw.client()  # the member key of acme runs batches; its admin watches them
    made = await start_batch(client, 5)
    done = await poll(client, made.id)
    assert done.status == "completed"
    counts = done.request_counts

    def scenario(page: Page) -> None:
        sign_in(page, gw.base_url, gw.admin)
        page.get_by_role("link", name="Batches").click()
        found = row(page, done.id)
        expect(found.locator(".state")).to_have_class(re.compile(r"\bstate completed\b"))
        expect(found.locator(".state")).to_have_text("completed")
        expect(found.locator("[data-counts]")).to_have_attribute(
            "data-counts", f"{counts.completed}/{counts.failed}/{counts.total}")
        expect(found.locator('[data-count="total"]')).to_have_text(str(counts.total))
        bar = found.get_by_role("progressbar")
        expect(bar).to_have_class(re.compile(r"\bpct-100\b"))
        expect(bar).to_have_attribute("aria-valuenow", str(counts.total))
        width = bar.evaluate("el => el.firstElementChild.getBoundingClientRect().width")
        assert width == bar.evaluate("el => el.getBoundingClientRect().width") > 0
        expect(found.locator('[data-file="output"]')).to_have_text(done.output_file_id)
        expect(found.locator("[data-endpoint]")).to_have_text("/v1/chat/completions")
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280
        expect(found.get_by_role("button", name="Cancel")).to_have_count(0)  # it has ended
        shot(page, "batches")

    await browse(scenario)

    def other_org(page: Page) -> None:
        sign_in(page, gw.base_url, gw.other)
        page.goto(gw.base_url + "/console/batches")
        expect(page.locator("tr[data-batch]")).to_have_count(0)
        expect(page.locator('[data-empty="batches"]')).to_contain_text("No batches yet")

    await browse(other_org)


async def test_the_empty_state_says_how_to_start_a_batch(console_gateway: ConsoleGateway) -> None:
    gw = console_gateway

    def scenario(page: Page) -> None:
        sign_in(page, gw.base_url, gw.admin)
        page.goto(gw.base_url + "/console/batches")
        empty = page.locator('[data-empty="batches"]')
        expect(empty).to_contain_text("No batches yet")
        code = page.locator("#batch-start")
        expect(code).to_contain_text('client.files.create(file=open("requests.jsonl", "rb"), '
                                     'purpose="batch")')
        expect(code).to_contain_text("client.batches.create(input_file_id=file.id")
        expect(empty).to_contain_text(f'base_url="{gw.base_url}/v1"')
        expect(empty.get_by_role("button", name="Copy")).to_be_visible()
        shot(page, "batches-empty")

    await browse(scenario)

    def member(page: Page) -> int:
        sign_in(page, gw.base_url, gw.member)
        response = page.goto(gw.base_url + "/console/batches")
        assert response is not None
        return response.status

    assert await browse(member) == 403


async def test_pages_and_cancel_with_scripts_off(nursery: trio.Nursery, redis_url: str) -> None:
    gw = await batch_gateway(nursery, redis_url)  # no workers: batches stay validating
    _, admin = await KeyStore(gw.redis).create("acme", name="acme-admin", role="admin")
    client = gw.client()
    made = [(await start_batch(client, 2)).id for _ in range(3)]  # oldest first
    base = gw.base_url

    def scenario(page: Page) -> None:
        sign_in(page, base, admin)
        page.goto(base + "/console/batches?limit=2")
        expect(page.locator("tr[data-batch]")).to_have_count(2)
        expect(row(page, made[2])).to_be_visible()
        expect(row(page, made[1])).to_be_visible()
        expect(row(page, made[2]).get_by_role("progressbar")).to_have_class(
            re.compile(r"\bpct-0\b"))
        page.get_by_role("link", name="Older batches").click()
        expect(page).to_have_url(re.compile(rf"after={made[1]}"))
        expect(page.locator("tr[data-batch]")).to_have_count(1)
        expect(page.get_by_role("link", name="Older batches")).to_have_count(0)
        first = row(page, made[0])
        expect(first.locator(".state")).to_have_text("validating")
        first.get_by_role("button", name="Cancel").click()  # no script asks to confirm
        expect(page.get_by_role("status")).to_contain_text(f"Cancelling batch {made[0]}")
        expect(row(page, made[0]).locator(".state")).to_have_text("cancelling")
        page.get_by_role("link", name="Newest").click()
        expect(page.locator("tr[data-batch]")).to_have_count(2)

    await browse(scenario, javascript=False)
    assert (await client.batches.retrieve(made[0])).status == "cancelling"
    assert (await client.batches.retrieve(made[1])).status == "validating"

    async with httpx.AsyncClient(base_url=base, trust_env=False) as http:
        assert (await http_sign_in(http, admin)).status_code == 303
        shown = await http.get("/console/batches")
        csrf = csrf_of(shown.text)
        # Without the session's token: refused, the batch runs on.
        refused = await http.post(f"/console/batches/{made[1]}/cancel", data={})
        assert refused.status_code == 403
        assert (await client.batches.retrieve(made[1])).status == "validating"
        # Cancelling one that is cancelling already: it stays so (as the API answers).
        again = await http.post(f"/console/batches/{made[0]}/cancel", data={"csrf": csrf})
        assert again.status_code == 303
        # Another org's batch: 404, as one that does not exist.
        _, rival = await KeyStore(gw.redis).create("rival", name="rival-admin", role="admin")
        async with httpx.AsyncClient(base_url=base, trust_env=False) as other:
            assert (await http_sign_in(other, rival)).status_code == 303
            page = await other.get("/console/batches")
            assert made[1] not in page.text
            theirs = await other.post(f"/console/batches/{made[1]}/cancel",
                                      data={"csrf": csrf_of(page.text)})
            assert theirs.status_code == 404 and "No batch found" in theirs.text
        assert (await client.batches.retrieve(made[1])).status == "validating"
        bad = await http.get("/console/batches?limit=500")
        assert bad.status_code == 400 and "1 to 100" in bad.text
