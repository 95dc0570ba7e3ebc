"""Fixtures of the operator tests: a private subscriber heartbeat hash."""

from __future__ import annotations

import pytest


@pytest.fixture
def private_heartbeats(monkeypatch, redis_client, stream_prefix):
    """Subscriber heartbeats go to a hash private to this test (others' subscribers are invisible)."""
    import decisions.selectors
    import decisions.streams.consumer

    key = f"{stream_prefix}heartbeats"
    monkeypatch.setattr(decisions.selectors, "SUBSCRIBER_HEARTBEATS_KEY", key)
    monkeypatch.setattr(decisions.streams.consumer, "SUBSCRIBER_HEARTBEATS_KEY", key)
    yield key
    redis_client.delete(key)
