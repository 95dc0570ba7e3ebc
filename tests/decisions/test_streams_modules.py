"""The subscriber process stays small: it must not import torch, pandas or gymnasium."""

from __future__ import annotations

import subprocess
import sys

import pytest

from decisions.models import Decision
from decisions.streams import codec

from .stream_helpers import BASE_DIR, publish, signal_payload, subscriber_env

SCRIPT = """
import sys, django
django.setup()
from django.core.management import call_command
call_command("rlv3_subscribe", "--once", "--consumer", "modules")
heavy = [m for m in ("torch", "pandas", "gymnasium") if m in sys.modules]
print("HEAVY", heavy)
sys.exit(1 if heavy else 0)
"""


@pytest.mark.django_db(transaction=True)
def test_the_subscriber_process_imports_no_torch_pandas_or_gymnasium(redis_client, stream_prefix, tmp_path):
    from django.db import connection

    env = subscriber_env()
    shared = not (connection.vendor == "sqlite" and connection.is_in_memory_db())
    if not shared:  # the subprocess cannot see an in-memory test database: give it its own file
        env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'subscriber.sqlite3'}"
        subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=BASE_DIR, env=env, check=True, timeout=300)
    # One event of each consumed type, so every handler's code path is imported and run.
    publish(redis_client, codec.MARKET_DATA_UPDATED, {"symbol": "BTCUSDT", "price": 10.0})
    publish(redis_client, codec.SIGNAL_GENERATED, signal_payload())
    publish(redis_client, codec.POSITION_CLOSED, {"symbol": "BTCUSDT", "pnl": 1.0, "roi": 0.1})

    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "HEAVY []" in done.stdout
    if shared:
        assert Decision.objects.get().experience.pnl == 1.0
