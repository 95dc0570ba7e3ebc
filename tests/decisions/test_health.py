"""/healthz: liveness, and readiness that names the failed check (datastores cut for real)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
from django.db import connection
from django.test import Client

from bench._faults import TcpProxy
from tests.decisions.ops_fixtures import private_heartbeats  # noqa: F401 (fixture)
from tests.decisions.stream_helpers import consumer, register_model

pytestmark = pytest.mark.django_db


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(path: str = "/healthz"):
    response = Client().get(path)
    return response.status_code, response.json()


def test_liveness_needs_no_dependency(settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{closed_port()}/0"
    assert get("/healthz?live") == (200, {"status": "ok"})


def test_ready_when_every_check_passes(private_heartbeats):
    register_model(seed=1, alias="champion")
    consumer("h1").heartbeat()
    status, body = get()
    assert status == 200, body
    assert body["status"] == "ok" and body["failed"] == []
    assert set(body["checks"]) == {"database", "redis", "model", "subscriber"}
    assert body["checks"]["model"]["detail"] == "serving champion v1"
    assert all(check["ok"] and check["ms"] >= 0 for check in body["checks"].values())


def test_no_champion_and_no_subscriber_degrade_but_strict_fails(private_heartbeats):
    status, body = get()
    assert status == 200
    assert body["status"] == "degraded" and body["failed"] == ["model", "subscriber"]
    assert body["checks"]["model"]["detail"].startswith("no champion yet")
    assert body["checks"]["subscriber"]["detail"] == "no subscriber heartbeat"
    strict_status, strict_body = get("/healthz?strict")
    assert strict_status == 503 and strict_body["failed"] == ["model", "subscriber"]


def test_a_stale_subscriber_heartbeat_fails_the_subscriber_check(private_heartbeats, redis_client, settings):
    register_model(seed=1, alias="champion")
    settings.RLV3_SUBSCRIBER_MAX_AGE_SECONDS = 30
    redis_client.hset(private_heartbeats, "old-host-1", json.dumps({"ts": time.time() - 120, "lag": 7}))
    status, body = get()
    assert (status, body["failed"]) == (200, ["subscriber"])
    assert body["checks"]["subscriber"]["detail"].startswith("newest heartbeat 12")
    assert "(limit 30s)" in body["checks"]["subscriber"]["detail"]
    consumer("fresh-1").heartbeat()
    assert get()[1]["failed"] == []


def test_a_refused_champion_artifact_fails_the_model_check(private_heartbeats):
    version = register_model(seed=1, alias="champion")
    Path(version.runtime_path).write_bytes(b"corrupted")  # sha256 no longer matches: serving refuses it
    consumer("h1").heartbeat()
    status, body = get()
    assert (status, body["status"], body["failed"]) == (200, "degraded", ["model"])
    assert body["checks"]["model"]["detail"].startswith("champion is v1 but this process serves untrained")


def test_unhealthy_when_redis_is_unreachable(settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{closed_port()}/0"
    status, body = get()
    assert status == 503
    assert body["status"] == "unavailable" and "redis" in body["failed"] and "subscriber" in body["failed"]
    assert body["checks"]["redis"]["detail"].startswith("ConnectionError")
    assert body["checks"]["database"]["ok"] is True


@pytest.mark.django_db(transaction=True)
def test_unhealthy_when_postgresql_is_unreachable(private_heartbeats):
    if connection.vendor != "postgresql":
        pytest.skip("cuts a PostgreSQL connection")
    register_model(seed=1, alias="champion")
    consumer("h1").heartbeat()
    original = dict(connection.settings_dict)
    proxy = TcpProxy((original["HOST"] or "127.0.0.1", int(original["PORT"] or 5432)))
    connection.close()
    connection.settings_dict.update(HOST="127.0.0.1", PORT=str(proxy.port))
    try:
        assert get()[0] == 200  # through the proxy, everything answers
        proxy.cut()  # PostgreSQL "goes away": connections dropped, new ones refused
        status, body = get()
        assert status == 503
        assert body["status"] == "unavailable" and body["failed"] == ["database", "model"]
        assert body["checks"]["database"]["detail"].endswith("database unreachable")
        assert body["checks"]["redis"]["ok"] and body["checks"]["subscriber"]["ok"]
    finally:
        proxy.close()
        connection.close()
        connection.settings_dict.update(HOST=original["HOST"], PORT=original["PORT"])
    assert get()[0] == 200  # back once the database answers again
