"""Memory settings for a long-running web worker: Python's garbage collector and the C allocator.

A batch prediction keeps thousands of new containers alive while it runs (the parsed body, the
answer's dicts), so they survive the young collections and are counted towards a full one; with
the 250,000 objects Django, PyTorch and the project load at start, a full collection took 142 ms
and came every dozen or so batch requests. :func:`freeze_startup_objects` moves what the worker
loaded at start out of the collector's sight (``gc.freeze``): those objects live as long as the
process anyway, and a full collection then walks only what requests created.

A batch prediction allocates and frees several MB at a time (the JSON body, the arrays, the COPY
rows, the answer). glibc serves blocks above its mmap threshold by mmap and trims the heap's free
top above its trim threshold, so each request gave those pages back to the kernel and faulted
them in again: 48,000 minor faults a second under the batch load, 3-10 % of the batch endpoint's
throughput (bench/http.py, side by side). Serving blocks up to 64 MB from the heap and keeping up
to 256 MB of it free lets the next request reuse the same pages; the workers' peak RSS did not
change (116 MB).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

log = logging.getLogger(__name__)

# mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 64 << 20
TRIM_THRESHOLD_BYTES = 256 << 20


def keep_freed_memory() -> bool:
    """Apply the settings above when the C library is glibc; True if it took them."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (musl has no mallopt): nothing to tune
        return False
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    if not ok:
        log.warning("mallopt refused the allocator settings; large blocks go back to the kernel after each request")
    return ok


def freeze_startup_objects() -> int:
    """Collect once, then exempt every object alive now from later collections; how many."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
