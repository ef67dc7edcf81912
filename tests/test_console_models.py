"""The console's Models page in headless Chromium: the picker, the route table, the
quick-starts (copied with their buttons and run as they are), no-JS, errors, a phone."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import trio
from playwright.sync_api import Page, expect

from ingress.console.models import KEY_VARIABLE, PROMPT
from tests.browser import browse, shot, sign_in
from tests.conftest import make_config, start_gateway
from tests.consoles import ConsoleGateway

TABS = ["Python (OpenAI)", "Python (requests)", "cURL"]
README_IMAGE = Path(__file__).parent.parent / "docs" / "console-models.png"
README_IMAGE_MAX_BYTES = 150_000


def route_rows(page: Page) -> list[list[str]]:
    """The provider table's rows as cell texts (#, provider, kind, upstream model)."""
    rows = page.locator("table tbody tr")
    return rows.evaluate_all(
        "rows => rows.map(row => Array.from(row.cells, cell => cell.textContent.trim()))")


ECHO_ROWS = [["1", "local", "mock", "echo"], ["2", "spare", "mock", "echo-spare"]]
SOLO_ROWS = [["1", "spare", "mock", "solo-1"]]


async def test_a_member_picks_a_model_and_sees_its_providers_in_route_order(
        console_gateway: ConsoleGateway) -> None:
    base = console_gateway.base_url

    def scenario(page: Page) -> tuple[list[list[str]], list[list[str]]]:
        sign_in(page, base, console_gateway.member)
        expect(page).to_have_url(re.compile(r"/console/models$"))
        picker = page.get_by_label("Model", exact=True)
        expect(picker).to_have_value("echo")  # the first slug by default
        expect(picker.locator("option")).to_have_text(["echo", "solo"])
        expect(page.get_by_role("heading", name="echo", exact=True)).to_be_visible()
        echo = route_rows(page)
        shot(page, "models")
        picker.select_option("solo")  # scripts submit the form on change
        expect(page).to_have_url(re.compile(r"/console/models\?model=solo$"))
        expect(page.get_by_role("heading", name="solo", exact=True)).to_be_visible()
        expect(page.get_by_label("Model", exact=True)).to_have_value("solo")
        return echo, route_rows(page)

    echo, solo = await browse(scenario)
    assert echo == ECHO_ROWS
    assert solo == SOLO_ROWS


async def test_the_quick_starts_run_as_copied(console_gateway: ConsoleGateway,
                                              tmp_path: Path) -> None:
    base = console_gateway.base_url

    def scenario(page: Page) -> dict[str, tuple[str, str]]:
        sign_in(page, base, console_gateway.member)
        page.get_by_label("Model", exact=True).select_option("solo")
        expect(page).to_have_url(re.compile(r"\?model=solo$"))
        expect(page.get_by_role("tab")).to_have_text(TABS)
        copied = {}
        for title in TABS:
            page.get_by_role("tab", name=title, exact=True).click()
            panel = page.get_by_role("tabpanel", name=title, exact=True)
            expect(panel).to_be_visible()
            expect(page.get_by_role("tabpanel")).to_have_count(1)  # the others are hidden
            button = panel.locator("button[data-copy]")
            button.click()
            expect(button).to_have_attribute("data-copied", "true")
            clipboard = page.evaluate("navigator.clipboard.readText()")
            copied[title] = (clipboard, panel.locator("pre.code").text_content() or "")
        return copied

    copied = await browse(scenario, clipboard=True)
    assert list(copied) == TABS
    for title, (clipboard, shown) in copied.items():
        assert clipboard == shown, f"{title}: the copy button copied something else"
        assert '"solo"' in clipboard, title
        assert base + "/v1" in clipboard, title
        assert KEY_VARIABLE in clipboard and console_gateway.member not in clipboard, title

    env = {**os.environ, KEY_VARIABLE: console_gateway.member}
    outputs = {}
    with trio.fail_after(120):
        for index, title in enumerate(TABS):
            code = copied[title][0]
            if title == "cURL":
                command = ["sh", "-c", code]
            else:
                script = tmp_path / f"quickstart_{index}.py"
                script.write_text(code)
                command = [sys.executable, str(script)]
            done = await trio.run_process(command, capture_stdout=True, capture_stderr=True,
                                          check=False, env=env)
            assert done.returncode == 0, f"{title}: {done.stderr.decode()} {done.stdout.decode()}"
            outputs[title] = done.stdout.decode()

    # The mock answers with the last user message: the Python ones print that text.
    assert outputs["Python (OpenAI)"] == PROMPT + "\n"
    assert outputs["Python (requests)"] == PROMPT + "\n"
    # curl --fail-with-body exits 0 only on a 2xx; it prints the whole completion.
    completion = json.loads(outputs["cURL"])
    assert completion["object"] == "chat.completion"
    assert completion["model"] == "solo"
    assert completion["choices"][0]["message"]["content"] == PROMPT


async def test_without_scripts_the_show_button_picks_and_every_snippet_shows(
        console_gateway: ConsoleGateway) -> None:
    base = console_gateway.base_url

    def scenario(page: Page) -> tuple[list[list[str]], list[float]]:
        sign_in(page, base, console_gateway.member)
        expect(page).to_have_url(re.compile(r"/console/models$"))
        page.get_by_label("Model", exact=True).select_option("solo")
        page.wait_for_timeout(300)
        expect(page).to_have_url(re.compile(r"/console/models$"))  # nothing submits by itself
        page.get_by_role("button", name="Show").click()
        expect(page).to_have_url(re.compile(r"/console/models\?model=solo$"))
        expect(page.get_by_label("Model", exact=True)).to_have_value("solo")
        expect(page.get_by_role("tab")).to_have_count(0)
        expect(page.locator("button[data-copy]")).to_have_count(3)
        for button in page.locator("button[data-copy]").all():
            expect(button).to_be_hidden()  # copying needs scripts: no dead buttons
        tops = []
        codes = page.locator("pre.code")
        expect(codes).to_have_count(3)
        for index, title in enumerate(TABS):
            expect(page.get_by_role("heading", name=title, exact=True)).to_be_visible()
            expect(codes.nth(index)).to_be_visible()
            expect(codes.nth(index)).to_contain_text('"solo"')
            box = codes.nth(index).bounding_box()
            assert box is not None
            tops.append(box["y"])
        return route_rows(page), tops

    rows, tops = await browse(scenario, javascript=False)
    assert rows == SOLO_ROWS
    assert tops == sorted(tops) and len(set(tops)) == 3  # one after the other


async def test_an_unknown_model_is_a_404_page_in_words(console_gateway: ConsoleGateway) -> None:
    base = console_gateway.base_url

    def scenario(page: Page) -> int:
        sign_in(page, base, console_gateway.member)
        response = page.goto(base + "/console/models?model=nope")
        assert response is not None
        expect(page.get_by_role("heading", name="Not found")).to_be_visible()
        expect(page.get_by_role("alert")).to_have_text("model 'nope' is not in the catalog")
        expect(page.get_by_role("navigation", name="Console")).to_contain_text("Models")
        return response.status

    assert await browse(scenario) == 404


async def test_an_empty_catalog_says_how_to_add_models(nursery: trio.Nursery,
                                                       redis_url: str) -> None:
    config = make_config(redis_url, {"local": {"kind": "mock"}}, [])
    gateway = await start_gateway(nursery, config, workers=False)

    def scenario(page: Page) -> None:
        sign_in(page, gateway.base_url, gateway.secret)
        expect(page).to_have_url(re.compile(r"/console/models$"))
        empty = page.locator(".empty")
        expect(empty).to_contain_text("No models yet")
        expect(empty).to_contain_text("Add a [[models]] table to the configuration file")
        expect(page.get_by_label("Model", exact=True)).to_have_count(0)
        expect(page.locator("pre.code")).to_contain_text('slug = "chat"')

    await browse(scenario)


async def test_on_a_phone_the_page_fits_its_width(console_gateway: ConsoleGateway) -> None:
    base = console_gateway.base_url

    def scenario(page: Page) -> tuple[int, bool, list[list[str]]]:
        sign_in(page, base, console_gateway.member)
        expect(page.get_by_label("Model", exact=True)).to_be_visible()
        shot(page, "models-phone")
        tabs_fit = page.locator("[role=tablist]").evaluate("t => t.scrollWidth <= t.clientWidth")
        return (page.evaluate("document.documentElement.scrollWidth"), tabs_fit,
                route_rows(page))

    width, tabs_fit, rows = await browse(scenario, viewport=(390, 844))
    assert width <= 390  # long code scrolls inside its box, not the page
    assert tabs_fit  # all three tabs show without scrolling the tab list
    assert rows == ECHO_ROWS


async def test_the_readme_image_is_a_small_laptop_screenshot(
        console_gateway: ConsoleGateway) -> None:
    """Writes docs/console-models.png only with SB_UPDATE_README_IMAGE=1."""
    base = console_gateway.base_url

    def scenario(page: Page) -> bytes:
        sign_in(page, base, console_gateway.admin)
        expect(page.get_by_role("heading", name="echo", exact=True)).to_be_visible()
        expect(page.get_by_role("tab", name="Python (OpenAI)")).to_have_attribute(
            "aria-selected", "true")
        return page.screenshot(full_page=False)

    image = await browse(scenario, viewport=(1200, 800))
    assert image.startswith(b"\x89PNG") and len(image) < README_IMAGE_MAX_BYTES
    if os.environ.get("SB_UPDATE_README_IMAGE") == "1":
        README_IMAGE.write_bytes(image)
