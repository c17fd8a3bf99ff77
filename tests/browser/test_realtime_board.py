"""The plant board is live in the browser, without a reload: a unit's arrival posted to the REST
API (`POST /api/v1/units/<serial>/arrive`, an operator's token) shows on the station's tile —
VIN, unit, work order, state — within a second, through the outbox relay and the websocket; and
the telemetry a PLC publishes to NATS moves the tile's signal value, sparkline and Foresight
score (`station.live` from the scorer).
"""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
from playwright.sync_api import expect

from mes.api.authentication import api_token_issue
from tests.factories import UserFactory

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("transactional_db")]

TILE_WITHIN_S = 1.0

# Notes, in the page's own clock, when the tile first shows `vin`.
WATCH_FOR_VIN = """([code, vin]) => {
  window.tileChangedAt = null;
  const field = () => document.querySelector(
    `[data-station="${CSS.escape(code)}"] [data-field="vin"]`);
  new MutationObserver((changes, observer) => {
    const shown = field();
    if (shown && shown.textContent.trim() === vin) {
      window.tileChangedAt = Date.now();
      observer.disconnect();
    }
  }).observe(document.body, {childList: true, subtree: true, characterData: true});
}"""

# Whether a canvas has anything drawn on it.
DRAWN = """(canvas) => {
  const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) return true;
  return false;
}"""


def post_arrival(base_url: str, *, serial: str, station: str, token: str) -> int:
    request = urllib.request.Request(  # noqa: S310 - the test's own daphne on loopback
        f"{base_url}/api/v1/units/{serial}/arrive",
        data=json.dumps({"station": station}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return response.status


def test_an_arrival_posted_to_the_api_changes_the_tile_within_a_second(
    open_page, bench, watched, site
):
    station = watched
    arriving = bench.work_order_with_units(1)[0]
    _, token = api_token_issue(user=UserFactory(role="operator"), name="browser test")
    opened = open_page("/", role="supervisor")
    page = opened.page
    tile = page.locator(f'[data-station="{station.code}"]')
    expect(tile.locator('[data-field="vin"]')).to_have_text(station.units[0].vin)
    page.wait_for_selector('#live-status[data-state="live"]')
    page.evaluate(WATCH_FOR_VIN, [station.code, arriving.vin])

    posted_at = time.time()
    status = post_arrival(site.url, serial=arriving.serial, station=station.code, token=token)
    expect(tile.locator('[data-field="vin"]')).to_have_text(arriving.vin, timeout=10_000)
    latency_s = page.evaluate("window.tileChangedAt") / 1000 - posted_at
    print(f"\ntile changed {latency_s * 1000:.0f} ms after the POST")

    assert status in (200, 201)
    expect(tile.locator('[data-field="unit"]')).to_have_text(arriving.serial)
    expect(tile.locator('[data-field="work-order"]')).to_have_text(arriving.work_order.external_id)
    assert latency_s <= TILE_WITHIN_S
    assert opened.errors == []


def test_published_telemetry_moves_the_tiles_value_sparkline_and_score(open_page, watched):
    station = watched
    opened = open_page("/", role="supervisor")
    page = opened.page
    tile = page.locator(f'[data-station="{station.code}"]')
    value = tile.locator('[data-field="signal-value"]')
    score = tile.locator('[data-field="score"]')
    page.wait_for_selector('#live-status[data-state="live"]')

    expect(value).not_to_have_text("—", timeout=10_000)
    first_value, first_score = value.inner_text(), score.get_attribute("data-score")
    expect(value).not_to_have_text(first_value, timeout=10_000)
    page.wait_for_function(
        "([element, before]) => element.dataset.score && element.dataset.score !== before",
        arg=[score.element_handle(), first_score],
        timeout=10_000,
    )

    assert tile.locator('[data-field="sparkline"]').evaluate(DRAWN)
    # station.live rounds to 4 significant digits
    assert float(score.get_attribute("data-threshold")) == pytest.approx(
        station.model.threshold, rel=1e-3
    )
    assert opened.errors == []
