"""Decision ids: UUID version 7 (RFC 9562 section 5.7), made a batch at a time.

A version 7 UUID starts with the Unix time in milliseconds, so ids made later sort later and the
unique index on ``decision_id`` grows at its right edge, where a random (version 4) id lands on a
random page of an index that outgrows the cache (measured: 1 µs of PostgreSQL's time per inserted
decision). The other 74 bits are random (``os.urandom``), as in version 4.
"""

from __future__ import annotations

import os
import time
import uuid

import numpy as np

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
# Where the 32 hex digits go in the 36-character form 8-4-4-4-12.
_DIGITS = np.array([i for i in range(36) if i not in (8, 13, 18, 23)])


def uuid7_bytes(n: int) -> np.ndarray:
    """``n`` new version 7 UUIDs as an (n, 16) uint8 array of their bytes (big-endian fields)."""
    if n == 1:
        return np.frombuffer(uuid7().bytes, dtype=np.uint8).reshape(1, 16)
    out = np.frombuffer(os.urandom(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    out[:, :6] = np.frombuffer((time.time_ns() // 1_000_000).to_bytes(6, "big"), dtype=np.uint8)
    out[:, 6] = (out[:, 6] & 0x0F) | 0x70  # version 7
    out[:, 8] = (out[:, 8] & 0x3F) | 0x80  # the RFC's variant
    # In ascending order (RFC 9562 section 6.2: ids made in the same millisecond should still
    # increase): each insert then lands at the unique index's right edge, where PostgreSQL appends
    # without descending the tree and fills pages before splitting them.
    words = out.view(">u8")
    return out[np.lexsort((words[:, 1], words[:, 0]))]


def uuid_strings(raw: np.ndarray) -> list[str]:
    """The canonical text (``str(uuid.UUID(bytes=...))``) of each row of an (n, 16) uint8 array."""
    n = len(raw)
    if n < 8:  # numpy's fixed cost is more than the uuid module's for a few
        return [str(uuid.UUID(bytes=row.tobytes())) for row in raw]
    text = np.full((n, 36), ord("-"), dtype=np.uint8)
    digits = np.empty((n, 32), dtype=np.uint8)
    digits[:, 0::2] = _HEX[raw >> 4]
    digits[:, 1::2] = _HEX[raw & 0x0F]
    text[:, _DIGITS] = digits
    joined = text.tobytes().decode("ascii")
    return [joined[i:i + 36] for i in range(0, 36 * n, 36)]


def uuid7() -> uuid.UUID:
    """One new version 7 UUID (the default of ``Decision.decision_id``), without numpy's fixed cost."""
    rand = int.from_bytes(os.urandom(10), "big")  # 74 of these 80 bits are used
    ms = time.time_ns() // 1_000_000
    # 48 bits of milliseconds, version 7, 12 random bits, the variant (binary 10), 62 random bits.
    return uuid.UUID(int=ms << 80 | 0x7 << 76 | (rand >> 62 & 0xFFF) << 64 | 0b10 << 62 | rand & (1 << 62) - 1)


def uuid7_list(n: int) -> list[uuid.UUID]:
    """``n`` new version 7 UUIDs."""
    raw = uuid7_bytes(n).tobytes()
    return [uuid.UUID(bytes=raw[i:i + 16]) for i in range(0, 16 * n, 16)]
