"""Signing in and out of the console, roles, CSRF: in headless Chromium and over HTTP."""

from __future__ import annotations

import re

import httpx
import pytest
import trio
from playwright.sync_api import Page, expect

from ingress.keys import KeyStore
from tests.browser import browse, shot, sign_in
from tests.conftest import make_config, start_gateway
from tests.consoles import ConsoleGateway

ADMIN_PAGES = ["/console/keys", "/console/usage", "/console/requests", "/console/limits",
               "/console/batches"]


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the form carries no csrf field"
    return found.group(1)


async def http_sign_in(http: httpx.AsyncClient, secret: str) -> httpx.Response:
    """Sign in as the form does (GET the form for its token, POST it back)."""
    form = await http.get("/console/sign-in")
    return await http.post("/console/sign-in", data={"csrf": csrf_of(form.text), "key": secret})


async def test_sign_in_lands_on_models_and_sign_out_ends_the_session(
        console_gateway: ConsoleGateway) -> None:
    base = console_gateway.base_url

    def scenario(page: Page) -> None:
        page.goto(base + "/")  # / leads to the console, which asks to sign in
        expect(page).to_have_url(re.compile(r"/console/sign-in"))
        shot(page, "sign-in")
        sign_in(page, base, console_gateway.admin)
        expect(page).to_have_url(re.compile(r"/console/models$"))
        expect(page.get_by_role("navigation", name="Console")).to_contain_text("Access keys")
        page.get_by_role("button", name="Sign out").click()
        expect(page).to_have_url(re.compile(r"/console/sign-in"))
        page.goto(base + "/console/keys")  # the session is gone: back to the sign-in form
        expect(page).to_have_url(re.compile(r"/console/sign-in\?next=/console/keys"))

    await browse(scenario)


async def test_a_wrong_key_gets_a_clear_message(console_gateway: ConsoleGateway) -> None:
    def scenario(page: Page) -> None:
        sign_in(page, console_gateway.base_url, "sk-not-a-real-key")
        expect(page.get_by_role("alert")).to_have_text(
            "That access key is not valid, or it has been revoked.")
        expect(page).to_have_url(re.compile(r"/console/sign-in"))

    await browse(scenario)


async def test_sign_in_works_with_scripts_off_and_returns_to_the_page_asked_for(
        console_gateway: ConsoleGateway) -> None:
    base = console_gateway.base_url

    def scenario(page: Page) -> None:
        page.goto(base + "/console/usage")
        expect(page).to_have_url(re.compile(r"/console/sign-in\?next="))
        page.get_by_label("Access key").fill(console_gateway.admin)
        page.get_by_role("button", name="Sign in").click()
        expect(page).to_have_url(re.compile(r"/console/usage$"))

    await browse(scenario, javascript=False)


async def test_a_member_sees_models_only(console_gateway: ConsoleGateway) -> None:
    base = console_gateway.base_url

    def scenario(page: Page) -> list[int]:
        sign_in(page, base, console_gateway.member)
        nav = page.get_by_role("navigation", name="Console")
        expect(nav).to_have_text(re.compile(r"^\s*Models\s*$"))
        statuses = []
        for path in ADMIN_PAGES:
            response = page.goto(base + path)
            assert response is not None
            statuses.append(response.status)
            expect(page.get_by_role("alert")).to_contain_text("this page is for admin keys")
        return statuses

    assert await browse(scenario) == [403] * len(ADMIN_PAGES)


async def test_the_session_cookie_is_httponly_samesite_and_expires(
        console_gateway: ConsoleGateway) -> None:
    async with httpx.AsyncClient(base_url=console_gateway.base_url, trust_env=False) as http:
        response = await http_sign_in(http, console_gateway.admin)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/console/models"
    cookie = next(v for v in response.headers.get_list("set-cookie") if v.startswith("sb_console="))
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "samesite", "max-age", "path"} <= attributes
    assert "SameSite=Lax" in cookie and "Max-Age=28800" in cookie and "Path=/console" in cookie
    assert "secure" not in attributes  # served over plain http here; https adds Secure


async def test_posts_without_the_csrf_token_are_refused_and_change_nothing(
        console_gateway: ConsoleGateway) -> None:
    async with httpx.AsyncClient(base_url=console_gateway.base_url, trust_env=False) as http:
        # Signing in without the form's token (another site posting a key): refused.
        refused = await http.post("/console/sign-in", data={"key": console_gateway.admin})
        assert refused.status_code == 403
        assert "out of date or did not come from the console" in refused.text
        assert "sb_console=" not in refused.headers.get("set-cookie", "")
        assert (await http.get("/console/keys")).status_code == 303  # still signed out

        assert (await http_sign_in(http, console_gateway.admin)).status_code == 303
        page = await http.get("/console/keys")
        assert page.status_code == 200
        # Signing out without the token (a cross-site form): refused, the session lives.
        assert (await http.post("/console/sign-out", data={})).status_code == 403
        assert (await http.post("/console/sign-out", data={"csrf": "forged"})).status_code == 403
        assert (await http.get("/console/keys")).status_code == 200
        # With the session's token it works.
        done = await http.post("/console/sign-out", data={"csrf": csrf_of(page.text)})
        assert done.status_code == 303
        assert (await http.get("/console/keys")).status_code == 303


async def test_revoking_the_key_ends_its_console_sessions(console_gateway: ConsoleGateway) -> None:
    async with httpx.AsyncClient(base_url=console_gateway.base_url, trust_env=False) as http:
        assert (await http_sign_in(http, console_gateway.admin)).status_code == 303
        assert (await http.get("/console/models")).status_code == 200
        await KeyStore(console_gateway.redis).revoke(console_gateway.key_ids["admin"])
        gone = await http.get("/console/models")
        assert gone.status_code == 303
        assert gone.headers["location"].startswith("/console/sign-in")
        assert not await console_gateway.redis.keys("{sb}:console:session:*")


async def test_pages_are_not_cached_framed_or_scripted_from_elsewhere(
        console_gateway: ConsoleGateway) -> None:
    async with httpx.AsyncClient(base_url=console_gateway.base_url, trust_env=False) as http:
        form = await http.get("/console/sign-in")
        assert form.headers["cache-control"] == "no-store"
        assert form.headers["x-frame-options"] == "DENY"
        assert "script-src 'self'" in form.headers["content-security-policy"]
        css = await http.get("/console/static/console.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        slash = await http.get("/console")
        assert slash.status_code in (301, 308) and slash.headers["location"].endswith("/console/")


@pytest.mark.parametrize("path", ["/console/", "/console/sign-in", "/"])
async def test_the_console_can_be_switched_off(nursery: trio.Nursery, redis_url: str,
                                               path: str) -> None:
    config = make_config(redis_url, {"local": {"kind": "mock"}},
                         [{"slug": "echo", "routes": [{"provider": "local", "model": "echo"}]}],
                         console={"enabled": False})
    gateway = await start_gateway(nursery, config)
    async with httpx.AsyncClient(base_url=gateway.base_url, trust_env=False) as http:
        response = await http.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
