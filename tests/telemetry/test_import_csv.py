"""`manage.py import_csv` stores a historian export as live data would be stored: every row
once, at its own instant, with the MES state of that instant, idempotently.

Real PostgreSQL: the import writes with its own sessions (the COPY writer, and a reader thread
for the MES state), so the tests commit their data and read what the command committed."""

from __future__ import annotations

import datetime as dt
import gzip
import io
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from mes import services
from mes.models import AuditEntry, Station, StationSignal
from telemetry.importing import TimestampReader
from telemetry.models import Sample
from tests.factories import LineFactory, StationFactory, UnitFactory, WorkOrderFactory

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

UTC = dt.UTC
VIN = "1HGBH41JXMN109186"


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def import_csv(tmp_path: Path, content: str, *arguments: str, station: str = "ST5") -> str:
    path = tmp_path / "export.csv"
    path.write_text(content, encoding="utf-8")
    return run_command(station, path, *arguments)


def run_command(station: str, path: Path, *arguments: str) -> str:
    out = io.StringIO()
    call_command("import_csv", station, str(path), *arguments, stdout=out)
    return out.getvalue()


def stored(station: Station) -> list[tuple[dt.datetime, int, dict]]:
    return list(
        Sample.objects.filter(station_id=station.pk)
        .order_by("ts", "seq")
        .values_list("ts", "seq", "signals")
    )


@pytest.fixture
def station() -> Station:
    return StationFactory(code="ST5")


# -- what is stored --------------------------------------------------------------------------


def test_every_row_is_stored_at_its_instant_with_its_values_and_missing_ones_left_out(
    tmp_path, station
):
    output = import_csv(
        tmp_path,
        "ts,torque [N·m],angle,current\n"
        "2026-11-20 09:22:47.123,43.21,31.0,1.5\n"
        "2026-11-20T09:22:47.123Z,43.5,,1.6\n"  # the same instant: seq 1
        "2026-11-20T10:22:48+01:00,44,32.5,\n"
        "2026-11-20T09:22:48.5,NaN,33,1.7\n"
        "2026-11-20 09:22:49,,,\n",  # no value at all: skipped
    )

    assert stored(station) == [
        (utc("2026-11-20 09:22:47.123"), 0, {"torque": 43.21, "angle": 31.0, "current": 1.5}),
        (utc("2026-11-20 09:22:47.123"), 1, {"torque": 43.5, "current": 1.6}),
        (utc("2026-11-20 09:22:48"), 0, {"torque": 44.0, "angle": 32.5}),
        (utc("2026-11-20 09:22:48.5"), 0, {"angle": 33.0, "current": 1.7}),
    ]
    assert "5 rows read, 4 samples stored, 0 already there, 1 skipped" in output
    assert "1 without any value" in output


def test_importing_the_same_file_again_stores_nothing_new_and_says_so(tmp_path, station):
    content = "timestamp,torque\n" + "".join(
        f"2026-11-20T08:00:{second:02d}Z,{40 + second}\n" for second in range(30)
    )
    import_csv(tmp_path, content, "--batch-size", "4")
    first = stored(station)

    output = import_csv(tmp_path, content, "--writers", "1")

    assert stored(station) == first
    assert len(first) == 30
    assert "30 rows read, 0 samples stored, 30 already there" in output


def test_samples_sharing_a_timestamp_are_numbered_in_file_order_across_batches(tmp_path, station):
    rows = [("08:00:00", 1), ("08:00:00", 2), ("08:00:00", 3), ("08:00:01", 4), ("08:00:01", 5)]
    content = "ts,torque\n" + "".join(f"2026-11-20 {t},{v}\n" for t, v in rows)

    import_csv(tmp_path, content, "--batch-size", "2")

    assert [(ts.time().isoformat(), seq, s["torque"]) for ts, seq, s in stored(station)] == [
        ("08:00:00", 0, 1.0),
        ("08:00:00", 1, 2.0),
        ("08:00:00", 2, 3.0),
        ("08:00:01", 0, 4.0),
        ("08:00:01", 1, 5.0),
    ]


def test_a_file_not_in_time_order_still_gives_equal_timestamps_distinct_seqs(tmp_path, station):
    content = (
        "ts,torque\n"
        "2026-11-20 08:00:01,1\n"
        "2026-11-20 08:00:02,2\n"
        "2026-11-20 08:00:01,3\n"  # back in time: the file is read again, keeping every ts
        "2026-11-20 08:00:03,4\n"
        "2026-11-20 08:00:01,5\n"
    )

    output = import_csv(tmp_path, content, "--batch-size", "1")
    again = import_csv(tmp_path, content, "--batch-size", "1")

    assert [(ts.second, seq, s["torque"]) for ts, seq, s in stored(station)] == [
        (1, 0, 1.0),
        (1, 1, 3.0),
        (1, 2, 5.0),
        (2, 0, 2.0),
        (3, 0, 4.0),
    ]
    assert "5 samples stored, 0 already there" in output
    assert "not in time order" in output
    assert "0 samples stored, 5 already there" in again


def test_a_file_sorted_newest_first_gets_the_same_samples_as_one_sorted_oldest_first(
    tmp_path, station
):
    rows = [f"2026-11-20 08:00:{s // 2:02d},{s}\n" for s in range(10)]  # pairs share a ts
    reverse = StationFactory(code="ST6")

    import_csv(tmp_path, "ts,torque\n" + "".join(rows), "--batch-size", "3")
    output = import_csv(
        tmp_path, "ts,torque\n" + "".join(reversed(rows)), "--batch-size", "3", station="ST6"
    )

    assert "not in time order" not in output
    assert {(ts, s["torque"]) for ts, _, s in stored(station)} == {
        (ts, s["torque"]) for ts, _, s in stored(reverse)
    }
    assert len(stored(reverse)) == 10


def test_the_samples_of_a_unit_at_the_station_carry_its_vin_work_order_and_firmware(
    tmp_path, station
):
    unit = UnitFactory(vin=VIN, work_order=WorkOrderFactory(line=station.line))
    arrived = utc("2026-11-20 09:00:00")
    services.firmware_flash(unit=unit, component="EPS", version="v2.1.4", at=arrived)
    services.unit_arrive(unit=unit, station=station, at=arrived)
    services.unit_leave(unit=unit, station=station, at=arrived + dt.timedelta(seconds=60))

    import_csv(
        tmp_path,
        "ts,torque\n"
        "2026-11-20 08:59:59.999,1\n"  # before the arrival
        "2026-11-20 09:00:00,2\n"  # arrival instant
        "2026-11-20 09:00:59.999,3\n"
        "2026-11-20 09:01:00,4\n",  # left
    )

    rows = list(
        Sample.objects.filter(station_id=station.pk)
        .order_by("ts")
        .values_list("signals", "vin", "unit_id", "work_order_id", "product_id", "firmware")
    )
    work_order = unit.work_order
    during = (VIN, unit.pk, work_order.pk, work_order.product_id, {"EPS": "v2.1.4"})
    assert rows == [
        ({"torque": 1.0}, None, None, None, None, None),
        ({"torque": 2.0}, *during),
        ({"torque": 3.0}, *during),
        ({"torque": 4.0}, None, None, None, None, None),
    ]


def test_a_gzipped_export_is_read_as_the_same_file(tmp_path, station):
    path = tmp_path / "export.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("ts,torque\n2026-11-20T08:00:00Z,1.5\n")

    run_command("ST5", path)

    assert stored(station) == [(utc("2026-11-20 08:00:00"), 0, {"torque": 1.5})]


# -- timestamps ------------------------------------------------------------------------------


DST_ROWS = [
    # local Europe/Berlin time, expected UTC
    ("2026-03-29 01:59:00", "2026-03-29 00:59:00"),
    ("2026-03-29 03:00:00", "2026-03-29 01:00:00"),  # clocks went forward at 02:00
    ("2026-10-25 01:30:00", "2026-10-24 23:30:00"),
    ("2026-10-25 02:00:00", "2026-10-25 00:00:00"),  # first pass (CEST)
    ("2026-10-25 02:59:00", "2026-10-25 00:59:00"),
    ("2026-10-25 02:00:00", "2026-10-25 01:00:00"),  # second pass (CET)
    ("2026-10-25 02:59:00", "2026-10-25 01:59:00"),
    ("2026-10-25 03:00:00", "2026-10-25 02:00:00"),
]


@pytest.mark.parametrize("newest_first", [False, True], ids=["oldest first", "newest first"])
def test_naive_local_times_across_both_dst_changes_become_the_right_instants(
    tmp_path, station, newest_first
):
    rows = [(local, expected, n) for n, (local, expected) in enumerate(DST_ROWS)]
    if newest_first:
        rows.reverse()
    content = "time,torque\n" + "".join(f"{local},{n}\n" for local, _, n in rows)

    import_csv(tmp_path, content, "--timezone", "Europe/Berlin")

    assert [(ts, s["torque"]) for ts, _, s in stored(station)] == [
        (utc(expected), float(n)) for _, expected, n in sorted(rows, key=lambda r: r[2])
    ]


@pytest.mark.parametrize("newest_first", [False, True], ids=["oldest first", "newest first"])
@pytest.mark.parametrize("night", ["2026-03-29", "2026-10-25"], ids=["spring", "autumn"])
def test_a_local_time_series_across_a_dst_change_reads_back_as_every_instant(newest_first, night):
    berlin = ZoneInfo("Europe/Berlin")
    start = utc(f"{night} 00:00:00") - dt.timedelta(hours=1)
    instants = [start + dt.timedelta(seconds=7 * n) for n in range(4 * 3600 // 7)]
    if newest_first:
        instants.reverse()
    reader = TimestampReader(zone=berlin)

    read = [
        reader.read(i.astimezone(berlin).replace(tzinfo=None).isoformat(sep=" ")) for i in instants
    ]

    assert read == [int(i.timestamp() * 1000) for i in instants]


def test_timestamps_with_an_offset_keep_it_whatever_the_timezone(tmp_path, station):
    import_csv(
        tmp_path,
        "ts,torque\n2026-11-20T10:00:00+01:00,1\n2026-11-20T09:00:01Z,2\n",
        "--timezone",
        "America/New_York",
    )

    assert [ts for ts, _, _ in stored(station)] == [
        utc("2026-11-20 09:00:00"),
        utc("2026-11-20 09:00:01"),
    ]


def test_a_local_time_the_clocks_skipped_is_refused_with_its_line(tmp_path, station):
    content = "ts,torque\n2026-03-29 01:59:00,1\n2026-03-29 02:30:00,2\n"

    with pytest.raises(CommandError, match=r"line 3, column 'ts'.*does not exist"):
        import_csv(tmp_path, content, "--timezone", "Europe/Berlin")


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("1790000000", "2026-09-21 14:13:20"),  # epoch seconds
        ("1790000000.25", "2026-09-21 14:13:20.250"),
        ("1790000000123", "2026-09-21 14:13:20.123"),  # epoch milliseconds
        ("1790000000123456", "2026-09-21 14:13:20.123"),  # microseconds
        ("2026-09-21 14:13:20.123", "2026-09-21 14:13:20.123"),  # historian ISO-ish
        ("2026-09-21T16:13:20.123456+02:00", "2026-09-21 14:13:20.123"),
        ("21.09.2026 14:13:20", "2026-09-21 14:13:20"),
        ("21.09.2026 14:13:20,5", "2026-09-21 14:13:20.500"),
        ("2026/09/21 14:13:20", "2026-09-21 14:13:20"),
        ("21-Sep-2026 14:13:20", "2026-09-21 14:13:20"),
        ("09/21/2026 2:13:20 PM", "2026-09-21 14:13:20"),
    ],
)
def test_timestamp_formats_are_recognised(cell, expected):
    reader = TimestampReader()

    assert reader.read(cell) == int(utc(expected).timestamp() * 1000)


def test_an_explicit_timestamp_format_reads_day_first_slashes(tmp_path, station):
    import_csv(
        tmp_path,
        "ts,torque\n05/06/2026 08:00:00,1\n",
        "--timestamp-format",
        "%d/%m/%Y %H:%M:%S",
    )

    assert [ts for ts, _, _ in stored(station)] == [utc("2026-06-05 08:00:00")]


def test_the_timestamp_column_is_found_by_its_name_or_given(tmp_path, station):
    import_csv(tmp_path, "torque,Time,angle\n1.5,2026-11-20 08:00:00,2\n")
    other = StationFactory(code="ST6")
    import_csv(
        tmp_path,
        "torque,recorded,angle\n1.5,2026-11-20 08:00:00,2\n",
        "--timestamp-column",
        "recorded",
        station="ST6",
    )

    for where in (station, other):
        assert stored(where) == [(utc("2026-11-20 08:00:00"), 0, {"torque": 1.5, "angle": 2.0})]


# -- separators, numbers, columns -------------------------------------------------------------


def test_decimal_commas_are_read_with_a_semicolon_separator(tmp_path, station):
    output = import_csv(
        tmp_path,
        "Zeit;torque [Nm];angle\n20.11.2026 09:22:47,123;43,21;31\n20.11.2026 09:22:48;-0,5;\n",
        "--sep",
        ";",
    )

    assert stored(station) == [
        (utc("2026-11-20 09:22:47.123"), 0, {"torque": 43.21, "angle": 31.0}),
        (utc("2026-11-20 09:22:48"), 0, {"torque": -0.5}),
    ]
    assert "decimal commas" in output


def test_the_separator_is_taken_from_the_header_when_not_given(tmp_path, station):
    import_csv(tmp_path, "ts\ttorque\tangle\n2026-11-20 08:00:00\t1.5\t2\n")

    assert stored(station) == [(utc("2026-11-20 08:00:00"), 0, {"torque": 1.5, "angle": 2.0})]


def test_text_columns_are_ignored_and_reported(tmp_path, station):
    output = import_csv(
        tmp_path, "ts,status,torque\n2026-11-20 08:00:00,OK,1.5\n2026-11-20 08:00:01,NOK,1.6\n"
    )

    assert [s for _, _, s in stored(station)] == [{"torque": 1.5}, {"torque": 1.6}]
    assert "ignored column 'status': not numeric: 'OK' at line 2" in output


def test_unknown_signal_columns_are_declared_on_the_station_with_the_header_unit(tmp_path, station):
    StationSignal.objects.create(station=station, name="torque", unit="N·m", nominal_max=50)

    output = import_csv(
        tmp_path,
        "ts,torque [kN],angle [°],Current,temperature\n2026-11-20 08:00:00,1,2,3,4\n",
    )

    declared = {
        s.name: (s.unit, s.nominal_max) for s in StationSignal.objects.filter(station=station)
    }
    assert declared == {"torque": ("N·m", 50), "angle": ("°", None), "temperature": ("", None)}
    assert "declared on the station (audited): angle, temperature" in output
    audited = AuditEntry.objects.filter(model="mes.stationsignal", action="create")
    assert sorted(entry.after["name"] for entry in audited) == ["angle", "temperature"]
    assert {entry.source for entry in audited} == {"command"}


def test_no_declare_signals_leaves_the_station_signals_alone(tmp_path, station):
    import_csv(tmp_path, "ts,angle\n2026-11-20 08:00:00,2\n", "--no-declare-signals")

    assert not StationSignal.objects.filter(station=station).exists()


# -- stations --------------------------------------------------------------------------------


def test_create_station_adds_it_after_the_last_station_of_the_line_with_an_audit_entry(
    tmp_path,
):
    line = LineFactory(code="L7")
    StationFactory(line=line, position=3)
    LineFactory(code="L8")

    output = import_csv(
        tmp_path,
        "ts,torque\n2026-11-20 08:00:00,1\n",
        "--create-station",
        "--line",
        "L7",
        station="NEW1",
    )

    station = Station.objects.get(code="NEW1")
    assert (station.line, station.position, station.name) == (line, 4, "NEW1")
    assert stored(station) == [(utc("2026-11-20 08:00:00"), 0, {"torque": 1.0})]
    entry = AuditEntry.objects.get(model="mes.station", object_id=str(station.pk))
    assert (entry.action, entry.source) == ("create", "command")
    assert "created station NEW1 on line L7" in output


def test_create_station_needs_a_line_when_the_plant_has_several(tmp_path):
    LineFactory()
    LineFactory()

    with pytest.raises(CommandError, match="--line"):
        import_csv(tmp_path, "ts,torque\n2026-11-20 08:00:00,1\n", "--create-station", station="N")
    assert not Station.objects.filter(code="N").exists()


def test_create_station_uses_the_only_line_without_being_told(tmp_path):
    line = LineFactory()

    import_csv(tmp_path, "ts,torque\n2026-11-20 08:00:00,1\n", "--create-station", station="N")

    assert Station.objects.get(code="N").line == line


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "arguments", "message"),
    [
        (
            "ts,torque\n2026-11-20 08:00:00,1\nyesterday,2\n",
            (),
            r"line 3, column 'ts': cannot read 'yesterday' as a timestamp",
        ),
        (
            "ts,torque\n2026-11-20 08:00:00,1\n2026-11-20 08:00:01,1.5x\n",
            (),
            r"line 3, column 'torque': '1.5x' is not a number",
        ),
        ("ts,torque\n2026-11-20 08:00:00,inf\n", (), r"line 2, column 'torque': .*not a finite"),
        ("ts,torque\n2026-11-20 08:00:00,1,2\n", (), r"line 2: 3 cells, the header names 2"),
        ("ts,state\n2026-11-20 08:00:00,OK\n", (), r"no numeric column.*'state'"),
        ("ts,torque\n", (), r"no data rows"),
        ("", (), r"empty"),
        ("n,torque\n1,2\n", (), r"line 2, column 'n'.*before 2000"),
        ("ts,torque\n2099-01-01 00:00:00,1\n", (), r"line 2, column 'ts'.*in the future"),
        ("ts,torque\n2026-11-20 08:00:00,1\n", ("--timezone", "Mars/Olympus"), "time zone"),
        ("ts,torque\n2026-11-20 08:00:00,1\n", ("--timestamp-column", "when"), "when"),
    ],
    ids=[
        "timestamp",
        "text in a signal",
        "infinite",
        "too many cells",
        "no numeric column",
        "no rows",
        "empty file",
        "row numbers",
        "future",
        "timezone",
        "timestamp column",
    ],
)
def test_bad_input_is_refused_with_where_and_why(tmp_path, station, content, arguments, message):
    with pytest.raises(CommandError, match=message):
        import_csv(tmp_path, content, *arguments)


def test_rows_before_a_bad_row_are_stored_and_a_corrected_file_completes_the_import(
    tmp_path, station
):
    good = "".join(f"2026-11-20 08:00:{s:02d},{s}\n" for s in range(6))
    with pytest.raises(CommandError, match=r"line 8.*6 samples before it were stored"):
        import_csv(
            tmp_path, "ts,torque\n" + good + "2026-11-20 08:00:06,bad\n", "--batch-size", "3"
        )
    assert len(stored(station)) == 6

    output = import_csv(tmp_path, "ts,torque\n" + good + "2026-11-20 08:00:06,6\n")

    assert "1 samples stored, 6 already there" in output
    assert len(stored(station)) == 7


def test_skip_bad_rows_counts_and_names_them(tmp_path, station):
    output = import_csv(
        tmp_path,
        "ts,torque\n"
        "2026-11-20 08:00:00,1\n"
        "never,2\n"
        "2026-11-20 08:00:01,n/a\n"
        "2026-11-20 08:00:02,3\n",
        "--skip-bad-rows",
    )

    assert [s["torque"] for _, _, s in stored(station)] == [1.0, 3.0]
    assert "4 rows read, 2 samples stored, 0 already there, 2 skipped" in output
    assert "skipped line 3, column 'ts'" in output
    assert "skipped line 4, column 'torque'" in output


def test_an_unknown_station_is_refused_without_create_station(tmp_path):
    with pytest.raises(CommandError, match=r"unknown station .NOPE.*--create-station"):
        import_csv(tmp_path, "ts,torque\n2026-11-20 08:00:00,1\n", station="NOPE")
    assert not Sample.objects.exists()


def test_check_reads_the_whole_file_and_stores_or_declares_nothing(tmp_path, station):
    content = "ts,torque\n2026-11-20 08:00:00,1\n2026-11-20 08:00:00,2\n2026-11-20 08:00:01,\n"

    output = import_csv(tmp_path, content, "--check")

    assert "3 rows read, 2 samples ready, 1 skipped" in output
    assert "nothing stored" in output
    assert not Sample.objects.exists()
    assert not StationSignal.objects.exists()
    with pytest.raises(CommandError, match=r"line 3, column 'torque'"):
        import_csv(tmp_path, "ts,torque\n2026-11-20 08:00:00,1\n2026-11-20 08:00:01,x\n", "--check")
