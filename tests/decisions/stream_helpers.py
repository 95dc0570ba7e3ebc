"""Helpers of the stream tests: publish in the wire format, run the subscriber, read what it wrote."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from django.conf import settings

from decisions.streams import codec
from decisions.streams.consumer import ConsumerConfig, ConsumerStats, StreamConsumer

BASE_DIR = Path(__file__).resolve().parents[2]


def publish(client, event_type: str, payload, *, trace_id=None, correlation_id=None, timestamp=None, raw: dict | None = None) -> str:
    """XADD one event in the wire format (or ``raw`` fields as given) to its stream; returns the id."""
    fields = raw if raw is not None else codec.encode_entry(codec.Envelope(
        event_type=event_type, payload=payload, trace_id=trace_id, correlation_id=correlation_id,
        timestamp=timestamp, source="tests",
    ))
    return client.xadd(codec.stream_key(event_type, settings.RLV3_STREAM_PREFIX), fields)


def signal_payload(symbol: str = "BTCUSDT", **fields) -> dict:
    return {"symbol": symbol, "rsi": 55.0, "volatility": 0.02, "regime": "TREND", "strategy": "tests", **fields}


def consumer(name: str = "c1", **overrides) -> StreamConsumer:
    overrides.setdefault("pipeline", False)  # a second thread would not share the test transaction
    return StreamConsumer(ConsumerConfig.from_settings(consumer=name, heartbeat_seconds=3600, **overrides))


def drain(name: str = "c1", **overrides) -> ConsumerStats:
    """Run a subscriber in this process until the streams are drained (`rlv3_subscribe --once`)."""
    return consumer(name, **overrides).run(once=True)


def stream_entries(client, event_type: str) -> list[tuple[str, dict]]:
    return client.xrange(codec.stream_key(event_type, settings.RLV3_STREAM_PREFIX))


def published_decisions(client) -> list[tuple[codec.Envelope, codec.DecisionEvent]]:
    out = []
    for _, fields in stream_entries(client, codec.DECISION):
        envelope = codec.decode_entry(fields)
        out.append((envelope, codec.decode_decision(envelope.payload)))
    return out


def dead_letters(client) -> list[codec.DeadLetter]:
    return [codec.decode_dead_letter(fields) for _, fields in stream_entries(client, codec.DEAD_LETTER)]


def pending_count(client, event_type: str) -> int:
    key = codec.stream_key(event_type, settings.RLV3_STREAM_PREFIX)
    group = codec.group_name(event_type, settings.RLV3_GROUP_PREFIX)
    return client.xpending(key, group)["pending"]


def replay_all(client, event_type: str) -> None:
    """Rewind the group to the start of the stream: every entry is delivered again."""
    key = codec.stream_key(event_type, settings.RLV3_STREAM_PREFIX)
    client.xgroup_setid(key, codec.group_name(event_type, settings.RLV3_GROUP_PREFIX), "0")


def register_model(*, seed: int, alias: str | None):
    """A ModelVersion whose runtime file holds an untrained network of ``seed``; optionally aliased."""
    from training import services as training_services
    from training.models import ModelVersion
    from training.rl.inference import METADATA_KEY, PolicyRuntime, file_sha256

    runtime = PolicyRuntime.untrained(seed=seed)
    buf = io.BytesIO()
    np.savez(buf, **runtime.arrays(), **{METADATA_KEY: np.array(json.dumps(runtime.metadata))})
    path = Path(settings.RLV3_MODEL_DIR) / f"seed{seed}.npz"
    path.write_bytes(buf.getvalue())
    number = (ModelVersion.objects.order_by("-version").values_list("version", flat=True).first() or 0) + 1
    version = ModelVersion.objects.create(
        version=number, artifact_path=str(path), sha256="", runtime_path=str(path),
        runtime_sha256=file_sha256(buf.getvalue()), feature_spec_version=runtime.feature_spec_version,
    )
    if alias:
        training_services.alias_set(name=alias, version=version, reason="tests")
    return version


# --- subprocess subscriber ------------------------------------------------------------------------


def database_url() -> str:
    """URL of the database this test runs against (pytest-django's test database)."""
    from django.db import connection

    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    auth = s.get("USER") or ""
    if s.get("PASSWORD"):
        auth += f":{s['PASSWORD']}"
    return f"postgres://{auth + '@' if auth else ''}{s.get('HOST') or '127.0.0.1'}:{s.get('PORT') or 5432}/{s['NAME']}"


def subscriber_env(**overrides) -> dict:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "rlv3site.settings",
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "RLV3_STREAM_PREFIX": settings.RLV3_STREAM_PREFIX,
        "RLV3_GROUP_PREFIX": settings.RLV3_GROUP_PREFIX,
        "RLV3_MODEL_DIR": str(settings.RLV3_MODEL_DIR),
        "PYTHONUNBUFFERED": "1",
    }
    env.update({k: str(v) for k, v in overrides.items()})
    return env


class Subscriber:
    """`manage.py rlv3_subscribe` in a subprocess (its own process group), output to a log file."""

    def __init__(self, log_path: Path, *args: str, env: dict | None = None):
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "rlv3_subscribe", *args], cwd=BASE_DIR, env=env or subscriber_env(),
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._log.close()

    def stop(self) -> None:
        """Make sure nothing is left running (tests call this in finally)."""
        if self.proc.poll() is None:
            self.signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]


def wait_for(predicate, *, timeout: float, interval: float = 0.1, message: str = "condition"):
    """Poll until predicate() is truthy; return its value or fail with ``message``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)
