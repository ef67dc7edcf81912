"""The console's Access keys page: create (the secret once), revoke, rotate, limits, who
may see and change what, CSRF; in headless Chromium, over HTTP, and with the openai SDK
calling the gateway with the keys the page makes."""

from __future__ import annotations

import re
from typing import Any

import httpx
import openai
import trio
from playwright.sync_api import Page, expect

from tests.browser import browse, shot, sign_in
from tests.consoles import ConsoleGateway, start_console_gateway
from tests.test_console_session import csrf_of, http_sign_in

SECRET = re.compile(r"^\S{20,}$")


async def chat_status(gw: ConsoleGateway, secret: str) -> int:
    """The status of one chat completion with `secret` (model "echo")."""
    client = gw.client(api_key=secret)
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model="echo", messages=[{"role": "user", "content": "hi"}])
        return raw.status_code
    except openai.APIStatusError as error:
        return error.status_code
    finally:
        await client.close()


async def seconds_until_refused(gw: ConsoleGateway, secret: str, within: float = 1.0) -> float:
    """How long until `secret` gets 401 (polled; fails the test after `within` seconds)."""
    start = trio.current_time()
    with trio.fail_after(within):
        while (status := await chat_status(gw, secret)) != 401:
            assert status == 200, status
            await trio.sleep(0.02)
    return trio.current_time() - start


async def admin_get_key(gw: ConsoleGateway, key_id: str) -> dict[str, Any]:
    """A key's record as the admin API answers it (GET /v1/admin/keys/<id>)."""
    async with httpx.AsyncClient(base_url=gw.base_url, trust_env=False) as http:
        response = await http.get(f"/v1/admin/keys/{key_id}",
                                  headers={"authorization": f"Bearer {gw.admin}"})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def acme_keys(gw: ConsoleGateway) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=gw.base_url, trust_env=False) as http:
        response = await http.get("/v1/admin/keys", headers={"authorization": f"Bearer {gw.admin}"})
    assert response.status_code == 200, response.text
    return response.json()["data"]  # type: ignore[no-any-return]


def create_in_browser(page: Page, name: str, project: str = "", role: str = "member") -> str:
    """Fill the create form, submit it; the secret the answer shows."""
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Project").fill(project)
    page.get_by_label("Role").select_option(role)
    page.get_by_role("button", name="Create key").click()
    secret = page.locator(".secret")
    expect(secret).to_have_count(1)
    expect(page.get_by_role("status").filter(has_text="will not be shown again")).to_be_visible()
    text = secret.inner_text().strip()
    assert SECRET.match(text), text
    return text


def key_id_of(page: Page, name: str) -> str:
    row = page.locator("tr[data-key]").filter(has_text=name)
    expect(row).to_have_count(1)
    key_id = row.get_attribute("data-key")
    assert key_id and key_id.startswith("key_")
    return key_id


async def create_use_revoke(gw: ConsoleGateway) -> float:
    """Create a key in the browser, call with it, revoke it in the browser; how long the
    revocation took to refuse the secret."""
    base = gw.base_url

    def scenario(page: Page) -> float:
        sign_in(page, base, gw.admin)
        page.get_by_role("link", name="Access keys").click()
        expect(page.get_by_role("heading", name="Access keys")).to_be_visible()
        shot(page, "keys")
        secret = create_in_browser(page, "billing-service", project="proj")
        shot(page, "keys-created")
        # The copy button (scripts on) copies exactly the secret.
        page.get_by_role("button", name="Copy").click()
        expect(page.get_by_role("button", name="Copied")).to_be_visible()
        assert page.evaluate("navigator.clipboard.readText()") == secret
        assert trio.from_thread.run(chat_status, gw, secret) == 200  # works at once
        key_id = key_id_of(page, "billing-service")

        page.goto(base + "/console/keys")  # the list again: the secret is gone for good
        expect(page.locator(".secret")).to_have_count(0)
        assert secret not in page.content()
        row = page.locator(f'tr[data-key="{key_id}"]')
        expect(row).to_contain_text("proj")
        expect(row).to_contain_text("member")
        expect(row.locator(".state")).to_have_text("active")

        assert trio.from_thread.run(chat_status, gw, secret) == 200  # cached now, if it caches
        row.get_by_role("button", name="Revoke").click()  # confirm() is accepted
        expect(page.get_by_role("status")).to_contain_text("Key revoked")
        waited: float = trio.from_thread.run(seconds_until_refused, gw, secret)
        expect(page.locator(f'tr[data-key="{key_id}"] .state')).to_have_text("revoked")
        expect(page.locator(f'tr[data-key="{key_id}"]').get_by_role("button", name="Revoke")
               ).to_have_count(0)
        return waited

    return await browse(scenario, clipboard=True)


async def test_a_created_key_shows_its_secret_once_works_and_revoking_stops_it(
        console_gateway: ConsoleGateway) -> None:
    assert await create_use_revoke(console_gateway) < 1.0


async def test_revocation_reaches_a_gateway_that_caches_keys_for_a_minute(
        nursery: trio.Nursery, redis_url: str) -> None:
    gw = await start_console_gateway(nursery, redis_url, limits={"key_cache_s": 60.0})
    assert gw.config.limits.key_cache_s == 60.0
    assert await create_use_revoke(gw) < 1.0


async def test_rotate_and_limits_on_the_key_page(console_gateway: ConsoleGateway) -> None:
    gw = console_gateway
    base = gw.base_url

    def scenario(page: Page) -> tuple[str, str, str]:
        sign_in(page, base, gw.admin)
        page.goto(base + "/console/keys")
        old = create_in_browser(page, "rotating")
        key_id = key_id_of(page, "rotating")
        page.get_by_role("link", name="Manage rotating").click()
        expect(page).to_have_url(re.compile(rf"/console/keys/{key_id}$"))
        expect(page.get_by_role("heading", name="rotating")).to_be_visible()

        page.get_by_role("button", name="Rotate secret").click()
        expect(page.get_by_role("status").filter(has_text="Key rotated")).to_be_visible()
        new = page.locator(".secret").inner_text().strip()
        assert SECRET.match(new) and new != old

        # A value the API's Struct refuses: the form again, the reason in words, nothing set.
        page.get_by_label("Requests per minute").fill("lots")
        page.get_by_role("button", name="Save").click()
        expect(page.get_by_role("alert")).to_contain_text("whole number, 0 or more")
        expect(page.get_by_label("Requests per minute")).to_have_value("lots")
        assert page.locator(".secret").count() == 0

        page.get_by_label("Name", exact=True).fill("rotating-limited")
        page.get_by_label("Requests per minute").fill("60")
        page.get_by_label("Tokens per minute").fill("20000")
        page.get_by_label("Requests at once").fill("")
        page.get_by_label("Monthly budget (USD)").fill("12.5")
        page.get_by_role("button", name="Save").click()
        expect(page.get_by_role("status")).to_contain_text("Settings saved")
        expect(page.get_by_label("Requests per minute")).to_have_value("60")
        expect(page.get_by_label("Monthly budget (USD)")).to_have_value("12.5")
        expect(page.locator(".facts")).to_contain_text("60 rpm · 20,000 tpm · $12.50/month")
        shot(page, "keys-detail")
        return key_id, old, new

    key_id, old, new = await browse(scenario)
    assert await chat_status(gw, new) == 200
    assert await chat_status(gw, old) == 401
    record = await admin_get_key(gw, key_id)
    assert record["name"] == "rotating-limited"
    assert record["limits"] == {"rpm": 60, "tpm": 20000, "max_concurrent": None,
                                "monthly_budget_usd": 12.5}


async def test_the_create_flow_works_with_scripts_off(console_gateway: ConsoleGateway) -> None:
    gw = console_gateway
    base = gw.base_url

    def scenario(page: Page) -> str:
        sign_in(page, base, gw.admin)
        page.goto(base + "/console/keys")
        secret = create_in_browser(page, "no-script", role="admin")
        # Without scripts the copy button stays hidden (the secret is selectable text).
        expect(page.locator("button[data-copy]")).to_be_hidden()
        expect(page.locator(f'tr[data-key="{key_id_of(page, "no-script")}"]')).to_contain_text(
            "admin")
        return secret

    secret = await browse(scenario, javascript=False)
    assert await chat_status(gw, secret) == 200


async def test_bad_input_is_said_in_words_on_the_form(console_gateway: ConsoleGateway) -> None:
    base = console_gateway.base_url
    before = len(await acme_keys(console_gateway))

    def scenario(page: Page) -> list[int]:
        sign_in(page, base, console_gateway.admin)
        page.goto(base + "/console/keys")
        statuses = []
        for project, words in (("not a project", "A project id is 1-64 letters"),
                               ("ghost", "has no project 'ghost'")):
            page.get_by_label("Name", exact=True).fill("keeps-its-name")
            page.get_by_label("Project").fill(project)
            with page.expect_response(lambda r: r.request.method == "POST") as answer:
                page.get_by_role("button", name="Create key").click()
            statuses.append(answer.value.status)
            expect(page.get_by_role("alert")).to_contain_text(words)
            expect(page.get_by_label("Name", exact=True)).to_have_value("keeps-its-name")
            expect(page.locator(".secret")).to_have_count(0)
        return statuses

    assert await browse(scenario) == [422, 404]
    assert len(await acme_keys(console_gateway)) == before


async def test_another_orgs_admin_never_sees_or_revokes_acme_keys(
        console_gateway: ConsoleGateway) -> None:
    gw = console_gateway
    acme_admin = gw.key_ids["admin"]

    def scenario(page: Page) -> None:
        sign_in(page, gw.base_url, gw.other)
        page.goto(gw.base_url + "/console/keys")
        expect(page.locator("tr[data-key]")).to_have_count(1)  # its own key only
        expect(page.locator("main")).to_contain_text("globex-admin")
        content = page.content()
        assert "acme-admin" not in content and acme_admin not in content
        assert gw.key_ids["member"] not in content

    await browse(scenario)
    async with httpx.AsyncClient(base_url=gw.base_url, trust_env=False) as http:
        assert (await http_sign_in(http, gw.other)).status_code == 303
        listing = await http.get("/console/keys")
        csrf = csrf_of(listing.text)
        assert (await http.get("/console/keys?org=acme")).status_code == 403
        assert (await http.get(f"/console/keys/{acme_admin}")).status_code == 404
        for action in ("revoke", "rotate", "settings"):
            refused = await http.post(f"/console/keys/{acme_admin}/{action}",
                                      data={"csrf": csrf, "rpm": "1"})
            assert refused.status_code == 404, (action, refused.text)
            assert "no key" in refused.text
    record = await admin_get_key(gw, acme_admin)
    assert not record["revoked"] and record["limits"]["rpm"] is None
    assert await chat_status(gw, gw.member) == 200


async def test_a_member_is_refused(console_gateway: ConsoleGateway) -> None:
    gw = console_gateway
    async with httpx.AsyncClient(base_url=gw.base_url, trust_env=False) as http:
        assert (await http_sign_in(http, gw.member)).status_code == 303
        models = await http.get("/console/models")
        csrf = csrf_of(models.text)
        shown = await http.get("/console/keys")
        assert shown.status_code == 403
        assert "this page is for admin keys" in shown.text
        made = await http.post("/console/keys", data={"csrf": csrf, "role": "admin"})
        assert made.status_code == 403
        revoked = await http.post(f"/console/keys/{gw.key_ids['admin']}/revoke",
                                  data={"csrf": csrf})
        assert revoked.status_code == 403
    assert len(await acme_keys(gw)) == 2
    assert not (await admin_get_key(gw, gw.key_ids["admin"]))["revoked"]


async def test_posts_without_the_csrf_token_are_refused_and_change_nothing(
        console_gateway: ConsoleGateway) -> None:
    gw = console_gateway
    member = gw.key_ids["member"]
    async with httpx.AsyncClient(base_url=gw.base_url, trust_env=False) as http:
        assert (await http_sign_in(http, gw.admin)).status_code == 303
        for token in ({}, {"csrf": "forged"}):
            made = await http.post("/console/keys", data={**token, "role": "member",
                                                          "name": "sneaky"})
            assert made.status_code == 403, made.text
            assert "sk-" not in made.text and "sneaky" not in made.text
            for action in ("revoke", "rotate", "settings"):
                refused = await http.post(f"/console/keys/{member}/{action}",
                                          data={**token, "rpm": "1"})
                assert refused.status_code == 403, (action, refused.text)
        # With the token the same post works: the test above can tell the difference.
        page = await http.get("/console/keys")
        done = await http.post(f"/console/keys/{member}/settings",
                               data={"csrf": csrf_of(page.text), "name": "test", "rpm": "7"})
        assert done.status_code == 303
        assert done.headers["location"] == f"/console/keys/{member}?done=saved"
    keys = await acme_keys(gw)
    assert sorted(k["name"] for k in keys) == ["acme-admin", "test"]
    record = await admin_get_key(gw, member)
    assert not record["revoked"] and record["limits"]["rpm"] == 7
    assert await chat_status(gw, gw.member) == 200  # not rotated


async def test_names_are_escaped(console_gateway: ConsoleGateway) -> None:
    gw = console_gateway
    async with httpx.AsyncClient(base_url=gw.base_url, trust_env=False) as http:
        assert (await http_sign_in(http, gw.admin)).status_code == 303
        page = await http.get("/console/keys")
        made = await http.post("/console/keys", data={"csrf": csrf_of(page.text), "role": "member",
                                                      "name": "<script>alert(1)</script>"})
        assert made.status_code == 201
        assert "<script>alert(1)</script>" not in made.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in made.text
        secret = re.search(r'<code class="secret" id="new-secret">([^<]+)</code>', made.text)
        assert secret is not None
        again = await http.get("/console/keys")
        assert secret.group(1) not in again.text
        assert made.headers["cache-control"] == "no-store"


async def test_the_operator_picks_acme_and_globex(console_gateway: ConsoleGateway) -> None:
    gw = console_gateway

    def scenario(page: Page) -> None:
        sign_in(page, gw.base_url, gw.operator)
        page.goto(gw.base_url + "/console/keys")
        picker = page.get_by_label("Organization", exact=True).first
        picker.select_option("acme")  # scripts submit the picker on change
        expect(page).to_have_url(re.compile(r"/console/keys\?org=acme$"))
        expect(page.locator("tr[data-key]")).to_have_count(2)
        expect(page.locator("main")).to_contain_text("acme-admin")
        expect(page.locator("main")).not_to_contain_text("globex-admin")

        page.get_by_label("Organization", exact=True).first.select_option("globex")
        expect(page).to_have_url(re.compile(r"/console/keys\?org=globex$"))
        expect(page.locator("tr[data-key]")).to_have_count(1)
        expect(page.locator("main")).to_contain_text("globex-admin")
        # A key made here belongs to the org shown.
        expect(page.locator("#new-org")).to_have_value("globex")
        create_in_browser(page, "globex-batch")
        expect(page.locator("tr[data-key]")).to_have_count(2)

        # An org with no keys yet: the empty state says what to do.
        page.goto(gw.base_url + "/console/keys?org=newco")
        expect(page.locator(".empty")).to_contain_text("No access keys in newco yet")
        expect(page.locator(".empty")).to_contain_text("Create one below")

    await browse(scenario)
    async with httpx.AsyncClient(base_url=gw.base_url, trust_env=False) as http:
        listed = await http.get("/v1/admin/keys", params={"org": "globex"},
                                headers={"authorization": f"Bearer {gw.operator}"})
    assert sorted(k["name"] for k in listed.json()["data"]) == ["globex-admin", "globex-batch"]


async def test_the_page_fits_a_phone(console_gateway: ConsoleGateway) -> None:
    gw = console_gateway

    def scenario(page: Page) -> int:
        sign_in(page, gw.base_url, gw.admin)
        page.goto(gw.base_url + "/console/keys")
        expect(page.locator("tr[data-key]")).to_have_count(2)
        expect(page.locator("tr[data-key]").first.get_by_role("link", name="Manage")
               ).to_be_visible()
        shot(page, "keys-phone")
        return int(page.evaluate("document.documentElement.scrollWidth"))

    assert await browse(scenario, viewport=(390, 844)) <= 390
