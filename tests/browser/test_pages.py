"""Every page of the supervisor UI in Chromium, on the demo plant as `make run` runs it: it loads
without console errors or failed requests and fits the window at 1280x800 and on a tablet
(768x1024); keyboard focus is visible from the first Tab; it passes the basic accessibility
checks and axe-core's WCAG 2.1 A/AA rules; and a screenshot of each is kept.

Screenshots go to var/screenshots/ (AEGIS_SCREENSHOT_DIR to choose), printed at the end; with
AEGIS_UPDATE_SCREENSHOTS=1 they also replace docs/screenshots/, which docs/ui.md shows:

    AEGIS_UPDATE_SCREENSHOTS=1 .venv/bin/pytest tests/browser/test_pages.py -k screenshots
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlencode

import pytest

from tests.browser.checks import (
    axe_violations,
    basic_accessibility_problems,
    describe_violations,
    focused,
    overflow,
)
from tests.browser.conftest import DESKTOP, DOCS_SCREENSHOTS, SCREENSHOTS, TABLET
from tests.browser.plant import DemoPlant

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("transactional_db")]

MAX_SCREENSHOT_BYTES = 300 * 1024
SCREENSHOT_MAX_HEIGHT = 1600  # the top of long pages: what docs/ui.md describes
SETTLED_S = 15


def trace_path(plant: DemoPlant) -> str:
    """The VIN trace at the alert's instant, as the alert's row links to it."""
    instant = plant.alert.ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return "/trace/?" + urlencode({"vin": plant.alert.vin, "at": instant})


@dataclass(frozen=True)
class Page:
    name: str  # also the screenshot's file name
    role: str | None  # whose view (None: signed out)
    path: Callable[[DemoPlant], str]


PAGES = [
    Page("sign-in", None, lambda plant: "/"),
    Page("board", "supervisor", lambda plant: "/"),
    Page("alerts", "supervisor", lambda plant: "/alerts/"),
    Page("station", "supervisor", lambda plant: f"/stations/{plant.alert.station.code}/"),
    Page("trace", "quality_engineer", trace_path),
    Page("work-orders", "supervisor", lambda plant: "/work-orders/"),
    Page("work-order", "supervisor", lambda plant: f"/work-orders/{plant.work_order}/"),
    Page("oee", "supervisor", lambda plant: "/oee/"),
    # The last hour: the demo plant's scores are minutes old.
    Page("models", "ml_engineer", lambda plant: "/models/?hours=1"),
]
VIEWPORTS = {"desktop": DESKTOP, "tablet": TABLET}

# Until the page's websocket (if it opens one) says Live: the live pages are complete then.
SETTLED = """() => {
  const status = document.getElementById("live-status");
  return document.readyState === "complete" && (!status || status.hidden
    || status.dataset.state === "live");
}"""


SPARKLINE_FILL_MS = 5_000


def open_settled(open_page, demo_plant: DemoPlant, page: Page, viewport: dict):
    opened = open_page(page.path(demo_plant), role=page.role, viewport=viewport)
    opened.page.wait_for_function(SETTLED, timeout=SETTLED_S * 1000)
    opened.page.wait_for_timeout(300)  # scripts that draw after load (charts) have run
    return opened


@pytest.mark.parametrize("viewport", VIEWPORTS, ids=list(VIEWPORTS))
@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_the_page_loads_without_errors_and_fits_the_window(open_page, demo_plant, page, viewport):
    opened = open_settled(open_page, demo_plant, page, VIEWPORTS[viewport])
    layout = overflow(opened.page)

    assert opened.errors == []
    assert layout["widest"] <= layout["width"] + 1, (
        f"the page is {layout['widest']} px wide in a {layout['width']} px window: "
        f"{layout['culprits']}"
    )


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_keyboard_focus_is_visible_from_the_first_tab(open_page, demo_plant, page):
    opened = open_settled(open_page, demo_plant, page, DESKTOP)
    before = focused(opened.page)  # the sign-in page puts the cursor in the username field
    opened.page.keyboard.press("Tab")
    now = focused(opened.page)

    assert now is not None, "Tab focused nothing"
    if before is None:
        assert now["isFirstLink"], f"the first Tab went to {now}, not the first link"
    assert now["onScreen"], f"the focused {now} is off screen"
    assert now["outline"] or now["boxShadow"], f"no focus indicator on {now}"
    if now["isFirstLink"] and now["text"] == "Skip to main content":
        opened.page.keyboard.press("Enter")
        assert (focused(opened.page) or {}).get("id") == "main", "the skip link skips nowhere"


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_the_page_passes_the_basic_accessibility_checks_and_axe(open_page, demo_plant, page):
    opened = open_settled(open_page, demo_plant, page, DESKTOP)
    problems = basic_accessibility_problems(opened.page, signed_in=page.role is not None)
    violations = axe_violations(opened.page)

    assert problems == []
    assert violations == [], describe_violations(violations)


def test_screenshots_of_every_page(open_page, demo_plant):
    # Every page as its user sees it at 1280x800, and the board on a tablet held upright.
    shots = [(page, DESKTOP, page.name) for page in PAGES]
    shots.append((PAGES[1], TABLET, "board-tablet"))
    update_docs = os.environ.get("AEGIS_UPDATE_SCREENSHOTS") == "1"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    if update_docs:
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for page, viewport, name in shots:
        opened = open_settled(open_page, demo_plant, page, viewport)
        if page.name == "board":
            # Its sparklines draw from the live events (two a second): let a few arrive.
            opened.page.wait_for_timeout(SPARKLINE_FILL_MS)
        target = SCREENSHOTS / f"{name}.png"
        height = min(SCREENSHOT_MAX_HEIGHT, opened.page.evaluate("document.body.scrollHeight"))
        opened.page.screenshot(
            path=str(target),
            full_page=True,
            clip={"x": 0, "y": 0, "width": viewport["width"], "height": height},
            animations="disabled",
        )
        sizes[name] = target.stat().st_size
        if update_docs:
            shutil.copyfile(target, DOCS_SCREENSHOTS / target.name)
    print(f"\n{len(shots)} screenshots in {SCREENSHOTS}")
    if update_docs:
        print(f"and copied to {DOCS_SCREENSHOTS}")

    too_big = {name: size for name, size in sizes.items() if size > MAX_SCREENSHOT_BYTES}
    assert not too_big, f"screenshots over {MAX_SCREENSHOT_BYTES} bytes: {too_big}"


def test_charts_break_their_lines_where_the_data_stops(open_page, demo_plant):
    # The station page's charts (shared with the VIN trace and the models page): a stretch
    # without data is a gap (a null between the instants around it), not a straight line.
    station = next(page for page in PAGES if page.name == "station")
    opened = open_settled(open_page, demo_plant, station, DESKTOP)
    steady, gapped = opened.page.evaluate(
        """() => [
          Aegis.charts.withGaps([0, 1, 2, 3, 4], [[5, 6, 7, 8, 9]]),
          Aegis.charts.withGaps([0, 1, 2, 3, 60, 61], [[5, 6, 7, 8, 9, 10], [1, 1, 1, 1, 1, 1]]),
        ]"""
    )

    assert steady == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert gapped == [
        [0, 1, 2, 3, 4, 60, 61],
        [5, 6, 7, 8, None, 9, 10],
        [1, 1, 1, 1, None, 1, 1],
    ]


def test_the_boards_sparklines_leave_a_gap_where_a_station_sent_nothing(open_page, demo_plant):
    # A sparkline of 20 s of events every 0.5 s, 20 s of nothing, then 20 s more: the middle of
    # the canvas (the silent 20 s) stays empty, while the runs either side are drawn.
    board = next(page for page in PAGES if page.name == "board")
    opened = open_settled(open_page, demo_plant, board, DESKTOP)
    painted = opened.page.evaluate(
        """() => {
          const canvas = document.createElement("canvas");
          canvas.style.width = "600px";
          canvas.style.height = "40px";
          document.body.append(canvas);
          const series = [];
          for (let t = 0; t <= 60000; t += 500) {
            if (t > 20000 && t < 40000) continue;
            series.push({ t, min: 9 + (t % 1500) / 1000, max: 11, last: 10 });
          }
          Aegis.board.draw(canvas, series);
          const ratio = canvas.width / 600;
          const context = canvas.getContext("2d");
          const column = (x) => {
            const pixels = context.getImageData(Math.round(x * ratio), 0, 1, canvas.height).data;
            let count = 0;
            for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) count++;
            return count;
          };
          canvas.remove();
          return { before: column(100), silent: column(300), after: column(500) };
        }"""
    )

    assert painted["before"] > 0
    assert painted["after"] > 0
    assert painted["silent"] == 0
