"""Decision ids: UUID version 7 (RFC 9562), time-ordered, ascending within a batch."""

from __future__ import annotations

import time
import uuid

import pytest

from decisions.ids import uuid7, uuid7_bytes, uuid7_list, uuid_strings


def _millis(u: uuid.UUID) -> int:
    return u.int >> 80


def test_one_id_has_version_7_the_rfc_variant_and_the_current_millisecond():
    before = time.time_ns() // 1_000_000
    ids = [uuid7() for _ in range(2000)]
    after = time.time_ns() // 1_000_000
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in ids)
    assert all(before <= _millis(u) <= after for u in ids)
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("n", [2, 7, 8, 1024])
def test_a_batch_is_ascending_unique_and_its_text_is_the_uuid_modules(n):
    raw = uuid7_bytes(n)
    ids = [uuid.UUID(bytes=row.tobytes()) for row in raw]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in ids)
    assert ids == sorted(ids) and len(set(ids)) == n  # ascending: each insert at the index's right edge
    assert uuid_strings(raw) == [str(u) for u in ids]
    assert all(u.version == 7 for u in uuid7_list(n))


def test_later_batches_sort_after_earlier_ones():
    first = uuid7_bytes(64)
    time.sleep(0.002)
    second = uuid7_bytes(64)
    assert max(uuid_strings(first)) < min(uuid_strings(second))
