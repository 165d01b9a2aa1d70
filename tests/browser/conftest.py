"""Browser test fixtures: a live uvicorn server on this run's test database, headless Chromium, logged-in pages."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlencode

import pytest
from django.conf import settings
from django.db import connection

from tests.support import database_url

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[2]
SERVER_START_TIMEOUT = 30.0
WAIT = 10_000  # ms: the bound of every wait for the page


def running_in_ci() -> bool:
    """Whether this is a CI run (`CI=true`, as CI services and `.ci/run` set it)."""
    return os.environ.get("CI", "").lower() in ("true", "1")


@pytest.fixture(scope="session", autouse=True)
def _chromium_present():
    """Skip the browser tests when Chromium is missing, with the reason; in CI fail them instead.

    A green CI run must mean the browser tests ran, not that they were skipped.
    """
    if CHROMIUM.exists():
        return
    if running_in_ci():
        pytest.fail(f"{CHROMIUM} is missing: CI must run the browser tests (apt-get install chromium)")
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium fonts-liberation)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_serving(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"The live server exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/accounts/login/", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"The live server did not answer within {SERVER_START_TIMEOUT:.0f}s:\n{log.read_text()}")


@pytest.fixture(scope="session")
def live_server_url(django_db_setup, _isolated_redis_prefix, tmp_path_factory):
    """Run `uvicorn bros.asgi:application` on this run's test database and Redis prefix; yield its URL.

    The server is a separate process: a test's data reaches it only once committed (use `demo_tx`).
    """
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.browser.settings",
        "DATABASE_URL": database_url(connection.settings_dict),
        "DB_POOL": "0",
        "REDIS_URL": settings.REDIS_URL,
        "REDIS_PREFIX": settings.REDIS_PREFIX,
        "SECRET_KEY": settings.SECRET_KEY,
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DEBUG": "0",
        "SECURE_COOKIES": "0",
        # The hub heals lost publishes itself every few seconds; switched off here so the tests
        # see the *client's* recovery (gap fill, ping heads, reconcile) rather than the server's.
        "REALTIME_HEADS_INTERVAL": "3600",
        "LOG_LEVEL": "WARNING",
    }
    log = tmp_path_factory.mktemp("live-server") / "uvicorn.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bros.asgi:application",
                "--ws",
                "realtime.uvicorn_protocol:WebSocketProtocol",
            ]
            + ["--host", "127.0.0.1", "--port", str(port), "--lifespan", "on", "--no-access-log"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_serving(url, process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Debian's), one per test module."""
    from playwright.sync_api import sync_playwright

    with pytest.MonkeyPatch.context() as patch:
        # Playwright's sync API keeps an event loop running in this thread while it is started, and
        # Django takes that for async code and refuses ORM calls. Nothing runs concurrently here (the
        # loop only turns inside Playwright calls), so the ORM is safe; the module scope makes sure
        # the loop is gone before any other test module runs.
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
            try:
                yield chromium
            finally:
                chromium.close()


class SocketRoute:
    """One page WebSocket routed through Playwright to the live server."""

    def __init__(self, page_side, server_side, proxy: SocketProxy):
        self.page_side, self.server_side, self.proxy = page_side, server_side, proxy
        self.silent = False  # swallow everything the server sends: a dead socket that looks open
        page_side.on_message(self._from_page)
        server_side.on_message(self._from_server)

    def _from_page(self, message) -> None:
        self.proxy.sent.append(json.loads(message))
        self.server_side.send(message)

    def _from_server(self, message) -> None:
        if not self.silent:
            self.proxy.received.append(json.loads(message))
            self.page_side.send(message)


class SocketProxy:
    """The page's WebSockets as the test sees them: drop them, refuse new ones, inject frames, read what the page sent.

    Playwright relays frames only while the test is inside a Playwright call (e.g. a wait).
    """

    def __init__(self):
        self.routes: list[SocketRoute] = []
        self.sent: list[dict] = []  # frames the page sent
        self.received: list[dict] = []  # frames the server sent that were passed to the page
        self.refusing = False

    def handle(self, page_side) -> None:
        if self.refusing:
            page_side.close(code=1011, reason="refused by the test")
            return
        self.routes.append(SocketRoute(page_side, page_side.connect_to_server(), self))

    @property
    def current(self) -> SocketRoute:
        return self.routes[-1]

    def inject(self, frame: dict) -> None:
        """Send `frame` to the page as if the server had sent it."""
        self.current.page_side.send(json.dumps(frame))

    def drop(self, code: int = 4001) -> None:
        """Close the current socket on both sides (4001: the server found the client too slow)."""
        route = self.current
        route.page_side.close(code=code, reason="dropped by the test")
        route.server_side.close(code=1001, reason="dropped by the test")

    def frames(self, kind: str, *, received: bool = False) -> list[dict]:
        """The frames of type `kind` the page sent (or, with `received`, was sent)."""
        return [frame for frame in (self.received if received else self.sent) if frame.get("type") == kind]


def _wait_until_disconnected(timeout: float = 10.0) -> None:
    """Wait until the live server has let go of every connection (and so of the streams' hub feeds)."""
    from realtime.presence import presence_snapshot

    deadline = time.monotonic() + timeout
    while presence_snapshot()["connections"] and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture
def open_page(browser, live_server_url, demo_tx):
    """Return `open_page(streams, user="hq", proxy=None, **query)`: a logged-in test page following `streams`."""
    contexts, pages = [], []

    def open_(streams, *, user: str = "hq", proxy: SocketProxy | None = None, **query):
        context = browser.new_context(base_url=live_server_url)
        context.set_default_timeout(WAIT)
        contexts.append(context)
        page = context.new_page()
        page.js_errors, page.api_requests, page.failed_api_requests = [], [], []
        page.on("pageerror", lambda error: page.js_errors.append(str(error)))
        page.on("console", lambda message: _client_error(message) and page.js_errors.append(message.text))
        page.on("request", lambda request: "/api/" in request.url and page.api_requests.append(request.url))
        page.on("requestfailed", lambda request: page.failed_api_requests.append(unquote(request.url)))
        pages.append(page)
        if proxy is not None:
            page.route_web_socket("**/ws/v1/", proxy.handle)
        target = "/dev/realtime-test/?" + urlencode({"streams": ",".join(streams), **query})
        page.goto("/accounts/login/?" + urlencode({"next": target}))
        page.fill("#id_username", user)
        page.fill("#id_password", "demo")
        page.click("button[type=submit]")
        page.wait_for_url("**/dev/realtime-test/**")
        return page

    yield open_
    errors = [error for page in pages for error in page.js_errors]
    for context in contexts:
        context.close()
    # The next test's database starts its streams afresh: the server must not hold their old feeds.
    _wait_until_disconnected()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _client_error(message) -> bool:
    """A `console.error` of the client: a handler or frame that failed."""
    return message.type == "error" and message.text.startswith("realtime:")
