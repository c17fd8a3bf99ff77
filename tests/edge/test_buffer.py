"""The disk buffer on its own: order, the cursor, torn tails, segments, shedding."""

from __future__ import annotations

import os

import pytest

from edge.buffer import BufferError, DiskBuffer, encode


def open_buffer(path, *, max_bytes: int = 1 << 20, segment_bytes: int = 4096) -> DiskBuffer:
    return DiskBuffer(path, max_bytes=max_bytes, segment_bytes=segment_bytes)


def fill(buffer: DiskBuffer, count: int, *, first: int = 0, samples: int = 3) -> None:
    for n in range(first, first + count):
        buffer.append(f"aegis.telemetry.raw.st{n % 2}", f'{{"n": {n}}}'.encode(), samples)


def bodies(buffer: DiskBuffer, start: int = 0) -> list[bytes]:
    return [record.body for record in buffer.read(start, buffer.next_number)]


def test_records_come_back_in_order_across_segments_and_after_reopening(tmp_path):
    buffer = open_buffer(tmp_path)
    fill(buffer, 300)
    buffer.sync()
    assert len(buffer.segments) > 3  # 4 KiB segments: the records span several files
    expected = [f'{{"n": {n}}}'.encode() for n in range(300)]
    assert bodies(buffer) == expected
    buffer.close()

    again = open_buffer(tmp_path)
    assert bodies(again) == expected
    assert again.next_number == 300
    assert again.pending_samples() == 900
    fill(again, 1, first=300)
    assert [r.number for r in again.read(299, 301)] == [299, 300]


def test_reading_on_in_small_steps_returns_every_record_once(tmp_path):
    buffer = open_buffer(tmp_path)
    fill(buffer, 250)
    seen, position = [], 0
    while position < buffer.next_number:
        records = buffer.read(position, buffer.next_number, max_records=7)
        seen += [record.number for record in records]
        position = records[-1].number + 1
    assert seen == list(range(250))


def test_acknowledged_records_are_not_replayed_and_their_segments_are_deleted(tmp_path):
    buffer = open_buffer(tmp_path)
    fill(buffer, 300)
    buffer.sync()
    files_before = len(list(tmp_path.glob("segment-*.log")))
    buffer.acknowledge(200)
    assert len(list(tmp_path.glob("segment-*.log"))) < files_before
    buffer.close()

    again = open_buffer(tmp_path)
    assert again.acked == 200
    assert [r.number for r in again.read(again.acked, again.next_number)] == list(range(200, 300))
    assert again.pending_samples() == 300


def test_a_torn_tail_is_cut_at_the_last_whole_record_and_numbering_goes_on(tmp_path):
    buffer = open_buffer(tmp_path, segment_bytes=1 << 20)
    fill(buffer, 50)
    buffer.close()
    (segment,) = tmp_path.glob("segment-*.log")
    whole = segment.stat().st_size
    torn = encode(50, 0, 3, "aegis.telemetry.raw.st0", b'{"n": 50, "padding": "xxxxxxxx"}')
    with open(segment, "ab") as file:
        file.write(torn[: len(torn) // 2])  # the crash came mid-write

    again = open_buffer(tmp_path, segment_bytes=1 << 20)
    assert again.truncated_bytes == len(torn) // 2
    assert segment.stat().st_size == whole
    assert [r.number for r in again.read(0, again.next_number)] == list(range(50))
    fill(again, 1, first=50)
    again.sync()
    assert [r.body for r in again.read(50, 51)] == [b'{"n": 50}']


def test_a_record_with_a_wrong_checksum_at_the_tail_is_cut_off(tmp_path):
    buffer = open_buffer(tmp_path, segment_bytes=1 << 20)
    fill(buffer, 10)
    buffer.close()
    (segment,) = tmp_path.glob("segment-*.log")
    data = bytearray(segment.read_bytes())
    data[-2] ^= 0xFF  # a bit flipped in the last record's body
    segment.write_bytes(bytes(data))

    again = open_buffer(tmp_path, segment_bytes=1 << 20)
    assert again.next_number == 9
    assert again.truncated_bytes > 0


def test_damage_before_the_last_segment_is_refused_not_silently_skipped(tmp_path):
    buffer = open_buffer(tmp_path)
    fill(buffer, 300)
    buffer.close()
    first = sorted(tmp_path.glob("segment-*.log"))[0]
    data = bytearray(first.read_bytes())
    data[100] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(BufferError, match="not the last segment"):
        open_buffer(tmp_path)


def test_shedding_drops_the_oldest_segment_counts_its_samples_and_moves_the_cursor(tmp_path):
    buffer = open_buffer(tmp_path)
    fill(buffer, 300, samples=5)
    buffer.sync()
    oldest = buffer.segments[0]
    shed = buffer.shed_oldest()
    assert shed == 5 * oldest.records
    assert buffer.acked == oldest.end
    assert not oldest.path.exists()
    assert buffer.read(buffer.acked, buffer.next_number)[0].number == oldest.end
    buffer.close()
    assert open_buffer(tmp_path).acked == oldest.end


def test_shedding_a_partly_acknowledged_segment_counts_only_unacknowledged_samples(tmp_path):
    buffer = open_buffer(tmp_path)
    fill(buffer, 300, samples=2)
    buffer.sync()
    oldest = buffer.segments[0]
    buffer.acknowledge(oldest.first + 10)
    assert buffer.shed_oldest() == 2 * (oldest.records - 10)


def test_the_buffer_id_is_kept_across_restarts_and_differs_between_buffers(tmp_path):
    first = open_buffer(tmp_path / "a").buffer_id
    assert open_buffer(tmp_path / "a").buffer_id == first
    assert open_buffer(tmp_path / "b").buffer_id != first


def test_a_cursor_beyond_the_records_on_disk_is_refused(tmp_path):
    buffer = open_buffer(tmp_path)
    fill(buffer, 5)
    buffer.close()
    (tmp_path / "acked").write_text("99\n")
    with pytest.raises(BufferError, match="acknowledged"):
        open_buffer(tmp_path)


def test_sync_makes_appended_records_available_to_the_publisher(tmp_path):
    buffer = open_buffer(tmp_path)
    fill(buffer, 3)
    assert buffer.synced == 0  # written, not yet durable: not for publishing
    assert buffer.sync() == 3
    assert os.path.getsize(buffer.segments[-1].path) == buffer.segments[-1].size


def test_reading_on_crosses_read_chunks_and_records_larger_than_a_chunk(tmp_path):
    buffer = open_buffer(tmp_path, max_bytes=64 << 20, segment_bytes=16 << 20)
    small = b"x" * 5000
    for _ in range(300):  # 1.5 MB of small records: the reader's 1 MiB chunks end mid-record
        buffer.append("aegis.telemetry.raw.st0", small, 1)
    buffer.append("aegis.telemetry.raw.st0", b"y" * (3 << 20 >> 1), 1)  # 1.5 MiB
    for _ in range(10):
        buffer.append("aegis.telemetry.raw.st0", small, 1)
    buffer.sync()
    assert len(buffer.segments) == 1
    seen, position = [], 0
    while position < buffer.synced:
        records = buffer.read(position, buffer.synced, max_records=7, remember=True)
        seen += [(record.number, len(record.body)) for record in records]
        position = records[-1].number + 1
    assert [number for number, _size in seen] == list(range(311))
    assert seen[300] == (300, 3 << 20 >> 1)
