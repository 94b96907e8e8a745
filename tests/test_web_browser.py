"""The web interface end to end in headless Chromium (Debian's `chromium` package, driven by Playwright).

An operator's session: sign in, create an application and an entity, create a linked key and read its secret
once, explain an allowed and a refused request with that secret, delete the application and see the key
disabled. The interface runs on a real uvicorn server on 127.0.0.1 over a SQLite file. The screenshots in
docs/screenshots/ are taken here: with KEYSCOPE_SCREENSHOTS=1 they are written there (they change with every
run: key ids, dates), otherwise to a temporary folder.

Never a downloaded browser build: the system browser at /usr/bin/chromium, or the test is skipped.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
# CI sets KEYSCOPE_REQUIRE_BROWSER=1 after installing the browser: there a missing browser is a failure, not a skip.
if not os.path.exists(CHROMIUM):
    if os.environ.get("KEYSCOPE_REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"{CHROMIUM} is not installed but KEYSCOPE_REQUIRE_BROWSER=1")
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")

import uvicorn  # noqa: E402

from keyscope.allowlist.table import load as load_endpoints  # noqa: E402
from keyscope.store import store_from_url  # noqa: E402
from keyscope.web import create_web_app  # noqa: E402

TOKEN = "browser-admin-token-0123456789"
DOCS_SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("web")
    store = store_from_url(f"sqlite:///{folder / 'keyscope.db'}", create=True)
    app = create_web_app(store, admin_token=TOKEN, endpoints=load_endpoints(), open_store=True)
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="warning")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the web interface did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def page(server: str) -> Iterator[sync_api.Page]:
    with sync_api.sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            base_url=server, viewport={"width": 1100, "height": 800},
        )
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("KEYSCOPE_SCREENSHOTS") == "1":
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        return DOCS_SCREENSHOTS
    return tmp_path_factory.mktemp("screenshots")


def flash(page: sync_api.Page) -> str:
    return page.locator(".flash").inner_text()


def test_an_operators_session(page: sync_api.Page, screenshots: Path) -> None:
    # sign in, with the keyboard
    page.goto("/applications")
    assert page.url.endswith("/signin?next=%2Fapplications")
    page.get_by_label("Admin token").fill("wrong")
    page.keyboard.press("Enter")
    assert page.locator("[role=alert]").inner_text() == "Wrong admin token."
    page.get_by_label("Admin token").fill(TOKEN)
    page.keyboard.press("Enter")
    page.wait_for_url("**/applications")

    # an application, an entity
    page.get_by_label("Id", exact=True).fill("shop")
    page.get_by_label("Alias (optional)").fill("Web shop")
    page.get_by_role("button", name="Create application").click()
    assert flash(page) == "Created application shop."
    for ident, alias in (("newsletter", "Newsletter"), ("support-desk", "")):
        page.goto("/applications")
        page.get_by_label("Id", exact=True).fill(ident)
        page.get_by_label("Alias (optional)").fill(alias)
        page.get_by_role("button", name="Create application").click()
    page.goto("/applications")
    page.get_by_label("Id", exact=True).fill("bad id")  # the API's own rule, shown at the field
    page.locator("form[aria-labelledby=create-heading]").evaluate("form => form.noValidate = true")
    page.get_by_role("button", name="Create application").click()
    assert "must be 1-255 characters" in page.locator(".field-problem").inner_text()
    page.goto("/applications")
    page.screenshot(path=str(screenshots / "applications.png"), full_page=True)

    page.get_by_role("link", name="Entities").click()
    page.get_by_label("Id", exact=True).fill("berlin")
    page.get_by_role("button", name="Create entity").click()
    assert flash(page) == "Created entity berlin."

    # a key linked to the pair; its secret is shown once
    page.get_by_role("link", name="API keys").click()
    page.get_by_label("Name").fill("shop-berlin")
    page.get_by_label("Application of link 1").fill("shop")
    page.get_by_label("Entity of link 1").fill("berlin")
    page.get_by_role("button", name="Create key").click()
    assert "it will not be shown again" in page.get_by_role("alert").inner_text()
    secret = page.get_by_label("Secret").input_value()
    assert re.fullmatch(r"[0-9a-f]{32}-[0-9a-f-]{36}", secret)
    assert page.get_by_role("button", name="Copy").is_visible()
    page.get_by_role("link", name="I have copied it: go to the key").click()
    assert secret not in page.content()
    page.goto("/keys")
    assert secret not in page.content() and "shop-berlin" in page.content()

    # explain an allowed and a refused request, with the pasted secret
    page.get_by_role("link", name="Endpoints").click()
    page.get_by_label("or its secret").fill(secret)
    page.get_by_label("Target (path and query, as sent)").fill("/sms/1/logs?applicationId=shop&entityId=berlin")
    page.get_by_role("button", name="Explain").click()
    assert page.locator(".verdict").inner_text() == "Allowed: forwarded upstream"
    page.get_by_label("or its secret").fill(secret)
    page.get_by_label("Target (path and query, as sent)").fill("/sms/1/logs?applicationId=newsletter&entityId=berlin")
    page.get_by_role("button", name="Explain").click()
    verdict = page.locator(".verdict").inner_text()
    assert verdict == "Refused with 403: id_out_of_scope at step scope"
    assert '"Unauthorized access"' in page.locator("pre.body").inner_text()
    assert secret not in page.content()
    page.locator("section[aria-labelledby=explain-heading]").screenshot(
        path=str(screenshots / "explain-refused.png")
    )
    assert (screenshots / "explain-refused.png").stat().st_size > 10_000

    # delete the application: the confirmation names the key it disables, and it is disabled
    page.goto("/applications/show?id=shop")
    page.get_by_role("link", name="Delete this application…").click()
    disabled = page.locator("section[aria-labelledby=cascade] ul").last.inner_text()
    assert "shop-berlin" in disabled
    page.get_by_role("button", name="Delete application shop").click()
    assert "1 key link(s) removed; disabled key(s)" in flash(page)
    page.get_by_role("link", name="API keys").click()
    row = page.locator("tr", has_text="shop-berlin")
    assert row.locator("td").nth(3).inner_text() == "no"


def test_narrow_window_and_sign_out(page: sync_api.Page) -> None:
    page.set_viewport_size({"width": 360, "height": 740})
    for path in ("/applications", "/keys", "/endpoints"):
        page.goto(path)
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{path} scrolls sideways by {overflow}px at 360px"
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/signin")
    page.goto("/keys")
    assert "/signin" in page.url
