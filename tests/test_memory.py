"""rlv3site.memory: freed large blocks stay in the process, so reusing them costs no page faults."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Like a batch request: eight 4 MB blocks live at once, then all freed; 50 times. Prints the minor
# page faults that took.
_FAULTS = """
import resource, sys
if sys.argv[1] == "tuned":
    from rlv3site.memory import keep_freed_memory
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def request():
    blocks = [bytearray(4 << 20) for _ in range(8)]  # zero-filled: every page is written
    del blocks
request()  # the first time faults in either way
before = faults()
for _ in range(50):
    request()
print(faults() - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True, timeout=60)
    return int(out.stdout.strip())


def test_freed_blocks_are_reused_without_page_faults():
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("the C library is not glibc")
    default, tuned = _faults("default"), _faults("tuned")
    # Untuned, freeing 32 MB at the top of the heap gives it back to the kernel (glibc's trim
    # threshold follows the largest block: 8 MB here), so every request faults its pages in again.
    assert default > 50 * 1000
    assert tuned < 1000


def test_the_wsgi_module_freezes_what_it_loaded():
    """Importing the WSGI application (as gunicorn's workers do) leaves Django's, PyTorch's and the
    project's objects out of the collector's full passes."""
    code = (
        "import gc, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'rlv3site.settings'); "
        "import rlv3site.wsgi; print(gc.get_freeze_count(), len(gc.get_objects()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    frozen, collected = map(int, out.stdout.split())
    assert frozen > 100_000 and collected < frozen / 10


def test_the_wsgi_module_loads_the_urlconf_before_it_freezes():
    """The views and schema code the URLconf imports load with the worker, not in the first
    request it serves (which took 0.3-0.4 s more on a 2-core machine), and are frozen too."""
    code = (
        "import gc, os, sys; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'rlv3site.settings'); "
        "import rlv3site.wsgi; loaded = 'rlv3site.urls' in sys.modules and 'drf_spectacular.views' in sys.modules; "
        "import rlv3site.urls as u; "
        "print(loaded, any(o is u.urlpatterns for o in gc.get_objects()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["True", "False"]
