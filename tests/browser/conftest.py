"""The browser suite: Aegis in real headless Chromium, driven by Playwright.

Playwright drives Debian's Chromium (/usr/bin/chromium; browser downloads are impossible where
the suite runs): when it is missing, the `chromium` package is installed through
tests/debian.py (apt-get under a lock, sudo when not root) or the suite fails saying how to
install it.

One plant for the whole package. Building it — the demo plant, its Foresight models, the
Procfile's processes running against it, a real daphne — takes most of a minute, so the
package's tests share it: the fixtures are package-scoped, and the `transactional_db` fixture
is overridden here. The name tells pytest-django to create the test database and to run these
tests among its transactional tests, but this one does not flush the database after each test
(which would empty the shared plant): `site` resets the database to a fresh install before the
package, opens it to the tests, and leaves it empty afterwards, as a transactional test does.
The package's tests run together, in file order: the pages and their screenshots
(test_pages.py) before the tests that add bench stations and alerts of their own.

Playwright's sync API keeps an asyncio loop running on the test thread while a browser is open,
which Django's ORM takes for an async context: DJANGO_ALLOW_ASYNC_UNSAFE is set for the test
process only while the browser is open (never for the servers under test, whose environment
leaves it out), and work that needs asyncio.run goes through `plant.off_the_loop`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connections
from django.test import Client, override_settings

from mes.demo import DEMO_USERS
from tests.browser.plant import (
    Bench,
    BenchModel,
    BenchPublisher,
    DemoPlant,
    Pipeline,
    empty_database,
    reset_database,
)
from tests.debian import require_packages
from tests.factories import UserFactory
from tests.support import REPO, daphne

CHROMIUM = Path("/usr/bin/chromium")
# No sandbox: the suite may run as root, where Chromium refuses its sandbox; no GPU on servers.
LAUNCH_ARGUMENTS = ["--no-sandbox", "--disable-gpu"]
DESKTOP = {"width": 1280, "height": 800}
TABLET = {"width": 768, "height": 1024}
SCREENSHOTS = Path(os.environ.get("AEGIS_SCREENSHOT_DIR") or REPO / "var" / "screenshots")
DOCS_SCREENSHOTS = REPO / "docs" / "screenshots"
DEMO_USERNAMES = {role: username for username, role, _ in DEMO_USERS}
MODEL_LOADED_S = 90  # the relay publishes a promotion, the scorer swaps the model in


@dataclass
class Site:
    """Where the package's daphne serves, and its scratch folders."""

    url: str
    artifacts: Path
    logs: Path


@dataclass
class BrowserPage:
    """A page in a context of its own, with what its console and network reported."""

    page: object  # playwright.sync_api.Page
    user: object = None  # who is signed in (None: nobody)
    errors: list[str] = field(default_factory=list)

    def watch(self) -> BrowserPage:
        def console(message) -> None:
            if message.type == "error":
                self.errors.append(f"console: {message.text} ({message.location.get('url')})")

        def failed(response) -> None:
            if response.status >= 400:
                self.errors.append(f"HTTP {response.status} {response.url}")

        self.page.on("console", console)
        self.page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        self.page.on("response", failed)
        self.page.on(
            "requestfailed",
            lambda request: self.errors.append(f"request failed: {request.url} {request.failure}"),
        )
        return self


@pytest.fixture(scope="package")
def chromium() -> str:
    if not CHROMIUM.exists():
        require_packages("chromium")  # fails, saying how to install it, when it cannot
    assert CHROMIUM.exists(), f"the chromium package is installed but {CHROMIUM} is missing"
    return str(CHROMIUM)


@pytest.fixture(scope="package")
def site(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[Site]:
    """A fresh install in the test database, served by a real daphne, open to the package's
    tests; emptied again afterwards."""
    root = tmp_path_factory.mktemp("browser")
    artifacts, logs = root / "artifacts", root / "logs"
    logs.mkdir()
    with (
        django_db_blocker.unblock(),
        override_settings(FORESIGHT_ARTIFACT_DIR=artifacts),
    ):
        reset_database()
        try:
            with daphne(AEGIS_FORESIGHT_ARTIFACT_DIR=str(artifacts)) as url:
                yield Site(url=url, artifacts=artifacts, logs=logs)
        finally:
            empty_database()


@pytest.fixture
def transactional_db(site) -> None:
    """The package's shared database (see the module docstring): pytest-django's fixture of
    this name would flush it after every test."""


@pytest.fixture(scope="package")
def pipeline(site) -> Iterator[Pipeline]:
    running = Pipeline(logs=site.logs, artifacts=site.artifacts)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="package")
def demo_plant(site, pipeline) -> DemoPlant:
    """The demo plant with its models, the simulator running it live through the pipeline."""
    return DemoPlant.build(pipeline)


@pytest.fixture(scope="package")
def bench(demo_plant) -> Iterator[Bench]:
    """Stations of the tests' own beside the demo plant, on the same running pipeline."""
    model = BenchModel.train()
    with BenchPublisher() as publisher:
        yield Bench(publisher, model)


@pytest.fixture
def watched(bench, pipeline):
    """A bench station publishing normal telemetry and scored by its own production model; its
    PLC stops publishing after the test."""
    station = bench.station()
    try:
        pipeline.wait(
            lambda: bench.scored_by_its_model(station),
            f"the scorer scoring {station.code} with its model",
            timeout=MODEL_LOADED_S,
        )
        yield station
    finally:
        bench.publisher.remove(station.code)


@pytest.fixture(scope="package")
def browser(chromium, site) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with pytest.MonkeyPatch.context() as patch, sync_playwright() as playwright:
        # From here on an asyncio loop runs on this thread (see the module docstring).
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        launched = playwright.chromium.launch(executable_path=chromium, args=LAUNCH_ARGUMENTS)
        try:
            yield launched
        finally:
            launched.close()
            # While a loop runs, Django keeps this thread's connections apart from those it
            # had before (asgiref's Local): close them before the loop stops hiding them.
            connections.close_all()


def user_of(role: str):
    """The role's demo user (`supervisor`, `quality`, …, as `make run` names them, so that the
    screenshots look like the demo), created on first use."""
    username = DEMO_USERNAMES[role]
    user = get_user_model().objects.filter(username=username).first()
    return user or UserFactory(username=username, role=role)


def session_cookie(user) -> dict:
    client = Client()
    client.force_login(user)
    return {
        "name": settings.SESSION_COOKIE_NAME,
        "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
    }


@pytest.fixture
def open_page(browser, site):
    """open_page(path, role=..., viewport=...): a page signed in as a new user of `role` (None:
    signed out), at `path`, its console and failed requests collected in `.errors`."""
    contexts = []

    def open_(path: str, *, role: str | None = "supervisor", viewport=DESKTOP) -> BrowserPage:
        context = browser.new_context(viewport=viewport, base_url=site.url)
        contexts.append(context)
        user = None
        if role is not None:
            user = user_of(role)
            context.add_cookies([{**session_cookie(user), "url": site.url}])
        opened = BrowserPage(context.new_page(), user).watch()
        opened.page.goto(path)
        return opened

    yield open_
    for context in contexts:
        context.close()
