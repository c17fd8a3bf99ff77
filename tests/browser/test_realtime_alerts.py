"""A defect alert by the real path, in the browser: a PLC's triggering sample published to NATS →
the Foresight scorer (`manage.py foresight`, its production model) → the websocket → a new row
on a supervisor's open /alerts/ page within a second of the publish; Acknowledge in the page
records who acknowledged it; the row's VIN link opens the VIN trace at the alert's instant with
the triggering torque in its telemetry table (stored by `manage.py ingest`).

The bench station publishes at 1 kHz beside the simulated demo plant, through the same relay,
ingest worker and scorer (tests/browser/plant.py).
"""

from __future__ import annotations

import datetime as dt
import re
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import expect

from foresight.models import AlertStatus, DefectAlert
from telemetry.models import Sample

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("transactional_db")]

ALERT_WITHIN_S = 1.0

# Notes, in the page's own clock, when the station's alert event arrives on the websocket and
# when its row is in the list.
WATCH_FOR_ROW = """(code) => {
  window.alertRowSeenAt = null;
  window.alertEventAt = null;
  Aegis.live.on("defect.alert", (event) => {
    if (event.station_id === code && window.alertEventAt === null) window.alertEventAt = Date.now();
  });
  const selector = `#alert-list [data-alert-id][data-station="${CSS.escape(code)}"]`;
  new MutationObserver((changes, observer) => {
    if (document.querySelector(selector)) {
      window.alertRowSeenAt = Date.now();
      observer.disconnect();
    }
  }).observe(document.body, {childList: true, subtree: true});
}"""


def test_a_published_fault_is_on_the_alerts_page_within_a_second_and_acknowledged_there(
    open_page, bench, watched
):
    opened = open_page("/alerts/", role="supervisor")
    page = opened.page
    page.wait_for_selector('#live-status[data-state="live"]')
    page.evaluate(WATCH_FOR_ROW, watched.code)
    row = page.locator(f'#alert-list [data-alert-id][data-station="{watched.code}"]')

    fault = bench.publisher.inject_fault(watched.code)
    row.wait_for(state="attached", timeout=20_000)
    seen_by_the_test = time.monotonic()
    assert fault.done.wait(5)
    seen = page.evaluate("[window.alertEventAt, window.alertRowSeenAt]")
    latency_s = seen[1] / 1000 - fault.published_wall
    alert = DefectAlert.objects.get(pk=row.get_attribute("data-alert-id"))
    print(
        f"\nalert row on /alerts/ {latency_s * 1000:.0f} ms after the triggering publish: "
        f"alert recorded by the scorer at "
        f"{(alert.created_at.timestamp() - fault.published_wall) * 1000:.0f} ms, its event on "
        f"the page's websocket at {(seen[0] / 1000 - fault.published_wall) * 1000:.0f} ms; "
        f"the test saw the row at {(seen_by_the_test - fault.published_at) * 1000:.0f} ms"
    )

    assert alert.station_id == watched.station.pk
    assert alert.ts == dt.datetime.fromtimestamp(fault.ts_ms / 1000, dt.UTC)
    assert alert.triggering["torque"] == pytest.approx(fault.torque)
    assert alert.vin == watched.units[0].vin
    assert latency_s <= ALERT_WITHIN_S

    row.get_by_role("button", name="Acknowledge").click()
    acknowledged = page.locator(f'[data-alert-id="{alert.pk}"]')
    expect(acknowledged).to_have_attribute("data-status", "acknowledged")
    expect(acknowledged.get_by_role("button", name="Acknowledge")).to_have_count(0)
    expect(acknowledged).to_contain_text(f"by {opened.user.username}")
    alert.refresh_from_db()
    assert alert.status == AlertStatus.ACKNOWLEDGED
    assert alert.acknowledged_by == opened.user


def test_the_alerts_vin_link_traces_the_vin_at_its_instant_with_the_triggering_torque(
    open_page, bench, watched, pipeline
):
    fault = bench.publisher.inject_fault(watched.code)
    assert fault.done.wait(5)
    alert = pipeline.wait(
        lambda: DefectAlert.objects.filter(
            station=watched.station, ts=dt.datetime.fromtimestamp(fault.ts_ms / 1000, dt.UTC)
        ).first(),
        "the alert of the bench fault",
        timeout=30,
    )
    pipeline.wait(
        lambda: Sample.objects.filter(station_id=watched.station.pk, ts=alert.ts).exists(),
        "the triggering sample stored by the ingest",
        timeout=30,
    )
    opened = open_page(f"/alerts/?station={watched.code}", role="quality_engineer")
    page = opened.page

    page.locator(f'[data-alert-id="{alert.pk}"]').get_by_role("link", name=alert.vin).click()
    page.wait_for_url("**/trace/?*")
    query = parse_qs(urlsplit(page.url).query)
    triggering = page.locator(f'#trace-telemetry tr[data-alert-id="{alert.pk}"]')
    torque = triggering.locator('td[data-signal="torque"]')

    assert query["vin"] == [watched.units[0].vin]
    assert dt.datetime.fromisoformat(query["at"][0]) == alert.ts
    expect(triggering).to_have_class(re.compile(r"\bat-instant\b"))
    expect(torque).to_have_count(1)
    assert float(torque.get_attribute("data-value")) == pytest.approx(fault.torque)
    assert float(torque.inner_text()) == pytest.approx(fault.torque)
