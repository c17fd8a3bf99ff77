"""/api/v1/telemetry/: decimated signal series and the VIN trace bundle.

`traced_vehicle()` builds the small plant these tests (and the UI pages' tests) read: one
vehicle with a known life, its samples, scores and alert, worked out by hand:

    T0-10 s  samples at TA start (10 Hz), nobody there     T0+90 s  arrives at TB
    T0+0 s   arrives at TA                                  T0+120 s EPS flashed 4.2.1 at TB
    T0+20 s  torque spikes to 57.25 N·m: production model    T0+130 s TB sample 13.2 V
             scores 7.5 (threshold 5.0), shadow 6.0          T0+150 s quality event: steering
             (threshold 4.0) → one alert                     T0+200 s leaves TB
    T0+60 s  leaves TA (samples go on until T0+70 s)
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from dataclasses import dataclass
from decimal import Decimal

import pytest
from django.db import connection
from django.test import override_settings
from django.urls import include, path
from rest_framework.test import APIClient

from foresight import registry
from foresight.models import ModelVersion
from mes import services
from mes.api.authentication import api_token_issue
from mes.demo import demo_vin
from mes.models import DetectionSource, Severity, Station, StationSignal, StationType, Unit
from telemetry import selectors
from telemetry.models import RollupWatermark, Sample, SignalRollup
from tests.factories import (
    DefectCodeFactory,
    LineFactory,
    ProductFactory,
    RouteFactory,
    StationFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

# This module is also the URL configuration of its tests: the API under test and the MES's,
# as aegis/urls.py will include them.
urlpatterns = [
    path("api/v1/telemetry/", include("telemetry.api.urls")),
    path("api/v1/foresight/", include("foresight.api.urls")),
    path("api/v1/", include("mes.api.urls")),
]
with_api = override_settings(ROOT_URLCONF=__name__)

T0 = dt.datetime(2025, 3, 10, 9, 0, tzinfo=dt.UTC)
VIN = demo_vin("1HG", 7717)
SERIAL = "SN-TRACE-UI-1"
WORK_ORDER = "WO-TRACE-UI"
SPIKE = 57.25  # the triggering torque, N·m
SPIKE_AT = T0 + dt.timedelta(seconds=20)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


@dataclass
class TracedVehicle:
    station_a: Station
    station_b: Station
    unit: Unit
    production: ModelVersion
    shadow: ModelVersion
    alert_id: int


def model_version(station: Station, version: str, threshold: float) -> ModelVersion:
    return ModelVersion.objects.create(
        version=version,
        station=station,
        kind="pca_t2q",
        feature_spec={},
        threshold=threshold,
        training_start=at(-86400),
        training_end=at(-3600),
        artifact_path=f"00/{version}.onnx",
        sha256="0" * 64,
        metrics={"auc": 0.93, "threshold_quantile": 0.999, "dataset": {"training_rows": 12000}},
    )


def traced_vehicle() -> TracedVehicle:
    line = LineFactory(code="TL")
    station_a = StationFactory(line=line, code="TA", name="Rack torque", position=1)
    station_b = StationFactory(
        line=line, code="TB", name="ECU flash", position=2, station_type=StationType.FLASHING
    )
    StationSignal.objects.create(
        station=station_a, name="torque", unit="N·m", nominal_min=40.0, nominal_max=48.0
    )
    StationSignal.objects.create(station=station_a, name="angle", unit="deg")
    StationSignal.objects.create(station=station_b, name="supply_voltage", unit="V")
    product = ProductFactory(code="SEDAN-T")
    RouteFactory(product=product, line=line, ideal_cycle_time_s=Decimal("58"))
    work_order = services.work_order_create(
        external_id=WORK_ORDER, product=product, line=line, quantity=3
    )
    services.work_order_release(work_order=work_order, at=at(-600))
    services.work_order_start(work_order=work_order, at=at(-300))
    unit = services.unit_create(work_order=work_order, serial=SERIAL, vin=VIN)
    services.unit_arrive(unit=unit, station=station_a, at=at(0))
    services.unit_leave(unit=unit, station=station_a, at=at(60))
    services.unit_arrive(unit=unit, station=station_b, at=at(90))
    services.firmware_flash(
        unit=unit, component="EPS", version="4.2.1", at=at(120), station=station_b
    )
    services.quality_event_record(
        unit=unit,
        defect=DefectCodeFactory(code="steering", name="Steering pull"),
        found_at=at(150),
        severity=Severity.MAJOR,
        source=DetectionSource.INSPECTION,
        station=station_b,
        description="pulls left at 80 km/h",
    )
    services.unit_leave(unit=unit, station=station_b, at=at(200))

    enrichment = {
        "unit_id": unit.pk,
        "vin": VIN,
        "serial": SERIAL,
        "work_order_id": work_order.pk,
        "product_id": product.pk,
    }
    samples = []
    for tenth in range(-100, 701):  # T0-10 s … T0+70 s at 10 Hz
        ts = at(tenth / 10)
        torque = SPIKE if ts == SPIKE_AT else round(43.0 + math.sin(tenth / 7), 3)
        here = at(0) <= ts < at(60)
        samples.append(
            Sample(
                station_id=station_a.pk,
                ts=ts,
                seq=0,
                signals={"torque": torque, "angle": round(30 + tenth / 100, 2)},
                firmware={} if here else None,
                **(enrichment if here else {}),
            )
        )
    samples.append(
        Sample(
            station_id=station_b.pk,
            ts=at(130),
            seq=0,
            signals={"supply_voltage": 13.2},
            firmware={"EPS": "4.2.1"},
            **enrichment,
        )
    )
    Sample.objects.bulk_create(samples)

    production = model_version(station_a, "pca-TA-1", 5.0)
    shadow = model_version(station_a, "pca-TA-2", 4.0)
    registry.promote(version=production, to="production")
    registry.promote(version=shadow, to="shadow")
    with connection.cursor() as cursor:
        rows = []
        for sample in samples[:-1]:
            spike = sample.ts == SPIKE_AT
            rows.append((station_a.pk, sample.ts, production.pk, 7.5 if spike else 1.0, False))
            rows.append((station_a.pk, sample.ts, shadow.pk, 6.0 if spike else 0.8, True))
        cursor.executemany(
            "INSERT INTO foresight_score (station_id, ts, seq, model_version_id, score, shadow) "
            "VALUES (%s, %s, 0, %s, %s, %s)",
            rows,
        )
    alert = registry.raise_alert(
        station=station_a,
        ts=SPIKE_AT,
        score=7.5,
        threshold=5.0,
        model_version=production,
        triggering={"torque": SPIKE, "angle": 30.2},
        explanation=[{"feature": "torque_max", "signal": "torque", "value": SPIKE, "z": 6.1}],
    )
    return TracedVehicle(station_a, station_b, unit, production, shadow, alert.pk)


@pytest.fixture
def vehicle() -> TracedVehicle:
    return traced_vehicle()


@pytest.fixture(autouse=True)
def generous_throttles(settings):
    """Throttle counts live in Redis across tests; these tests are not about throttling."""
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"user": "100000/min", "anon": "100000/min", "token": "1000/min"},
    }


@pytest.fixture
def api_as():
    """A client sending a real bearer token of a new user with `role` (None: no role)."""

    def client_for(role: str | None) -> APIClient:
        _, secret = api_token_issue(user=UserFactory(role=role), name=f"test {role}")
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        return client

    return client_for


def series_url(code: str) -> str:
    return f"/api/v1/telemetry/stations/{code}/series"


# -- decimated series -------------------------------------------------------------------------


def insert_wave(station: Station, *, samples: int, start: dt.datetime) -> None:
    """`samples` at 100 Hz of a slow wave between 10 and 20, with one spike to 99.5 and one
    dip to -42 that a decimation averaging buckets would flatten."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO telemetry_sample (station_id, ts, seq, signals)
            SELECT %(station)s, %(start)s + n * interval '10 milliseconds', 0,
                   jsonb_build_object(
                     'torque', CASE WHEN n = 12345 THEN 99.5 WHEN n = 777 THEN -42
                                    ELSE 15 + 5 * sin(n / 500.0) END,
                     'label', 'not a number')
            FROM generate_series(0, %(last)s) AS n
            """,
            {"station": station.pk, "start": start, "last": samples - 1},
        )


@with_api
@pytest.mark.parametrize("points", [2, 50, 333, 1000])
def test_decimation_bounds_the_points_and_keeps_the_extremes(api_as, points):
    station = StationFactory()
    insert_wave(station, samples=20_000, start=T0)
    response = api_as("operator").get(
        series_url(station.code),
        {
            "start": T0.isoformat(),
            "end": (T0 + dt.timedelta(seconds=199.99)).isoformat(),
            "points": points,
            "signal": "torque",
        },
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["source"] == "samples"
    (torque,) = body["series"]
    assert torque["signal"] == "torque"
    assert 1 < len(torque["points"]) <= points
    assert max(p["max"] for p in torque["points"]) == 99.5
    assert min(p["min"] for p in torque["points"]) == -42
    assert sum(p["samples"] for p in torque["points"]) == 20_000
    # Buckets are in time order and equally wide.
    stamps = [dt.datetime.fromisoformat(p["ts"]) for p in torque["points"]]
    assert stamps == sorted(stamps)
    width = dt.timedelta(seconds=body["bucket_seconds"])
    assert all((b - a) % width == dt.timedelta(0) for a, b in itertools.pairwise(stamps))


def test_a_value_that_is_not_a_number_is_left_out_not_an_error():
    station = StationFactory()
    insert_wave(station, samples=1000, start=T0)
    Sample.objects.create(station_id=station.pk, ts=T0, seq=1, signals={"torque": "n/a"})
    chart = selectors.signal_series(
        station=station, start=T0, end=T0 + dt.timedelta(seconds=10), points=10, signals=["torque"]
    )
    (torque,) = chart.series
    assert sum(p["samples"] for p in torque.points) == 1000
    assert min(p["min"] for p in torque.points) == -42


@with_api
def test_without_signals_the_station_s_declared_signals_are_returned(api_as, vehicle):
    response = api_as("quality_engineer").get(
        series_url("TA"), {"start": at(-10).isoformat(), "end": at(70).isoformat()}
    )
    assert response.status_code == 200
    series = {s["signal"]: s for s in response.json()["series"]}
    assert set(series) == {"torque", "angle"}
    assert series["torque"]["unit"] == "N·m"
    assert max(p["max"] for p in series["torque"]["points"]) == SPIKE
    assert sum(p["samples"] for p in series["torque"]["points"]) == 801


def test_long_ranges_read_the_rollups_then_the_samples_after_the_watermark():
    station = StationFactory()
    start = T0
    # Three hours of minute roll-ups, rolled up until start + 3 h; then raw samples after it.
    SignalRollup.objects.bulk_create(
        SignalRollup(
            station_id=station.pk,
            signal="torque",
            bucket=start + dt.timedelta(minutes=m),
            samples=600,
            mean=20.0,
            minimum=10.0 if m != 100 else -5.0,
            maximum=30.0,
            stddev=1.0,
        )
        for m in range(180)
    )
    RollupWatermark.objects.update_or_create(
        name="rollup_1m", defaults={"complete_until": start + dt.timedelta(hours=3)}
    )
    Sample.objects.bulk_create(
        Sample(
            station_id=station.pk,
            ts=start + dt.timedelta(hours=3, seconds=s),
            seq=0,
            signals={"torque": 77.0 if s == 30 else 20.0},
        )
        for s in range(120)
    )
    chart = selectors.signal_series(
        station=station,
        start=start,
        end=start + dt.timedelta(hours=3, minutes=2),
        points=50,
        signals=["torque"],
    )
    assert chart.source == "rollups"
    assert chart.bucket_seconds % 60 == 0
    (torque,) = chart.series
    assert len(torque.points) <= 50
    assert min(p["min"] for p in torque.points) == -5.0
    assert max(p["max"] for p in torque.points) == 77.0
    assert sum(p["samples"] for p in torque.points) == 180 * 600 + 120


@with_api
@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"start": "2025-03-10T09:00:00"}, "start"),  # no time zone
        ({"start": "yesterday"}, "start"),
        ({"start": "2025-03-10T10:00:00Z", "end": "2025-03-10T09:00:00Z"}, "end"),
        ({"start": "2025-01-01T00:00:00Z", "end": "2025-03-01T00:00:00Z"}, "end"),
        ({"points": "1"}, "points"),
        ({"points": "100000"}, "points"),
        ({"points": "many"}, "points"),
        ({"signal": "Torque-1"}, "signal"),
        ({"end": "0001-01-01T00:10:00Z"}, "end"),
    ],
)
def test_bad_parameters_are_400_naming_the_field(api_as, query, field):
    station = StationFactory()
    response = api_as("operator").get(series_url(station.code), query)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid"
    assert field in body["fields"]


@with_api
def test_series_need_a_signed_in_role_and_a_known_station(api_as, client):
    station = StationFactory()
    assert client.get(series_url(station.code)).status_code == 401
    assert api_as(None).get(series_url(station.code)).status_code == 403
    assert api_as("integrator").get(series_url(station.code)).status_code == 200
    assert api_as("operator").get(series_url("NOPE")).status_code == 404


@with_api
def test_the_browser_session_reads_series_too(client):
    station = StationFactory()
    client.force_login(UserFactory(role="supervisor"))
    assert client.get(series_url(station.code)).status_code == 200


# -- raw samples near an instant --------------------------------------------------------------


def test_samples_near_keeps_those_closest_to_the_instant_in_time_order(vehicle):
    rows, truncated = selectors.samples_near(
        station=vehicle.station_a, at=SPIKE_AT, start=at(-10), end=at(70), limit=41
    )
    assert truncated
    assert len(rows) == 41
    assert [r.ts for r in rows] == sorted(r.ts for r in rows)
    assert (rows[0].ts, rows[-1].ts) == (at(18), at(22))
    (spike,) = [r for r in rows if r.ts == SPIKE_AT]
    assert (spike.signals["torque"], spike.vin) == (SPIKE, VIN)

    # Near the window's edge the other side gives its unused share.
    rows, _ = selectors.samples_near(
        station=vehicle.station_a, at=at(70), start=at(60), end=at(70), limit=41
    )
    assert len(rows) == 41
    assert (rows[0].ts, rows[-1].ts) == (at(66), at(70))


# -- the VIN trace ----------------------------------------------------------------------------


def trace_url() -> str:
    return "/api/v1/telemetry/trace"


@with_api
def test_the_trace_bundle_answers_what_happened_at_the_instant(api_as, vehicle):
    response = api_as("quality_engineer").get(
        trace_url(), {"vin": VIN, "at": "2025-03-10T10:00:20+01:00", "window": 5}
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["unit"]["serial"] == SERIAL
    assert body["unit"]["work_order"]["external_id"] == WORK_ORDER
    assert body["in_life"] is True
    assert body["station"] == "TA"
    assert body["firmware"] == {}  # EPS is flashed later, at TB
    assert [(v["station"], v["arrived_at"]) for v in body["visits"]] == [
        ("TA", "2025-03-10T09:00:00Z"),
        ("TB", "2025-03-10T09:01:30Z"),
    ]
    assert [(f["component"], f["version"], f["station"]) for f in body["flashes"]] == [
        ("EPS", "4.2.1", "TB")
    ]
    assert [(q["defect"], q["station"]) for q in body["quality_events"]] == [("steering", "TB")]
    (alert,) = body["alerts"]
    assert alert["id"] == vehicle.alert_id
    assert alert["model_version"] == "pca-TA-1"
    assert alert["triggering"]["torque"] == SPIKE

    telemetry = body["telemetry"]
    assert telemetry["start"] == "2025-03-10T09:00:15Z"
    assert telemetry["end"] == "2025-03-10T09:00:25Z"
    assert [s["name"] for s in telemetry["signals"]] == ["angle", "torque"]
    assert len(telemetry["samples"]) == 101  # ±5 s at 10 Hz, both ends included
    spike = [s for s in telemetry["samples"] if s["ts"] == "2025-03-10T09:00:20Z"]
    assert spike[0]["signals"]["torque"] == SPIKE
    assert telemetry["truncated"] is False
    torque = {s["signal"]: s for s in telemetry["series"]["series"]}["torque"]
    assert max(p["max"] for p in torque["points"]) == SPIKE
    scores = {s["model_version"]: s for s in telemetry["scores"]["series"]}
    assert (scores["pca-TA-1"]["threshold"], scores["pca-TA-1"]["shadow"]) == (5.0, False)
    assert scores["pca-TA-2"]["shadow"] is True
    assert max(p["max"] for p in scores["pca-TA-1"]["points"]) == 7.5


@with_api
def test_the_trace_between_stations_and_after_the_unit_s_life(api_as, vehicle):
    client = api_as("operator")
    between = client.get(trace_url(), {"vin": VIN, "at": at(75).isoformat()}).json()
    assert (between["in_life"], between["station"]) == (True, None)
    assert between["telemetry"] is None
    assert between["previous_visit"]["station"] == "TA"
    assert between["next_visit"]["station"] == "TB"

    later = client.get(trace_url(), {"vin": VIN, "at": at(3600).isoformat()}).json()
    assert (later["in_life"], later["telemetry"]) == (False, None)
    assert later["life_start"] == "2025-03-10T09:00:00Z"
    assert later["life_end"] == "2025-03-10T09:03:20Z"
    assert later["firmware"] == {"EPS": "4.2.1"}

    by_serial = client.get(trace_url(), {"vin": SERIAL, "at": at(130).isoformat()}).json()
    assert by_serial["station"] == "TB"
    assert by_serial["telemetry"]["samples"][0]["signals"] == {"supply_voltage": 13.2}


@with_api
@pytest.mark.parametrize(
    ("query", "status", "field"),
    [
        ({}, 400, "vin"),
        ({"vin": VIN, "at": "2025-03-10T09:00:20"}, 400, "at"),
        ({"vin": VIN, "at": "noon"}, 400, "at"),
        ({"vin": VIN, "at": "9999-12-31T23:59:59Z"}, 400, "at"),
        ({"vin": VIN, "window": "7"}, 400, "window"),
        ({"vin": VIN, "points": "0"}, 400, "points"),
        ({"vin": "1HGCM82633A00435\x00"}, 400, "vin"),
        ({"vin": "1HGCM82633A004352"}, 422, "vin"),
    ],
)
def test_bad_or_unknown_trace_parameters(api_as, vehicle, query, status, field):
    response = api_as("operator").get(trace_url(), query)
    assert response.status_code == status
    assert field in response.json()["fields"]


@with_api
def test_the_trace_needs_a_role(api_as, client, vehicle):
    assert client.get(trace_url(), {"vin": VIN}).status_code == 401
    assert api_as(None).get(trace_url(), {"vin": VIN}).status_code == 403
