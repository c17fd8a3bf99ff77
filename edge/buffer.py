"""The durable local buffer: append-only segment files of framed records on the edge box's disk.

One record is one message ready to publish (its subject and body, plus the number of samples
in it for the metrics). A record is framed as

    length u32 | crc32 u32 | record number u64 | appended at (epoch ms) u64 | samples u32 |
    subject length u16 | subject | body

with `length` counting everything after the crc and the crc covering the same bytes, so a
record torn by a crash or power loss is recognised and cut off when the buffer is opened.

Record numbers increase by one from the first record ever written to this buffer directory;
together with the directory's random id (`buffer.id`, made when the directory is created) they
name the message for JetStream's de-duplication (`Nats-Msg-Id`), so a replay of a record
always carries the id of its first send.

`acked` holds the number of the first record JetStream has not acknowledged; it is replaced
atomically (write, fsync, rename, fsync the directory). Records below it are never sent again;
segments entirely below it are deleted. Writes go straight to the kernel (`os.write`) and are
made durable in groups by `sync()`; only synced records are handed to the publisher, so a
record that a crash takes away was never published and its number is safe to reuse.

File I/O is synchronous and short (a write or a read of one segment at a time); the bridge runs
`sync()` in a thread, because an fsync may take milliseconds.
"""

from __future__ import annotations

import os
import secrets
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

_FRAME = struct.Struct("<II")  # length, crc32
_HEAD = struct.Struct("<QQIH")  # record number, appended at, samples, subject length
SEGMENT_PREFIX = "segment-"
SEGMENT_SUFFIX = ".log"
CURSOR_FILE = "acked"
ID_FILE = "buffer.id"
MAX_RECORD_BYTES = 16 << 20
READ_CHUNK = 1 << 20  # bytes read at a time when reading records on


class BufferError(Exception):
    """The buffer directory cannot be used (not a damaged tail: that is repaired)."""


class Record(NamedTuple):
    number: int
    appended_ms: int
    samples: int
    subject: str
    body: bytes


@dataclass
class Segment:
    """One file: its first record number and what it holds."""

    path: Path
    first: int
    records: int = 0
    samples: int = 0
    size: int = 0

    @property
    def end(self) -> int:
        """The number after its last record."""
        return self.first + self.records


def encode(number: int, appended_ms: int, samples: int, subject: str, body: bytes) -> bytes:
    subject_bytes = subject.encode()
    content = _HEAD.pack(number, appended_ms, samples, len(subject_bytes)) + subject_bytes + body
    return _FRAME.pack(len(content), zlib.crc32(content)) + content


def _decode(content: bytes) -> Record:
    number, appended_ms, samples, subject_length = _HEAD.unpack_from(content)
    start = _HEAD.size
    subject = content[start : start + subject_length].decode()
    return Record(number, appended_ms, samples, subject, content[start + subject_length :])


def scan(data: bytes, offset: int = 0) -> Iterator[tuple[int, Record]]:
    """(end offset, record) for every valid record from `offset`, stopping at the first torn
    or corrupt one."""
    while offset + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, offset)
        start = offset + _FRAME.size
        if length < _HEAD.size or length > MAX_RECORD_BYTES or start + length > len(data):
            return
        content = data[start : start + length]
        if zlib.crc32(content) != crc:
            return
        offset = start + length
        yield offset, _decode(content)


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class DiskBuffer:
    """Segments in `path`, bounded by `max_bytes` on disk (the caller applies the policy)."""

    def __init__(self, path: Path | str, *, max_bytes: int, segment_bytes: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.path.mkdir(parents=True, exist_ok=True)
        self.buffer_id = self._buffer_id()
        self.segments: list[Segment] = []
        self.acked = self._read_cursor()
        self.truncated_bytes = 0  # a torn tail cut off when opening
        self._lock = threading.Lock()  # sync() runs in a thread beside append()
        self._cursor_lock = threading.Lock()
        self._open_segments()
        self.next_number = self.segments[-1].end if self.segments else self.acked
        self.synced = self.next_number  # everything found on disk at open is durable
        if self.acked > self.next_number:
            raise BufferError(
                f"{self.path / CURSOR_FILE} says {self.acked} records were acknowledged but "
                f"the segments end at {self.next_number}"
            )
        self._unsynced_from = self.next_number
        self._fd: int | None = None
        self._resume: tuple[int, int, int] | None = None  # segment, next record, byte offset
        self._drop_acknowledged()

    # -- opening -----------------------------------------------------------------------------

    def _buffer_id(self) -> str:
        path = self.path / ID_FILE
        if not path.exists():
            temporary = path.with_suffix(".tmp")
            temporary.write_text(secrets.token_hex(4))
            with open(temporary, "rb") as file:
                os.fsync(file.fileno())
            os.replace(temporary, path)
            _fsync_directory(self.path)
        return path.read_text().strip()

    def _read_cursor(self) -> int:
        path = self.path / CURSOR_FILE
        if not path.exists():
            return 0
        text = path.read_text().strip()
        if not text.isdigit():
            raise BufferError(f"{path}: expected a record number, got {text[:40]!r}")
        return int(text)

    def _open_segments(self) -> None:
        paths = sorted(
            self.path.glob(f"{SEGMENT_PREFIX}*{SEGMENT_SUFFIX}"),
            key=lambda p: int(p.name[len(SEGMENT_PREFIX) : -len(SEGMENT_SUFFIX)]),
        )
        for index, path in enumerate(paths):
            first = int(path.name[len(SEGMENT_PREFIX) : -len(SEGMENT_SUFFIX)])
            segment = Segment(path, first)
            data = path.read_bytes()
            for end, record in scan(data):
                if record.number != segment.end:
                    break  # not this segment's next record: treat it as damage
                segment.records += 1
                segment.samples += record.samples
                segment.size = end
            if segment.size < len(data):
                if index != len(paths) - 1:
                    raise BufferError(
                        f"{path}: damaged at byte {segment.size} of {len(data)}, and it is not "
                        "the last segment (only the tail can be torn by a crash)"
                    )
                # A torn tail: the crash came mid-write, before this group was synced.
                self.truncated_bytes = len(data) - segment.size
                with open(path, "r+b") as file:
                    file.truncate(segment.size)
                    os.fsync(file.fileno())
            if self.segments and segment.first != self.segments[-1].end:
                raise BufferError(f"{path}: starts at record {first}, expected a continuation")
            self.segments.append(segment)

    # -- sizes -------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Bytes on disk in segment files."""
        return sum(segment.size for segment in self.segments)

    @property
    def pending_records(self) -> int:
        return self.next_number - self.acked

    def pending_samples(self) -> int:
        """Samples in records not yet acknowledged (a scan of the oldest segment's head)."""
        total = 0
        for segment in self.segments:
            if segment.end <= self.acked:
                continue
            if segment.first >= self.acked:
                total += segment.samples
            else:
                total += sum(
                    r.samples
                    for r in self.read(segment.first, segment.end)
                    if r.number >= self.acked
                )
        return total

    def fits(self, record_bytes: int) -> bool:
        return self.size + record_bytes <= self.max_bytes

    # -- writing -----------------------------------------------------------------------------

    def append(self, subject: str, body: bytes, samples: int) -> int:
        """Write one record (not yet durable: see `sync`); returns its number."""
        with self._lock:
            number = self.next_number
            frame = encode(number, time.time_ns() // 1_000_000, samples, subject, body)
            if len(frame) > MAX_RECORD_BYTES:
                raise BufferError(f"a record of {len(frame)} bytes is over {MAX_RECORD_BYTES}")
            segment = self._writable_segment(len(frame))
            os.write(self._fd, frame)
            segment.records += 1
            segment.samples += samples
            segment.size += len(frame)
            self.next_number = number + 1
            return number

    def _writable_segment(self, frame_bytes: int) -> Segment:
        if self.segments and self._fd is not None:
            current = self.segments[-1]
            if current.size == 0 or current.size + frame_bytes <= self.segment_bytes:
                return current
            self._close_current()
        elif self.segments and self.segments[-1].size < self.segment_bytes:
            current = self.segments[-1]
            self._fd = os.open(current.path, os.O_WRONLY | os.O_APPEND)
            return current
        path = self.path / f"{SEGMENT_PREFIX}{self.next_number:020d}{SEGMENT_SUFFIX}"
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o640)
        _fsync_directory(self.path)  # the new name must survive a power loss too
        self.segments.append(Segment(path, self.next_number))
        return self.segments[-1]

    def _close_current(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)  # a closed segment is always complete on disk
            os.close(self._fd)
            self._fd = None

    def sync(self) -> int:
        """Make every record appended so far durable; returns the new synced end."""
        with self._lock:
            target = self.next_number
            descriptor = self._fd
            if descriptor is not None:
                descriptor = os.dup(descriptor)  # survive a segment roll during the fsync
        if descriptor is not None:
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        with self._lock:
            self.synced = max(self.synced, target)
        return self.synced

    # -- reading and acknowledging ---------------------------------------------------------------

    def read(
        self, start: int, end: int, *, max_records: int = 1 << 30, remember: bool = False
    ) -> list[Record]:
        """Up to `max_records` records numbered start … end - 1, in order.

        With `remember` (the publisher), the next call that reads on from where this one
        stopped starts at the byte offset reached, so draining a segment costs one pass, not
        one per call.
        """
        found: list[Record] = []
        for segment in list(self.segments):
            if segment.end <= start or segment.first >= end:
                continue
            offset = 0
            if self._resume is not None and self._resume[:2] == (segment.first, start):
                offset = self._resume[2]
            try:
                with open(segment.path, "rb") as file:
                    if self._read_segment(
                        file, segment, offset, start, end, max_records, remember, found
                    ):
                        return found
            except FileNotFoundError:
                continue  # shed or acknowledged meanwhile
            start = max(start, segment.end)
        return found

    def _read_segment(
        self,
        file: BinaryIO,
        segment: Segment,
        offset: int,
        start: int,
        end: int,
        max_records: int,
        remember: bool,
        found: list[Record],
    ) -> bool:
        """Append the wanted records of one segment to `found`, reading `READ_CHUNK` bytes at
        a time; True when `found` is complete."""
        chunk = READ_CHUNK
        while offset < segment.size:
            file.seek(offset)
            data = file.read(min(chunk, segment.size - offset))
            scanned_to = 0
            for record_end, record in scan(data):
                scanned_to = record_end
                if record.number >= end:
                    return True
                if record.number >= start:
                    found.append(record)
                    if remember:
                        self._resume = (segment.first, record.number + 1, offset + record_end)
                    if len(found) == max_records:
                        return True
            if scanned_to == 0:
                if chunk >= segment.size - offset:
                    return False  # nothing whole beyond here (not yet written out)
                chunk = segment.size - offset  # one record larger than a chunk
                continue
            offset += scanned_to
            chunk = READ_CHUNK
        return False

    def acknowledge(self, up_to: int) -> None:
        """JetStream acknowledged every record below `up_to`: persist the cursor, free space."""
        if up_to <= self.acked:
            return
        self._write_cursor(up_to)
        self._drop_acknowledged()

    def _write_cursor(self, value: int) -> None:
        # The publisher (in a thread) and shedding (in the loop) both move it: only forwards.
        with self._cursor_lock:
            if value <= self.acked:
                return
            path = self.path / CURSOR_FILE
            temporary = self.path / f"{CURSOR_FILE}.tmp"
            with open(temporary, "w") as file:
                file.write(f"{value}\n")
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
            _fsync_directory(self.path)
            self.acked = value

    def _drop_acknowledged(self) -> None:
        with self._lock:
            while self.segments and self.segments[0].end <= self.acked:
                segment = self.segments[0]
                if len(self.segments) == 1:
                    # The one segment being written to: roll it once it is worth a new file.
                    if segment.size < self.segment_bytes // 4:
                        return
                    self._close_current()
                self.segments.pop(0)
                segment.path.unlink(missing_ok=True)

    def shed_oldest(self) -> int:
        """Drop the oldest unacknowledged segment (rolling the current one if it is the only
        one); returns the samples dropped. The cursor moves past them."""
        with self._lock:
            if not self.segments:
                return 0
            if len(self.segments) == 1:
                self._close_current()
            oldest = self.segments[0]
        if oldest.first >= self.acked:
            dropped = oldest.samples
        else:
            dropped = sum(r.samples for r in self.read(self.acked, oldest.end))
        self.synced = max(self.synced, oldest.end)  # closed segments are fsynced
        self._write_cursor(oldest.end)
        with self._lock:
            self.segments.remove(oldest)
            oldest.path.unlink(missing_ok=True)
        return dropped

    def close(self) -> None:
        with self._lock:
            self._close_current()
