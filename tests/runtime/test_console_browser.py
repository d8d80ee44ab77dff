"""The console in a real browser: Debian's headless Chromium, driven by Selenium through Debian's
chromedriver (scripts/ensure-browser installs both; Selenium Manager never runs, nothing is
downloaded). The server is the real HTTP app on a loopback port, its sandboxes real containers.

The tests save screenshots (in ``$CLOUDSKILLS_SCREENSHOTS`` when set, else the test's temporary
dir); the README shows two of them, from docs/console/."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import anyio
import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    NoAlertPresentException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait
from sqlalchemy import insert, update
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from runtime.app import App
from runtime.server import http_app
from runtime.tenants import create_key, ensure_tenant, revoke_key, update_tenant
from scheduler.models import LedgerEntry, Tenant, utcnow
from tests.loopback import serving

pytestmark = [pytest.mark.anyio, pytest.mark.browser, pytest.mark.docker]

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
XSS = "<script>alert(1)</script>"
T = TypeVar("T")


@pytest.fixture
async def console(app: App) -> AsyncIterator[str]:
    async with serving(http_app(app, "127.0.0.1", 8000)) as url:
        yield f"{url}/console/"


@pytest.fixture(scope="module")
def chrome() -> Iterator[webdriver.Chrome]:
    """Headless Chromium from Debian's packages (as root in a container: no sandbox of its own)."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.fail(
                f"the browser tests need {path}: run scripts/ensure-browser (Debian's chromium, chromium-driver)"
            )
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager, were it ever asked, must not download
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1100,1500",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("CLOUDSKILLS_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def in_browser(script: Callable[[], T]) -> T:
    """Run blocking WebDriver steps off the event loop, which keeps serving the pages."""
    return await anyio.to_thread.run_sync(script)


def after_click(driver: webdriver.Chrome, click: WebElement, css: str) -> WebElement:
    """Click, then wait for the next page's element (a click does not wait for the page it loads)."""
    old = driver.find_element(By.TAG_NAME, "html")
    click.click()
    waiting = WebDriverWait(driver, 60)  # a destroy on a busy 2-core machine can take a while
    waiting.until(lambda _: gone(old))
    return waiting.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css)))


def gone(element: WebElement) -> bool:
    """Whether the page that held ``element`` has been left. Selenium's ``staleness_of`` catches
    only StaleElementReferenceException, but chromedriver asked about a node in the very instant
    its document is replaced answers "Node with given id does not belong to the document" as an
    unknown error instead (seen in CI): that is the same fact, the node's page is gone."""
    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as error:
        if "does not belong to the document" in str(error.msg):
            return True
        raise
    return False


def sign_in(driver: webdriver.Chrome, console: str, key: str, then: str = "#tenant-name") -> WebElement:
    driver.delete_all_cookies()
    driver.get(console)  # not signed in: sent to the sign-in page
    assert driver.current_url.endswith("/console/login")
    driver.find_element(By.ID, "key").send_keys(key)
    return after_click(driver, driver.find_element(By.CSS_SELECTOR, "form button[type=submit]"), then)


def no_alert(driver: webdriver.Chrome) -> bool:
    try:
        _ = driver.switch_to.alert
    except NoAlertPresentException:
        return True
    return False


def seed_history(app: App) -> None:
    """Two weeks of earlier spend by two skills and two agents, so the chart has a shape
    (the ledger as ledger.post writes it, and the tenant's spend with it)."""
    rows, now = [], utcnow()
    for back in range(1, 14):
        for skill, agent, amount in (
            ("sandbox", "coder", 9000 + 700 * back),
            ("sandbox", "planner", 2000 + 900 * (back % 3)),
            ("inference", "planner", 4000 + 300 * (back % 5)),
            ("db", "coder", 1500 + 200 * (back % 4)),
        ):
            when = now - timedelta(days=back)
            rows.append(
                {
                    "idempotency_key": f"seed:{back}:{skill}:{agent}",
                    "tenant_id": "local",
                    "agent": agent,
                    "skill": skill,
                    "op": "run",
                    "item": "task_fee",
                    "quantity": 1,
                    "amount_micros": amount,
                    "catalog_version": app.catalog.version,
                    "created_at": when,
                    "day": when.strftime("%Y-%m-%d"),
                }
            )
    with app.store.transaction() as session:
        session.execute(insert(LedgerEntry), rows)
        total = sum(int(r["amount_micros"]) for r in rows)  # type: ignore[call-overload]
        session.execute(update(Tenant).where(Tenant.id == "local").values(spent_micros=Tenant.spent_micros + total))


async def test_sign_in_see_the_spend_chart_and_destroy_a_sandbox(
    app: App, console: str, chrome: webdriver.Chrome, shots: Path
) -> None:
    assert app.first_key is not None
    key = app.first_key.key
    seed_history(app)
    update_tenant(app.store, "local", budget_micros=1_000_000, alert_micros=200_000)
    sandbox_id = (await app.call("local", "sandbox_create", {}, agent="coder")).unwrap()["sandbox_id"]
    await app.call("local", "sandbox_run", {"code": "print('hi')"}, agent="coder")

    def look_and_destroy() -> str:
        sign_in(chrome, console, key)
        assert chrome.find_element(By.ID, "tenant-name").text == "local"
        bars = chrome.find_elements(By.CSS_SELECTOR, "#spend svg.chart rect")
        assert len(bars) >= 2 * 13, "a bar per skill per day, and per agent"
        legend = chrome.find_element(By.CSS_SELECTOR, "#spend").text
        assert "sandbox" in legend and "coder" in legend and "planner" in legend
        assert chrome.find_element(By.ID, "alert").text == "Spend has passed the alert."
        row = chrome.find_element(By.CSS_SELECTOR, f'#live tr[data-id="{sandbox_id}"]')
        chrome.save_screenshot(str(shots / "console-overview.png"))
        chrome.set_window_size(390, 1500)  # a phone's width
        chrome.save_screenshot(str(shots / "console-phone.png"))
        chrome.set_window_size(1100, 1500)
        confirm = after_click(chrome, row.find_element(By.LINK_TEXT, "Destroy"), "#confirm-destroy")
        assert "Destroy sandbox" in chrome.find_element(By.TAG_NAME, "h1").text
        chrome.save_screenshot(str(shots / "console-confirm.png"))
        notice = after_click(chrome, confirm, ".notice").text
        assert not chrome.find_elements(By.CSS_SELECTOR, f'#live tr[data-id="{sandbox_id}"]')
        return notice

    assert await in_browser(look_and_destroy) == f"Destroyed {sandbox_id}."
    listed = (await app.call("local", "sandbox_list", {})).unwrap()
    assert sandbox_id not in [s["sandbox_id"] for s in listed["sandboxes"]]


async def test_a_revoked_key_cannot_sign_in(app: App, console: str, chrome: webdriver.Chrome, shots: Path) -> None:
    key = create_key(app.store, "local")
    revoke_key(app.store, key.id)

    def try_it() -> None:
        error = sign_in(chrome, console, key.key, then=".error")
        assert chrome.current_url.endswith("/console/login")
        assert "not a live API key" in error.text
        assert not [c for c in chrome.get_cookies() if c["name"] == "cloudskills_console"]
        chrome.save_screenshot(str(shots / "console-revoked.png"))

    await in_browser(try_it)


async def test_a_tenant_named_like_a_script_is_shown_as_text(
    app: App, console: str, chrome: webdriver.Chrome, shots: Path
) -> None:
    ensure_tenant(app.store, XSS)
    key = create_key(app.store, XSS).key
    await app.call(XSS, "sandbox_run", {"code": "print(1)"})

    def look() -> None:
        sign_in(chrome, console, key)
        assert chrome.find_element(By.ID, "tenant-name").text == XSS
        assert no_alert(chrome)
        assert XSS in chrome.title
        facts = after_click(chrome, chrome.find_element(By.CSS_SELECTOR, "#tasks a"), "dl.facts")
        assert XSS in facts.text and no_alert(chrome)
        chrome.save_screenshot(str(shots / "console-xss.png"))

    await in_browser(look)


async def test_a_forged_form_is_refused(app: App, console: str, chrome: webdriver.Chrome, shots: Path) -> None:
    """A page elsewhere that posts to the console (same site, other origin: the session cookie
    goes along) and a form whose token was tampered with are both refused by the CSRF check."""
    assert app.first_key is not None
    key = app.first_key.key
    sandbox_id = (await app.call("local", "sandbox_create", {})).unwrap()["sandbox_id"]
    target = f"{console}resources/{sandbox_id}/destroy"
    hostile = (
        f'<form method="post" action="{target}"><input type="hidden" name="csrf" value="guessed">'
        '<button id="bait" type="submit">Win a prize</button></form>'
    )
    page = Starlette(routes=[Route("/", lambda request: HTMLResponse(hostile))])
    async with serving(page) as elsewhere:

        def attack() -> None:
            sign_in(chrome, console, key)
            chrome.get(elsewhere)
            refused = after_click(chrome, chrome.find_element(By.ID, "bait"), ".error")
            assert "CSRF check failed" in refused.text
            chrome.save_screenshot(str(shots / "console-csrf.png"))
            chrome.get(target)  # the real confirmation, its token then tampered with
            chrome.execute_script("document.querySelector('#destroy-form input[name=csrf]').value = 'tampered'")
            refused = after_click(chrome, chrome.find_element(By.ID, "confirm-destroy"), ".error")
            assert "CSRF check failed" in refused.text

        await in_browser(attack)
    listed = (await app.call("local", "sandbox_list", {})).unwrap()
    assert sandbox_id in [s["sandbox_id"] for s in listed["sandboxes"]]
    await app.call("local", "sandbox_destroy", {"sandbox_id": sandbox_id})
