"""Importing a historian's CSV export as one station's telemetry (`manage.py import_csv`).

A historian export is one timestamp column and one column per signal. Each data row becomes one
sample of the station and takes the same path as live data: it is joined with the MES state
valid at its own instant (`telemetry.enrichment.StateHistory`: unit/VIN, work order, product,
firmware, shift) and written with the ingest worker's binary COPY (`telemetry.storage`), whose
key (station, ts, seq) makes importing the same file again store nothing new.

Reading. The file is streamed in batches (5,000 rows by default), never loaded whole; a reader
thread parses and joins the next batch while two PostgreSQL sessions store the ones before it.
Per row the work is the CSV split, one timestamp parse, a float per cell, a bisect for the MES
state and the row's COPY encoding: the reader makes ~250k rows/s, so PostgreSQL sets the pace.

The rules (docs/telemetry.md, "Importing historian CSV"):

- Separator: `--sep`, else the most frequent of `,` `;` tab `|` in the header line.
- Timestamp column: `--timestamp-column`, else the column named ts, timestamp, time or datetime
  (any case), else the first. ISO 8601 (offset or not, `T` or space, any fraction), epoch
  seconds, milliseconds, microseconds or nanoseconds (told apart by magnitude), a few historian
  formats (`22.11.2026 09:22:47`, `2026/11/22 09:22:47`, `22-Nov-2026 09:22:47`,
  `11/22/2026 9:22:47 AM`), or any strptime format given with `--timestamp-format`. Instants
  are kept to the millisecond (the resolution of the telemetry pipeline).
- Naive timestamps are UTC unless `--timezone` names the zone the historian wrote them in. In
  the hour that repeats when clocks go back, the file's order tells the two passes apart.
  An instant the clocks skipped is an error.
- Signal columns: every other column whose first non-empty value is a number. A column whose
  first value is text is ignored and reported. A header `torque [N·m]` names the signal
  `torque` with the unit N·m. Decimal commas (`43,21`) are recognised when the separator is not
  a comma. An empty cell or NaN is a missing value for that sample (not zero); a row without any
  value is skipped and counted.
- seq: samples sharing a timestamp get 0, 1, 2… in file order. A file not in time order is read
  a second time with every timestamp kept in memory, so equal timestamps far apart still get
  distinct seqs; a sorted file (ascending or descending) needs no memory for that.
- Bad rows (an unreadable timestamp, text in a signal column, an infinite value, more cells
  than the header, a timestamp more than 5 minutes in the future) stop the import with the line
  and column, unless `skip_bad_rows`, which counts them and reports the first few.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import gzip
import math
import re
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import IO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import Max

from mes.audit import audit_record
from mes.errors import Conflict, InvalidInput, UnknownReference
from mes.models import AuditAction, Line, Station, StationSignal, StationType
from telemetry.enrichment import StateHistory, ms_datetime, read_snapshot
from telemetry.payloads import FUTURE_TOLERANCE_MS, MAX_SIGNAL_NAME
from telemetry.storage import CopyRows, SampleStore, WriteResult, database_parameters

DEFAULT_BATCH_ROWS = 5_000
MAX_BATCH_ROWS = 50_000
# Two COPY sessions: one PostgreSQL backend saturates a core, and the reader makes ~250k rows/s.
# Alternating runs on the 2-core VM (1M rows, docs/telemetry.md): 1 writer 62-87k rows/s,
# 2 writers ~100k.
DEFAULT_WRITERS = 2
MAX_WRITERS = 4
TIMESTAMP_COLUMN_NAMES = ("ts", "timestamp", "time", "datetime")
SEPARATORS = (",", ";", "\t", "|")
BAD_ROW_EXAMPLES = 10
AUDIT_SOURCE = "command"

# Exports of common historians and spreadsheets, tried in this order when a timestamp is not
# ISO 8601. Day-first and month-first dates with slashes are ambiguous (05/06/2026), so only
# the US form with AM/PM is guessed; give --timestamp-format for the others.
HISTORIAN_FORMATS = (
    "%d.%m.%Y %H:%M:%S.%f",
    "%d.%m.%Y %H:%M:%S,%f",
    "%d.%m.%Y %H:%M:%S",
    "%d.%m.%Y %H:%M",
    "%Y/%m/%d %H:%M:%S.%f",
    "%Y/%m/%d %H:%M:%S",
    "%Y/%m/%d %H:%M",
    "%d-%b-%Y %H:%M:%S.%f",
    "%d-%b-%Y %H:%M:%S",
    "%d-%b-%y %H:%M:%S",
    "%m/%d/%Y %I:%M:%S.%f %p",
    "%m/%d/%Y %I:%M:%S %p",
)

# StationSignal names (mes.models): only such columns can be declared on the station.
DECLARABLE_SIGNAL = re.compile(r"[a-z][a-z0-9_]{0,63}")
SIGNAL_UNIT_LENGTH = 16
_HEADER_UNIT = re.compile(r"^(.*?)\s*\[([^\[\]]*)\]$")
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EPOCH_NAIVE = dt.datetime(1970, 1, 1)
_MS = dt.timedelta(milliseconds=1)
# Longer than any repeated stretch of local time (DST changes are 1 hour, at most 2).
_REPEATED_HOURS = dt.timedelta(hours=3)
# Epoch numbers below this (2000-01-01 in seconds) are not instants of a historian export but
# row numbers, counters or spreadsheet serial dates: refused rather than stored in 1970.
_EPOCH_FLOOR_S = 946_684_800


class ImportRefused(Exception):
    """The file cannot be imported as asked; the message says where and why."""


class _NotInTimeOrder(Exception):
    """The file went back in time after going forward (or the reverse): read it again."""


# -- timestamps -------------------------------------------------------------------------------


class TimestampReader:
    """Reads one timestamp cell as epoch milliseconds.

    The format is chosen from the first cell and kept while it reads the cells; a cell it
    cannot read makes the reader look again among all formats (a file may write whole seconds
    without a fraction), and only a cell no format reads is an error (ValueError).
    """

    def __init__(self, *, zone: ZoneInfo | None = None, timestamp_format: str | None = None):
        self.zone = zone
        self.fixed_format = timestamp_format
        self.description = "not seen yet"
        self._parse: Callable[[str], int] = self._first
        # Local times across a DST change (see _local_ms).
        self._previous: dt.datetime | None = None
        self._previous_fold: int | None = None
        self._descending = False
        self._minute: int | None = None
        self._minute_offset_ms = 0

    def read(self, text: str) -> int:
        try:
            return self._parse(text)
        except (ValueError, OverflowError):
            pass
        self._choose(text)
        return self._parse(text)

    def _first(self, text: str) -> int:
        raise ValueError("no format chosen yet")

    def _choose(self, text: str) -> None:
        """Pick the format that reads `text`; ValueError when none does."""
        if self.fixed_format is not None:
            fixed = self.fixed_format
            self._parse = lambda cell: self._instant(dt.datetime.strptime(cell, fixed))
            self.description = f"strptime {fixed!r}"
            dt.datetime.strptime(text, fixed)  # raises with Python's own explanation
            return
        try:
            _number_text(text)
        except ValueError:
            pass
        else:
            self._parse, self.description = self._epoch, "epoch (s, ms, µs or ns by magnitude)"
            return
        try:
            dt.datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            self._parse, self.description = self._iso, "ISO 8601"
            return
        for historian in HISTORIAN_FORMATS:
            try:
                dt.datetime.strptime(text, historian)
            except ValueError:
                continue
            self._parse = lambda cell, f=historian: self._instant(dt.datetime.strptime(cell, f))
            self.description = f"strptime {historian!r}"
            return
        raise ValueError(
            "not ISO 8601, an epoch number or a known historian format (give --timestamp-format)"
        )

    def _epoch(self, text: str) -> int:
        value = _number_text(text)
        if type(value) is int:
            magnitude = abs(value)
            if magnitude < 10**11:
                ms = value * 1000
            elif magnitude < 10**14:
                ms = value
            elif magnitude < 10**17:
                ms = value // 1000
            else:
                ms = value // 1_000_000
        else:
            if not math.isfinite(value):
                raise ValueError("not a finite number")
            magnitude = abs(value)
            if magnitude < 1e11:
                scale = 1e3
            elif magnitude < 1e14:
                scale = 1.0
            elif magnitude < 1e17:
                scale = 1e-3
            else:
                scale = 1e-6
            ms = round(value * scale)
        if ms < _EPOCH_FLOOR_S * 1000:
            raise ValueError(
                "an epoch number before 2000-01-01: a counter or a spreadsheet serial date, not "
                "a Unix timestamp (give --timestamp-column)"
            )
        return ms

    def _iso(self, text: str) -> int:
        return self._instant(dt.datetime.fromisoformat(text))

    def _instant(self, value: dt.datetime) -> int:
        if value.tzinfo is not None:
            return (value - _EPOCH) // _MS
        local_ms = (value - _EPOCH_NAIVE) // _MS
        if self.zone is None:
            return local_ms
        # Offsets change on whole minutes: within the minute of the last unambiguous time the
        # offset is known, which spares two zoneinfo look-ups per sample (they halved the rate).
        minute = local_ms // 60_000
        if minute == self._minute:
            return local_ms - self._minute_offset_ms
        ms = self._local_ms(value)
        if self._previous_fold is None:
            self._minute, self._minute_offset_ms = minute, local_ms - ms
        else:
            self._minute = None
        return ms

    def _local_ms(self, value: dt.datetime) -> int:
        """A naive local time in `zone`. Where the clocks went back the same local times occur
        twice: in a file in time order the second pass starts with a step back in local time
        (a step forward in a file sorted newest first), which switches to the other offset."""
        zone = self.zone
        offset = value.replace(tzinfo=zone).utcoffset()
        second = value.replace(tzinfo=zone, fold=1).utcoffset()
        previous, previous_fold = self._previous, self._previous_fold
        if offset == second:
            self._previous, self._previous_fold = value, None
        elif offset < second:
            raise ValueError(f"{value} does not exist in {zone.key}: the clocks skipped it")
        else:
            if previous_fold is None or abs(value - previous) > _REPEATED_HOURS:
                # Entering the repeated hour: from before it (a file in time order) or from
                # after it (a file sorted newest first, which starts in the second pass).
                if previous is not None and value != previous:
                    self._descending = value < previous
                fold = 1 if self._descending else 0
            elif self._descending:
                fold = 0 if value > previous else previous_fold
            else:
                fold = 1 if value < previous else previous_fold
            if fold:
                offset = second
            self._previous, self._previous_fold = value, fold
        return (value - offset - _EPOCH_NAIVE) // _MS


def _number_text(text: str) -> int | float:
    """An integer when the text is one (exact epoch arithmetic), else a float; `,` as decimal."""
    if "." in text or "," in text or "e" in text or "E" in text:
        return float(text.replace(",", "."))
    return int(text)


def timezone_named(name: str | None) -> ZoneInfo | None:
    """The IANA zone for naive timestamps; None for UTC (the fast path)."""
    if name is None or name.upper() in ("UTC", "Z", "ETC/UTC"):
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ImportRefused(
            f"unknown time zone {name!r}: give an IANA name such as Europe/Berlin or UTC"
        ) from error


# -- the header -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    index: int
    header: str
    name: str  # the signal name: the header without a trailing "[unit]"
    unit: str


def _decimal_comma_float(text: str) -> float:
    return float(text.replace(",", "."))


def separator_named(sep: str | None, header_line: str) -> str:
    """`--sep` as given (`\\t` and `tab` mean a tab), or the header's most frequent candidate."""
    if sep is not None:
        if sep in ("\\t", "tab", "TAB"):
            return "\t"
        if len(sep) != 1:
            raise ImportRefused(f"--sep must be one character, got {sep!r}")
        return sep
    counts = {candidate: header_line.count(candidate) for candidate in SEPARATORS}
    best = max(SEPARATORS, key=lambda candidate: counts[candidate])
    return best if counts[best] else ","


def _columns(header: list[str]) -> list[Column]:
    columns, seen = [], {}
    for index, raw in enumerate(header):
        text = raw.strip()
        if not text:
            raise ImportRefused(f"line 1: column {index + 1} has no name")
        match = _HEADER_UNIT.match(text)
        name, unit = (
            (match[1].strip(), match[2].strip()) if match and match[1].strip() else (text, "")
        )
        if len(name) > MAX_SIGNAL_NAME or _CONTROL_CHARACTER.search(name):
            raise ImportRefused(
                f"line 1: column {index + 1} name {name[:64]!r}: 1-{MAX_SIGNAL_NAME} characters, "
                "no control characters"
            )
        if name in seen:
            raise ImportRefused(
                f"line 1: columns {seen[name] + 1} and {index + 1} are both named {name!r}"
            )
        seen[name] = index
        columns.append(Column(index, text, name, unit))
    return columns


def _timestamp_column(columns: list[Column], named: str | None) -> Column:
    if named is not None:
        for column in columns:
            if named in (column.header, column.name):
                return column
        for column in columns:
            if named.lower() in (column.header.lower(), column.name.lower()):
                return column
        raise ImportRefused(
            f"--timestamp-column {named!r}: the header has {[c.header for c in columns]}"
        )
    for column in columns:
        if column.name.lower() in TIMESTAMP_COLUMN_NAMES:
            return column
    return columns[0]


@dataclass(frozen=True)
class Header:
    separator: str
    columns: list[Column]
    timestamp: Column


def open_export(
    path: Path, *, sep: str | None, encoding: str, timestamp_column: str | None
) -> tuple[IO[str], Header]:
    """The file opened for reading past its header line (gzip when it ends in .gz), and the
    header; ImportRefused when the header cannot serve (closing the file then)."""
    opener = gzip.open if Path(path).suffix == ".gz" else open
    try:
        handle = opener(path, "rt", encoding=encoding, newline="")
    except (OSError, LookupError) as error:
        raise ImportRefused(
            f"cannot read {path}: {getattr(error, 'strerror', None) or error}"
        ) from error
    try:
        try:
            header_line = handle.readline()
        except (UnicodeDecodeError, OSError, EOFError) as error:
            raise ImportRefused(f"line 1: {_unreadable(error, encoding)}") from error
        if not header_line.strip():
            raise ImportRefused(f"{path} is empty: the first line must name the columns")
        separator = separator_named(sep, header_line)
        columns = _columns(next(csv.reader([header_line], delimiter=separator)))
        if len(columns) < 2:
            raise ImportRefused(
                f"line 1: only one column ({columns[0].header!r}); a timestamp column and at "
                f"least one signal column are needed (is the separator {separator!r} right? "
                "give --sep)"
            )
        return handle, Header(separator, columns, _timestamp_column(columns, timestamp_column))
    except BaseException:
        handle.close()
        raise


def read_header(
    path: Path, *, sep: str | None = None, encoding: str = "utf-8-sig", timestamp_column=None
) -> Header:
    """Check the header before anything is created for the file."""
    handle, header = open_export(
        path, sep=sep, encoding=encoding, timestamp_column=timestamp_column
    )
    handle.close()
    return header


# -- what an import did -------------------------------------------------------------------------


@dataclass
class ImportReport:
    station: str
    separator: str = ","
    timestamp_column: str = ""
    timestamp_format: str = ""
    decimal_comma: bool = False
    rows: int = 0  # data rows read (blank lines not counted)
    samples: int = 0  # rows that became a sample (stored, already there, or checked)
    stored: int = 0
    already_there: int = 0
    without_values: int = 0  # rows whose every signal cell was empty
    bad_rows: int = 0
    bad_examples: list[str] = field(default_factory=list)
    first_ms: int | None = None
    last_ms: int | None = None
    older_than_retention: int = 0
    signals: dict[str, str] = field(default_factory=dict)  # signal → unit ("" unknown)
    ignored_columns: dict[str, str] = field(default_factory=dict)  # header → why
    read_twice: bool = False  # the file was not in time order
    declared: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def skipped(self) -> int:
        return self.without_values + self.bad_rows

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


# -- the import ---------------------------------------------------------------------------------


class HistorianImport:
    """One CSV file into one station's telemetry: `run()` returns the ImportReport.

    The reader (`_next_batch`, `_history_for`) runs in one thread of its own, which also holds
    its own Django connection for the MES state; storing runs on the event loop with the ingest
    worker's SampleStore, each writer on a session of its own that commits every batch. The
    MES rows an import should see must therefore be committed (in tests:
    `django_db(transaction=True)`), and what it stores is committed batch by batch.
    """

    def __init__(
        self,
        *,
        station: Station,
        path: Path,
        sep: str | None = None,
        timestamp_column: str | None = None,
        timestamp_format: str | None = None,
        timezone: str | None = None,
        encoding: str = "utf-8-sig",
        batch_rows: int = DEFAULT_BATCH_ROWS,
        skip_bad_rows: bool = False,
        writers: int = DEFAULT_WRITERS,
        check_only: bool = False,
        progress: Callable[[ImportReport], None] | None = None,
    ) -> None:
        if not 1 <= batch_rows <= MAX_BATCH_ROWS:
            raise ImportRefused(f"the batch size must be 1 to {MAX_BATCH_ROWS} rows")
        if not 1 <= writers <= MAX_WRITERS:
            raise ImportRefused(f"the writers must be 1 to {MAX_WRITERS}")
        self.station_id, self.line_id = station.pk, station.line_id
        self.path = Path(path)
        self.sep = sep
        self.timestamp_column = timestamp_column
        self.timestamp_format = timestamp_format
        self.zone = timezone_named(timezone)
        self.encoding = encoding
        self.batch_rows = batch_rows
        self.skip_bad_rows = skip_bad_rows
        self.writers = writers
        self.check_only = check_only  # read and join the whole file, store nothing
        self.progress = progress
        self.report = ImportReport(station=station.code)
        self._database = {**database_parameters(), "application_name": "aegis-import-csv"}
        self._stations = [(station.pk, station.code, station.line_id)]
        self._history: StateHistory | None = None
        self._history_since_ms = 0
        self._history_reach_ms = 0
        self._file: IO[str] | None = None
        self._stored_before = 0  # by an earlier pass over the same file

    # -- running --------------------------------------------------------------------------------

    def run(self) -> ImportReport:
        started = time.perf_counter()
        try:
            self._open(keep_every_timestamp=False)
            asyncio.run(self._pipeline())
        finally:
            self._close_file()
            self.report.seconds = time.perf_counter() - started
        return self.report

    async def _pipeline(self) -> None:
        """Parse and join the next batch in the reader thread while the writers store the
        batches before it, each writer on its own PostgreSQL session (none when checking)."""
        loop = asyncio.get_running_loop()
        idle = [SampleStore(self._database) for _ in range(self.writers)]
        stores = list(idle)
        in_flight: deque[tuple[asyncio.Task[WriteResult], SampleStore]] = deque()
        reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="import-csv")

        async def settle_oldest() -> None:
            task, store = in_flight.popleft()
            idle.append(store)
            self._stored(await task)

        try:
            while True:
                parsing = loop.run_in_executor(reader, self._next_batch)
                if not idle:
                    await settle_oldest()
                try:
                    rows = await parsing
                except _NotInTimeOrder:
                    while in_flight:  # the first pass's count is complete before it restarts
                        await settle_oldest()
                    await loop.run_in_executor(reader, self._read_again)
                    continue
                if rows is None:
                    break
                if self.check_only:
                    if self.progress is not None:
                        self.progress(self.report)
                    continue
                store = idle.pop()
                in_flight.append((asyncio.create_task(store.write(rows)), store))
            while in_flight:
                await settle_oldest()
        finally:
            # Failing (a bad row, a database error): what was committed is still counted, so
            # the message can say how much of the file is stored.
            while in_flight:
                with contextlib.suppress(psycopg.Error, OSError):
                    await settle_oldest()
            for store in stores:
                await store.close()
            await loop.run_in_executor(reader, _close_connection)  # the reader thread's own
            reader.shutdown()

    def _stored(self, result: WriteResult) -> None:
        report = self.report
        report.stored += result.stored
        ours = min(result.duplicates, self._stored_before)  # stored by the first pass
        self._stored_before -= ours
        report.already_there += result.duplicates - ours
        if self.progress is not None:
            self.progress(report)

    # -- the file ------------------------------------------------------------------------------

    def _open(self, *, keep_every_timestamp: bool) -> None:
        handle, header = open_export(
            self.path, sep=self.sep, encoding=self.encoding, timestamp_column=self.timestamp_column
        )
        self._file = handle
        separator, columns, stamp = header.separator, header.columns, header.timestamp
        report = self.report
        report.separator, report.timestamp_column = separator, stamp.header
        self._reader = csv.reader(handle, delimiter=separator)
        self._width = len(columns)
        self._stamp = stamp
        self._signal_columns: list[tuple[int, str]] = []
        # Columns without a value so far: classified by their first non-empty cell.
        self._undecided = [c for c in columns if c is not stamp]
        self._units = {c.name: c.unit for c in columns}
        self._headers = {c.index: c.header for c in columns}
        self._timestamps = TimestampReader(zone=self.zone, timestamp_format=self.timestamp_format)
        self._number: Callable[[str], float] = float
        self._seq_counts: dict[int, int] | None = {} if keep_every_timestamp else None
        self._last_ts: int | None = None
        self._last_seq = 0
        self._direction = 0
        self._newest_ms = time.time_ns() // 1_000_000 + FUTURE_TOLERANCE_MS
        self._retention_ms = (
            time.time_ns() // 1_000_000 - settings.TELEMETRY_RETENTION_HOURS * 3_600_000
        )

    def _read_again(self) -> None:
        """Start over with every timestamp remembered. The rows the first pass stored (the
        file's beginning) come back first as duplicates: they stay counted as stored."""
        self._close_file()
        self._stored_before = self.report.stored
        self.report = ImportReport(
            station=self.report.station, stored=self.report.stored, read_twice=True
        )
        self._open(keep_every_timestamp=True)

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    # -- batches -------------------------------------------------------------------------------

    def _next_batch(self) -> CopyRows | None:
        """The next rows of the file, parsed, numbered and joined; None at the end."""
        report = self.report
        reader = self._reader
        width = self._width
        stamp_index, stamp_name = self._stamp.index, self._stamp.header
        read_timestamp = self._timestamps.read
        number = self._number
        signal_columns = self._signal_columns
        newest = self._newest_ms
        counts = self._seq_counts
        last_ts, last_seq, direction = self._last_ts, self._last_seq, self._direction
        samples: list[tuple[int, int, dict[str, float]]] = []
        consumed = 0
        records = islice(reader, self.batch_rows)
        while True:
            try:
                record = next(records, None)
            except (csv.Error, UnicodeDecodeError, OSError, EOFError) as error:
                raise ImportRefused(
                    f"line {reader.line_num + 2}: {_unreadable(error, self.encoding)}"
                ) from error
            if record is None:
                break
            consumed += 1
            if not record:
                continue  # a blank line
            report.rows += 1
            line = reader.line_num + 1  # the reader started after the header line
            if len(record) != width:
                if len(record) < width:
                    record += [""] * (width - len(record))
                elif any(cell.strip() for cell in record[width:]):
                    self._bad(line, None, f"{len(record)} cells, the header names {width}")
                    continue
            text = record[stamp_index].strip()
            if not text:
                if not any(cell.strip() for cell in record):
                    report.rows -= 1  # only separators: a blank line of a spreadsheet export
                    continue
                self._bad(line, stamp_name, "no timestamp")
                continue
            try:
                ts = read_timestamp(text)
            except (ValueError, OverflowError) as error:
                self._bad(line, stamp_name, f"cannot read {text[:64]!r} as a timestamp: {error}")
                continue
            if ts > newest:
                self._bad(
                    line,
                    stamp_name,
                    f"{text[:64]!r} is more than {FUTURE_TOLERANCE_MS // 60_000} minutes in the "
                    "future (wrong --timezone, or a wrong epoch unit?)",
                )
                continue
            signals: dict[str, float] = {}
            problem = None
            for index, name in signal_columns:
                cell = record[index]
                if not cell:
                    continue
                try:
                    value = number(cell)
                except ValueError:
                    value, number = self._odd_number(cell)
                    if value is None:
                        continue
                    if type(value) is str:
                        problem = (index, value)
                        break
                if value - value:  # NaN or infinite
                    if value != value:
                        continue  # NaN: the historian's "no value"
                    problem = (index, f"{cell!r} is not a finite number")
                    break
                signals[name] = value
            if self._undecided and problem is None:
                problem = self._classify(record, line, signals)
                number = self._number
            if problem is not None:
                index, why = problem
                self._bad(line, self._headers[index], why)
                continue
            if not signals:
                report.without_values += 1
                continue
            if counts is None:
                if ts == last_ts:
                    last_seq += 1
                else:
                    if last_ts is not None:
                        step = 1 if ts > last_ts else -1
                        if direction == 0:
                            direction = step
                        elif step != direction:
                            raise _NotInTimeOrder(line)
                    last_ts, last_seq = ts, 0
                seq = last_seq
            else:
                seq = counts.get(ts, 0)
                counts[ts] = seq + 1
            samples.append((ts, seq, signals))
        self._last_ts, self._last_seq, self._direction = last_ts, last_seq, direction
        self._number = number
        report.timestamp_format = self._timestamps.description
        if not consumed:
            self._finish()
            return None
        return self._joined(samples)

    def _joined(self, samples: list[tuple[int, int, dict[str, float]]]) -> CopyRows:
        """COPY rows of the samples with the MES state of each one's instant."""
        rows = CopyRows()
        if not samples:
            return rows
        report = self.report
        report.samples += len(samples)
        earliest = min(ts for ts, _, _ in samples)
        latest = max(ts for ts, _, _ in samples)
        lookup = self._history_for(earliest).lookup
        station_id = self.station_id
        for ts, seq, signals in samples:
            rows.add(station_id, ts, seq, lookup(station_id, ts), signals)
        report.older_than_retention += sum(1 for ts, _, _ in samples if ts < self._retention_ms)
        if report.first_ms is None or earliest < report.first_ms:
            report.first_ms = earliest
        if report.last_ms is None or latest > report.last_ms:
            report.last_ms = latest
        return rows

    def _finish(self) -> None:
        report = self.report
        report.signals = {name: self._units[name] for _, name in self._signal_columns}
        for column in self._undecided:
            report.ignored_columns.setdefault(column.header, "empty in every row")
        if not self._signal_columns:
            if not report.rows:
                raise ImportRefused(f"{self.path} has a header but no data rows")
            ignored = ", ".join(f"{h!r} ({why})" for h, why in report.ignored_columns.items())
            raise ImportRefused(
                f"no numeric column: besides the timestamp column {self._stamp.header!r} the "
                f"file has {ignored or 'nothing'}"
            )

    def _odd_number(self, cell: str) -> tuple[float | str | None, Callable[[str], float]]:
        """A cell float() refused: (value or None for missing, or the problem as text), and the
        number reader from now on (decimal commas switch it for the rest of the file)."""
        text = cell.strip()
        if not text:
            return None, self._number
        if self.report.separator != "," and "," in text and "." not in text:
            try:
                value = _decimal_comma_float(text)
            except ValueError:
                pass
            else:
                self._number = _decimal_comma_float
                self.report.decimal_comma = True
                return value, self._number
        return f"{text[:64]!r} is not a number", self._number

    def _classify(
        self, record: list[str], line: int, signals: dict[str, float]
    ) -> tuple[int, str] | None:
        """Decide the columns still without a value from this row's cells; add the values of
        those that are signals to `signals`. Returns a bad cell as (column index, problem)."""
        undecided = []
        problem = None
        for column in self._undecided:
            cell = record[column.index]
            if not cell.strip():
                undecided.append(column)
                continue
            try:
                value = self._number(cell)
            except ValueError:
                value, self._number = self._odd_number(cell)
            if type(value) is str:
                self.report.ignored_columns[column.header] = (
                    f"not numeric: {cell.strip()[:32]!r} at line {line}"
                )
                continue
            self._signal_columns.append((column.index, column.name))
            if value - value:  # NaN or infinite
                if value == value and problem is None:
                    problem = (column.index, f"{cell.strip()!r} is not a finite number")
                continue
            signals[column.name] = value
        self._undecided = undecided
        if not undecided and not self._signal_columns:
            self._finish()  # every column decided, none numeric: refused now, not at the end
        return problem

    def _bad(self, line: int, column: str | None, problem: str) -> None:
        where = f"line {line}" + (f", column {column!r}" if column is not None else "")
        if not self.skip_bad_rows:
            raise ImportRefused(f"{where}: {problem}")
        report = self.report
        report.bad_rows += 1
        if len(report.bad_examples) < BAD_ROW_EXAMPLES:
            report.bad_examples.append(f"{where}: {problem}")

    # -- the MES state -------------------------------------------------------------------------

    def _history_for(self, earliest_ms: int) -> StateHistory:
        """The station's MES state from `earliest_ms` on (reloaded, reaching back twice as far
        each time, when a batch goes back before what is loaded: a file sorted newest first
        reloads a few times, not once per batch)."""
        history = self._history
        if history is not None and earliest_ms >= self._history_since_ms:
            return history
        since_ms = earliest_ms
        if history is not None:
            self._history_reach_ms = max(
                2 * self._history_reach_ms, self._history_since_ms - earliest_ms
            )
            since_ms = earliest_ms - self._history_reach_ms
        self._history = history = station_history(
            station_id=self.station_id,
            line_id=self.line_id,
            stations=self._stations,
            since=ms_datetime(since_ms),
        )
        self._history_since_ms = since_ms
        return history


# Only this station's facts from `since` on: `StateHistory.load` would read every station's
# history up to now, which for an export of last year is the whole plant's year.
_VISITS_SQL = """
    SELECT id, station_id, unit_id, arrived_at, left_at FROM mes_stationvisit
    WHERE station_id = %(station)s AND (left_at IS NULL OR left_at > %(since)s)
"""
_UNITS_SQL = """
    SELECT u.id, u.serial, u.vin, u.work_order_id, w.product_id
    FROM mes_unit AS u JOIN mes_workorder AS w ON w.id = u.work_order_id
    WHERE u.id IN (SELECT unit_id FROM mes_stationvisit
                   WHERE station_id = %(station)s AND (left_at IS NULL OR left_at > %(since)s))
"""
_FLASHES_SQL = """
    SELECT unit_id, component, version, flashed_at FROM mes_firmwareflash
    WHERE unit_id IN (SELECT unit_id FROM mes_stationvisit
                      WHERE station_id = %(station)s AND (left_at IS NULL OR left_at > %(since)s))
"""
_SHIFTS_SQL = """
    SELECT id, line_id, starts_at, ends_at FROM mes_shift
    WHERE line_id = %(line)s AND ends_at > %(since)s
"""


def station_history(
    *, station_id: int, line_id: int, stations: list[tuple[int, str, int]], since: dt.datetime
) -> StateHistory:
    """One station's MES state history from `since`, read in one snapshot like
    `StateHistory.load` and built by the same `StateHistory.from_rows`."""
    loaded_at, fetched = read_snapshot(
        (
            ("units", _UNITS_SQL),
            ("visits", _VISITS_SQL),
            ("flashes", _FLASHES_SQL),
            ("shifts", _SHIFTS_SQL),
        ),
        {"station": station_id, "line": line_id, "since": since},
    )
    return StateHistory.from_rows(since=since, loaded_at=loaded_at, stations=stations, **fetched)


def _close_connection() -> None:
    connection.close()  # `connection` is the calling thread's: look it up in that thread


def _unreadable(error: BaseException, encoding: str) -> str:
    if isinstance(error, UnicodeDecodeError):
        return (
            f"not {encoding} text ({error.reason} at byte {error.start}); give --encoding, "
            "e.g. cp1252 or utf-16"
        )
    return f"{type(error).__name__}: {error}"


# -- the station and its signals -------------------------------------------------------------


def line_for_new_station(code: str | None) -> Line:
    """The line named by --line (`LINE`, or `SITE/AREA/LINE` where line codes repeat), or the
    plant's only line."""
    if code is None:
        lines = list(Line.objects.select_related("area__site")[:2])
        if len(lines) == 1:
            return lines[0]
        raise UnknownReference(
            "--create-station needs --line CODE: the plant has "
            + ("no line yet" if not lines else "several lines")
        )
    parts = code.split("/")
    found = Line.objects.select_related("area__site")
    if len(parts) == 3:
        found = found.filter(area__site__code=parts[0], area__code=parts[1], code=parts[2])
    elif len(parts) == 1:
        found = found.filter(code=code)
    else:
        raise InvalidInput(f"--line {code!r}: give LINE or SITE/AREA/LINE")
    lines = list(found[:5])
    if not lines:
        raise UnknownReference(f"--line {code!r}: no such line")
    if len(lines) > 1:
        paths = ", ".join(f"{ln.area.site.code}/{ln.area.code}/{ln.code}" for ln in lines)
        raise InvalidInput(f"--line {code!r} names several lines ({paths}): give SITE/AREA/LINE")
    return lines[0]


@transaction.atomic
def import_station_create(
    *, code: str, line: Line, name: str = "", station_type: str = StationType.ASSEMBLY
) -> Station:
    """A station for imported telemetry, placed after the last station of its line, with its
    audit entry (mes.services has no station service: stations are otherwise made in the admin,
    which audits them the same way)."""
    station = Station(
        line=line,
        code=code,
        name=name or code,
        position=(line.stations.aggregate(top=Max("position"))["top"] or 0) + 1,
        station_type=station_type,
    )
    try:
        station.full_clean(validate_unique=False, validate_constraints=False)
    except ValidationError as error:
        problems = "; ".join(f"{k}: {' '.join(v)}" for k, v in error.message_dict.items())
        raise InvalidInput(f"station {code!r}: {problems}") from error
    try:
        with transaction.atomic():
            station.save()
    except IntegrityError as error:
        raise Conflict(f"station {code!r} could not be created: {error}") from error
    audit_record(action=AuditAction.CREATE, instance=station)
    return station


@transaction.atomic
def station_signals_declare(*, station: Station, signals: dict[str, str]) -> list[str]:
    """Declare on the station the signals it does not declare yet (name → engineering unit, ""
    when the file does not say), each with its audit entry; names that are not lower_snake_case
    cannot be declared and are left out. Returns the names declared."""
    known = set(StationSignal.objects.filter(station=station).values_list("name", flat=True))
    declared = []
    for name, unit in signals.items():
        if name in known or not DECLARABLE_SIGNAL.fullmatch(name):
            continue
        signal = StationSignal.objects.create(
            station=station,
            name=name,
            unit=unit if len(unit) <= SIGNAL_UNIT_LENGTH else "",
        )
        audit_record(action=AuditAction.CREATE, instance=signal)
        declared.append(name)
    return declared


def describe_span(report: ImportReport) -> str:
    if report.first_ms is None or report.last_ms is None:
        return "no samples"
    return f"samples from {_iso(report.first_ms)} to {_iso(report.last_ms)}"


def _iso(ms: int) -> str:
    return ms_datetime(ms).isoformat(timespec="milliseconds").replace("+00:00", "Z")
