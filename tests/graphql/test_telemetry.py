"""Telemetry over GraphQL: every filter selects exactly the readings it names, pages are capped,
and buckets hold the count, min, max and mean of the samples in them."""

from __future__ import annotations

import datetime as dt
import statistics

import pytest

from mes.models import FirmwareFlash, QualityEvent
from telemetry.models import Sample
from tests.factories import DefectCodeFactory, UnitFactory, WorkOrderFactory
from tests.graphql.conftest import codes
from tests.graphql.plant import T0, line_with_stations

pytestmark = pytest.mark.django_db

GOOD, CANDIDATE = "v2.1.4", "v2.1.5-rc"


@pytest.fixture
def plant():
    """Two stations; two units at the first, each for 10 samples a second apart (torque 45 to
    54 N·m); the second unit runs the release candidate from its flash at T0 + 5 s on and
    reports a steering defect at T0 + 60 s, the first a cosmetic one before its samples."""
    line, (first, second) = line_with_stations(2)
    order = WorkOrderFactory(line=line)
    good = UnitFactory(work_order=order, vin="1HGBH41JXMN109186")
    candidate = UnitFactory(work_order=WorkOrderFactory(line=line), vin="1HGBH41JXMN109187")
    rows = []
    for unit, station, start in (
        (good, first, T0),
        (candidate, first, T0 + dt.timedelta(minutes=1)),
    ):
        for second_ in range(10):
            ts = start + dt.timedelta(seconds=second_)
            version = CANDIDATE if unit is candidate and second_ >= 5 else GOOD
            rows.append(
                Sample(
                    station_id=station.pk,
                    ts=ts,
                    seq=0,
                    unit_id=unit.pk,
                    vin=unit.vin,
                    serial=unit.serial,
                    work_order_id=unit.work_order_id,
                    firmware={"EPS": version, "BCM": "v5.0.3"},
                    signals={"torque": 45.0 + second_, "angle": 30.0 + second_ / 2},
                )
            )
    # the second station sees no unit: samples without MES state
    rows += [
        Sample(station_id=second.pk, ts=T0 + dt.timedelta(seconds=s), seq=0, signals={"toe": 0.1})
        for s in range(5)
    ]
    Sample.objects.bulk_create(rows)
    FirmwareFlash.objects.create(unit=good, component="EPS", version=GOOD, flashed_at=T0)
    FirmwareFlash.objects.create(
        unit=candidate, component="EPS", version=GOOD, flashed_at=T0 - dt.timedelta(hours=1)
    )
    FirmwareFlash.objects.create(
        unit=candidate,
        component="EPS",
        version=CANDIDATE,
        flashed_at=T0 + dt.timedelta(minutes=1, seconds=5),
    )
    steering, cosmetic = DefectCodeFactory(code="steering"), DefectCodeFactory(code="cosmetic")
    for unit, defect, found in (
        (candidate, steering, T0 + dt.timedelta(minutes=1, seconds=7)),
        (good, cosmetic, T0 - dt.timedelta(minutes=1)),
    ):
        QualityEvent.objects.create(
            unit=unit, defect=defect, found_at=found, severity="major", source="inspection"
        )
    return {"line": line, "first": first, "second": second, "good": good, "candidate": candidate}


READINGS = """
query ($filter: TelemetryFilter!, $limit: Int, $offset: Int) {
  telemetry(filter: $filter, limit: $limit, offset: $offset) {
    totalCount hasMore limit offset
    readings { ts seq vin serial value station { code } }
  }
}
"""


def read(caller, limit: int = 1000, offset: int = 0, **where) -> dict:
    return caller.data(READINGS, filter=where, limit=limit, offset=offset)["telemetry"]


def instants(page: dict) -> list[str]:
    return [r["ts"] for r in page["readings"]]


def at(seconds: float) -> str:
    return (T0 + dt.timedelta(seconds=seconds)).isoformat()


def test_station_line_vin_unit_and_work_order_each_select_their_readings(signed_in, plant):
    caller = signed_in("quality_engineer")
    assert read(caller)["totalCount"] == 25
    assert read(caller, station=plant["second"].code)["totalCount"] == 5
    assert read(caller, line=str(plant["line"].pk))["totalCount"] == 25
    by_vin = read(caller, vin=plant["candidate"].vin)
    assert by_vin["totalCount"] == 10
    assert {r["serial"] for r in by_vin["readings"]} == {plant["candidate"].serial}
    assert read(caller, unit=plant["good"].serial)["totalCount"] == 10
    assert read(caller, workOrder=plant["good"].work_order.external_id)["totalCount"] == 10
    assert read(caller, station="no-such-station")["totalCount"] == 0


def test_readings_come_oldest_first_with_their_station(signed_in, plant):
    page = read(signed_in(), station=plant["first"].code)
    assert instants(page) == sorted(instants(page))
    assert instants(page)[0] == T0.isoformat()
    assert {r["station"]["code"] for r in page["readings"]} == {plant["first"].code}


def test_firmware_is_the_version_at_the_readings_instant(signed_in, plant):
    caller = signed_in()
    candidate = read(caller, firmware=[{"component": "EPS", "version": CANDIDATE}])
    assert candidate["totalCount"] == 5
    assert instants(candidate)[0] == at(65)
    both = read(
        caller,
        firmware=[{"component": "EPS", "version": GOOD}, {"component": "BCM", "version": "v5.0.3"}],
    )
    assert both["totalCount"] == 15  # the first unit's 10 and the second's first 5
    assert read(caller, firmware=[{"component": "EPS", "version": "2.1.4"}])["totalCount"] == 0


def test_unit_firmware_is_any_version_the_unit_was_flashed_with(signed_in, plant):
    caller = signed_in()
    built_with_candidate = read(caller, unitFirmware=[{"component": "EPS", "version": CANDIDATE}])
    assert built_with_candidate["totalCount"] == 10  # all of the second unit's readings
    assert {r["vin"] for r in built_with_candidate["readings"]} == {plant["candidate"].vin}
    assert read(caller, unitFirmware=[{"component": "EPS", "version": GOOD}])["totalCount"] == 20


def test_a_signal_and_its_value_range_select_readings_and_give_their_value(signed_in, plant):
    caller = signed_in()
    above = read(caller, signal="torque", value={"gt": 50})
    # 51 … 54 N·m for each unit
    assert above["totalCount"] == 8
    assert sorted({r["value"] for r in above["readings"]}) == [51.0, 52.0, 53.0, 54.0]
    between = read(caller, signal="torque", value={"gte": 50, "lte": 51})
    assert sorted(r["value"] for r in between["readings"]) == [50.0, 50.0, 51.0, 51.0]
    toe = read(caller, signal="toe")
    assert toe["totalCount"] == 5
    assert read(caller)["readings"][0]["value"] is None  # no signal asked for


def test_a_time_range_is_inclusive_at_both_ends(signed_in, plant):
    page = read(signed_in(), station=plant["first"].code, since=at(2), until=at(4))
    assert instants(page) == [at(2), at(3), at(4)]


def test_unit_quality_event_later_than_the_reading(signed_in, plant):
    caller = signed_in()
    any_time = read(caller, unitQualityEvent={"defect": "steering"})
    assert any_time["totalCount"] == 10
    later = read(caller, unitQualityEvent={"defect": "steering", "afterReading": True})
    # found at T0 + 67 s: the readings from T0 + 60 s to + 66 s came before it
    assert instants(later) == [at(60 + s) for s in range(7)]
    cosmetic_later = read(caller, unitQualityEvent={"defect": "cosmetic", "afterReading": True})
    assert cosmetic_later["totalCount"] == 0  # found before the first unit's readings
    window = read(
        caller,
        unitQualityEvent={"defect": "steering", "foundSince": at(0), "foundUntil": at(66)},
    )
    assert window["totalCount"] == 0


def test_pages_are_limited_and_say_when_more_follow(signed_in, plant):
    caller = signed_in()
    first = read(caller, limit=10)
    second = read(caller, limit=10, offset=10)
    last = read(caller, limit=10, offset=20)
    assert (first["hasMore"], second["hasMore"], last["hasMore"]) == (True, True, False)
    assert len(last["readings"]) == 5
    assert instants(first) + instants(second) + instants(last) == instants(read(caller))


def test_a_page_larger_than_the_cap_is_refused(signed_in, plant):
    body = signed_in().query(READINGS, filter={}, limit=10_001)
    assert codes(body) == ["INVALID"]
    assert "10000" in body["errors"][0]["message"]


@pytest.mark.parametrize(
    "where",
    [
        {"value": {"gt": 50}},  # a value range without its signal
        {"signal": "Torque; drop table"},
        {"since": "2026-03-03T06:00:00"},  # no offset
    ],
)
def test_a_malformed_filter_is_refused(signed_in, plant, where):
    assert codes(signed_in().query(READINGS, filter=where)) == ["INVALID"]


def test_a_reading_has_its_unit_work_order_firmware_and_signals(signed_in, plant):
    data = signed_in().data(
        """query ($vin: String) { telemetry(filter: {vin: $vin}, limit: 1) { readings {
              unit { serial firmware { component version } }
              workOrder { externalId }
              firmware { component version }
              all: signals { name value }
              torque: signals(names: ["torque", "missing"]) { name value } } } }""",
        vin=plant["candidate"].vin,
    )
    [reading] = data["telemetry"]["readings"]
    assert reading["unit"] == {
        "serial": plant["candidate"].serial,
        "firmware": [{"component": "EPS", "version": CANDIDATE}],
    }
    assert reading["workOrder"] == {"externalId": plant["candidate"].work_order.external_id}
    assert reading["firmware"] == [
        {"component": "BCM", "version": "v5.0.3"},
        {"component": "EPS", "version": GOOD},
    ]
    assert reading["all"] == [{"name": "angle", "value": 30.0}, {"name": "torque", "value": 45.0}]
    assert reading["torque"] == [
        {"name": "torque", "value": 45.0},
        {"name": "missing", "value": None},
    ]


# -- buckets ----------------------------------------------------------------------------------

BUCKETS = """
query ($filter: TelemetryFilter!, $seconds: Float!, $signals: [String!]) {
  telemetryBuckets(filter: $filter, bucketSeconds: $seconds, signals: $signals) {
    start signal count min max avg station { code }
  }
}
"""


def test_buckets_hold_the_count_min_max_and_mean_of_their_samples(signed_in, plant):
    data = signed_in().data(
        BUCKETS,
        filter={"station": plant["first"].code, "since": at(0), "until": at(120)},
        seconds=30,
        signals=["torque"],
    )
    buckets = data["telemetryBuckets"]
    # the first unit's samples fall in [T0, T0 + 30 s), the second's in [T0 + 60 s, + 90 s)
    expected = statistics.fmean(45.0 + s for s in range(10))
    assert buckets == [
        {
            "start": at(start),
            "signal": "torque",
            "count": 10,
            "min": 45.0,
            "max": 54.0,
            "avg": pytest.approx(expected),
            "station": {"code": plant["first"].code},
        }
        for start in (0, 60)
    ]


def test_buckets_of_every_signal_follow_the_readings_filter(signed_in, plant):
    data = signed_in().data(
        BUCKETS,
        filter={
            "signal": "torque",
            "value": {"gt": 52},
            "since": at(0),
            "until": at(120),
        },
        seconds=3600,
    )
    rows = {(b["signal"], b["count"], b["min"], b["max"]) for b in data["telemetryBuckets"]}
    # torque 53 and 54 N·m of each unit, and the angle of those same samples
    assert rows == {("angle", 4, 34.0, 34.5), ("torque", 4, 53.0, 54.0)}


def test_buckets_need_a_range_and_at_most_the_bucket_cap(signed_in, plant):
    caller = signed_in()
    no_range = caller.query(BUCKETS, filter={}, seconds=60)
    assert codes(no_range) == ["INVALID"]
    too_fine = caller.query(BUCKETS, filter={"since": at(0), "until": at(86_400)}, seconds=1)
    assert codes(too_fine) == ["INVALID"]
    assert "10,000 buckets" in too_fine["errors"][0]["message"]
