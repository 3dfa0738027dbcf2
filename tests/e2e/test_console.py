"""The operator console (`/console`) in a real browser (the system's headless chromium, driven
by Selenium), against a real `registry serve` with NATS, on SQLite and on PostgreSQL.

Signing in with the API token (a wrong one refused, no session: sent to sign-in), a user
registered over the bus in the live tail within 2 s, found by email in another letter case,
their earlier email in the timeline's as-of view, nothing personal once erased; a partition
made to fail shows its reason, a retry without the CSRF token is refused and changes nothing,
the retry recovers it. Every page seen is kept as a screenshot under the test's tmp_path.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.console import (
    POISON_MESSAGE,
    Served,
    append_unreadable,
    browser,
    cure,
    database,
    poison,
    serve,
)

pytestmark = pytest.mark.e2e

WAIT = 20.0

T = TypeVar("T")


@pytest.fixture(scope="module")
def driver() -> Iterator[WebDriver]:
    chromium = browser()
    try:
        yield chromium
    finally:
        chromium.quit()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp(f"console-{request.param}")
    with database(request.param, directory) as url:
        server = serve(url, directory)
        try:
            yield server
        finally:
            server.stop()


class Page:
    """The browser on one server's console; `shot` keeps a screenshot of what it shows."""

    def __init__(self, driver: WebDriver, served: Served, shots: Path) -> None:
        self.driver, self.served, self.shots = driver, served, shots

    def open(self, path: str) -> None:
        self.driver.get(self.served.base + path)

    def wait(self, check: Callable[[WebDriver], T], timeout: float = WAIT) -> T:
        return WebDriverWait(
            self.driver,
            timeout,
            poll_frequency=0.05,
            ignored_exceptions=[StaleElementReferenceException],
        ).until(check)

    def text(self, css: str) -> str:
        return str(self.driver.find_element(By.CSS_SELECTOR, css).text)

    def has(self, css: str) -> bool:
        return bool(self.driver.find_elements(By.CSS_SELECTOR, css))

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def sign_in(self, token: str) -> None:
        self.driver.delete_all_cookies()  # the other backend's server shares the host
        self.open("/console/projections")
        self.wait(lambda d: "/console/sign-in" in d.current_url)
        field = self.driver.find_element(By.ID, "token")
        field.clear()
        field.send_keys(token)
        self.driver.find_element(By.CSS_SELECTOR, "#sign-in button").click()
        # signed in once a page with the session's sign-out form has loaded: a navigation
        # started before the sign-in answer set the cookie would be sent to sign-in again
        self.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "form.sign-out"))


@pytest.fixture
def page(driver: WebDriver, served: Served, tmp_path: Path) -> Page:
    return Page(driver, served, tmp_path)


def test_sign_in_with_the_api_token_and_nothing_without_it(page: Page, served: Served) -> None:
    page.driver.delete_all_cookies()
    page.open("/console/events")
    page.wait(lambda d: "/console/sign-in" in d.current_url)
    page.shot("sign-in")

    page.driver.find_element(By.ID, "token").send_keys("not-the-token")
    page.driver.find_element(By.CSS_SELECTOR, "#sign-in button").click()
    page.wait(lambda d: d.find_elements(By.ID, "sign-in-error"))
    assert "not accepted" in page.text("#sign-in-error")
    assert not page.driver.get_cookies()
    page.shot("sign-in-refused")

    page.sign_in(served.token)
    page.wait(
        lambda d: (
            d.current_url.endswith("/console/projections")
            and d.find_elements(By.ID, "projections-table")
        )
    )
    page.shot("projections")

    with httpx.Client(base_url=served.base, timeout=20) as client:
        for path in (
            "/console",
            "/console/events",
            "/console/users/x",
            "/console/projections/table",
        ):
            answer = client.get(path)
            assert answer.status_code == 303, path
            assert answer.headers["location"].startswith("/console/sign-in?next=")
            csp = answer.headers["content-security-policy"]
            assert "unsafe-inline" not in csp
            assert "frame-ancestors 'none'" in csp
            assert "script-src 'self'" in csp
            assert "style-src 'self'" in csp
        refused = client.post("/console/sign-in", data={"token": "wrong"})
        assert refused.status_code == 401
        assert "set-cookie" not in refused.headers
        signed = client.post(
            "/console/sign-in", data={"token": served.token, "next": "//evil.example"}
        )
        assert signed.status_code == 303
        assert signed.headers["location"] == "/console"
        cookie = signed.headers["set-cookie"].lower()
        assert "httponly" in cookie
        assert "samesite=strict" in cookie
        assert "path=/console" in cookie
        # the JSON API is as it was: bearer tokens, no console headers
        assert client.get("/users").status_code == 401
        health = client.get("/healthz")
        assert health.status_code == 200
        assert "content-security-policy" not in health.headers


def test_live_tail_search_timeline_and_erasure(page: Page, served: Served) -> None:
    page.sign_in(served.token)
    page.open("/console/events")
    page.wait(lambda d: d.find_elements(By.ID, "tail-rows"))
    tag = uuid.uuid4().hex[:8]
    first, second = f"Ada.{tag}@Example.org", f"ada.next-{tag}@example.org"

    user_id = served.send("register", f'{{"email": "{first}", "password": "pw-{tag}-long"}}')[
        "user_id"
    ]
    replied = time.monotonic()
    row = f'#tail-rows tr.event a.stream[href$="{user_id}"]'
    page.wait(lambda d: d.find_elements(By.CSS_SELECTOR, row), timeout=2.0)
    assert time.monotonic() - replied <= 2.0
    newest = page.driver.find_element(By.CSS_SELECTOR, "#tail-rows tr.event")
    assert user_id in newest.text  # newest first
    assert "UserRegistered" in newest.text
    assert "[redacted]" in newest.text
    assert f"pw-{tag}" not in page.driver.page_source
    page.shot("events")

    # filtered by type: only that type is listed
    page.open("/console/events?type=UserRegistered")
    page.wait(lambda d: d.find_elements(By.CSS_SELECTOR, row))
    types = {
        e.get_attribute("data-type")
        for e in page.driver.find_elements(By.CSS_SELECTOR, "#tail-rows tr.event")
    }
    assert types == {"UserRegistered"}

    # the one email rule: found in another letter case
    page.open("/console/users")
    page.driver.find_element(By.ID, "q").send_keys(first.upper())
    page.driver.find_element(By.CSS_SELECTOR, "#search button").click()
    page.wait(lambda d: d.current_url.endswith(f"/console/users/{user_id}"))
    page.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#card .email"))
    assert page.text("#card .email") == first.lower()

    served.send("update", f'{{"user_id": "{user_id}", "email": "{second}"}}')

    def shows_second(d: WebDriver) -> bool:
        d.refresh()
        found = d.find_elements(By.CSS_SELECTOR, "#card .email")
        return bool(found) and found[0].text == second

    page.wait(shows_second)
    page.driver.find_element(By.CSS_SELECTOR, 'tr.event[data-version="1"] a.as-of-link').click()
    page.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#past .email"))
    assert page.text("#past .email") == first.lower()
    assert page.text("#past .version") == "1"
    assert page.text("#card .email") == second
    page.shot("user-as-of")

    served.send("erase", f'{{"user_id": "{user_id}"}}')

    def erased(d: WebDriver) -> bool:
        d.get(f"{served.base}/console/users/{user_id}")
        return bool(d.find_elements(By.ID, "erased"))

    page.wait(erased)
    assert "[erased]" in page.driver.page_source
    page.shot("user-erased")
    for path in (
        f"/console/users/{user_id}",
        "/console/events",
        f"/console/users/{user_id}?as_of=2100-01-01",
    ):
        page.open(path)
        source = page.driver.page_source.lower()
        assert user_id in source
        assert first.lower() not in source, path
        assert second not in source, path
    page.open(f"/console/users?q={first}")
    page.wait(lambda d: d.find_elements(By.ID, "no-match"))


def test_a_failed_partition_shows_its_reason_and_recovers_after_retry(
    page: Page, served: Served
) -> None:
    poison(served.database_url)
    email = f"poison-{uuid.uuid4().hex[:8]}@example.org"
    user_id = served.send("register", f'{{"email": "{email}", "password": "pw-poison-long"}}')[
        "user_id"
    ]

    page.sign_in(served.token)
    page.wait(lambda d: d.find_elements(By.ID, "projections-table"))
    failure = page.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "tr.failure"))[0]
    assert POISON_MESSAGE in failure.text
    assert user_id in failure.text
    assert "UserRegistered" in failure.text
    row_id = str(failure.get_attribute("id"))  # failure-users-<partition>
    partition = row_id.removeprefix("failure-")
    assert page.text(f"#partition-{partition} td.state") == "failed"
    page.shot("projections-failed")

    # a retry without the session's CSRF token is refused, and nothing changes
    page.driver.execute_script(
        "const form = document.querySelector(arguments[0]);"
        "form.querySelector('input[name=csrf]').remove(); form.submit();",
        f"#{row_id} form",
    )
    page.wait(lambda d: d.find_elements(By.ID, "message"))
    assert "CSRF" in page.text("#message h1")
    assert "nothing was changed" in page.text("#message")
    page.shot("csrf-refused")
    page.open("/console/projections")
    page.wait(lambda d: d.find_elements(By.ID, row_id))
    assert POISON_MESSAGE in page.text(f"#{row_id}")

    cure(served.database_url)

    def retry(d: WebDriver) -> bool:
        d.find_element(By.CSS_SELECTOR, f"#{row_id} button.retry").click()
        return True

    page.wait(retry)
    page.wait(lambda d: d.find_elements(By.ID, "notice"))
    assert f"Retry requested for {partition.replace('-', '/')}" in page.text("#notice")
    # the page refreshes itself: the partition recovers and the failure goes
    page.wait(
        lambda d: (
            not d.find_elements(By.CSS_SELECTOR, "tr.failure")
            and d.find_element(By.CSS_SELECTOR, f"#partition-{partition} td.state").text == "ok"
        )
    )
    page.shot("projections-recovered")

    def projected(d: WebDriver) -> bool:  # the projector takes the event up again
        d.get(f"{served.base}/console/users/{user_id}")
        return bool(d.find_elements(By.CSS_SELECTOR, "#card .email"))

    page.wait(projected)
    assert page.text("#card .email") == email


def test_an_event_that_cannot_be_read_is_shown_with_its_reason(page: Page, served: Served) -> None:
    """Last of the module: the event stays unreadable (its partition stays failed)."""
    page.sign_in(served.token)
    page.open("/console/events")
    page.wait(lambda d: d.find_elements(By.ID, "tail-rows"))
    position = asyncio.run(append_unreadable(served.database_url))
    tag = uuid.uuid4().hex[:8]
    later = served.send(
        "register", f'{{"email": "later-{tag}@example.org", "password": "pw-{tag}-x"}}'
    )
    page.wait(
        lambda d: d.find_elements(
            By.CSS_SELECTOR, f'#tail-rows a.stream[href$="{later["user_id"]}"]'
        )
    )  # the tail went on past it
    bad = page.driver.find_element(
        By.CSS_SELECTOR, f'#tail-rows tr.event[data-position="{position}"]'
    )
    assert "cannot be read: MasterKeyError" in bad.text
    assert "UserRegistered" in bad.text
    page.shot("events-unreadable")
    stream = bad.find_element(By.CSS_SELECTOR, "a.stream").get_attribute("href")
    page.driver.get(str(stream))
    page.wait(lambda d: d.find_elements(By.ID, "message"))
    assert "Cannot read this user's events" in page.text("#message h1")
    assert "MasterKeyError" in page.text("#message")
