"""`manage.py rlv3_dead_letters`: list with filters, replay after fixing the cause, purge."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError

from decisions.management.commands.rlv3_dead_letters import parse_since
from decisions.models import Experience
from decisions.streams import codec
from tests.decisions.stream_helpers import dead_letters, drain, publish, signal_payload, stream_entries

pytestmark = pytest.mark.django_db


def run(*args: str) -> tuple[str, dict]:
    """Run the command with --json; (its whole output, the JSON object of the last line)."""
    out = io.StringIO()
    call_command("rlv3_dead_letters", *args, "--json", stdout=out, stderr=io.StringIO())
    text = out.getvalue()
    return text, json.loads(text.strip().splitlines()[-1])


@pytest.fixture
def poisoned(redis_client, stream_prefix):
    """Three dead letters from a real subscriber: bad JSON, an out-of-range field, a close with no decision."""
    publish(redis_client, codec.SIGNAL_GENERATED, None, raw={"event_type": codec.SIGNAL_GENERATED, "payload": "{oops", "correlation_id": "c-json"})
    publish(redis_client, codec.SIGNAL_GENERATED, signal_payload("ETHUSDT", rsi=150.0), correlation_id="c-rsi")
    close = codec.position_close_payload(codec.PositionClose(symbol="ADAUSDT", pnl=12.5, roi=2.5, position_id="p-1"))
    publish(redis_client, codec.POSITION_CLOSED, close, correlation_id="c-close")
    assert drain("dl").dead_lettered == 3
    return redis_client


def test_list_shows_every_dead_letter_with_its_reason(poisoned):
    text, result = run("list")
    assert result["matched"] == 3 and len(result["entries"]) == 3
    by_reason = {e["reason"]: e for e in result["entries"]}
    assert set(by_reason) == {"invalid:payload", "invalid:rsi", "pairing"}
    assert by_reason["invalid:rsi"]["correlation_id"] == "c-rsi"
    assert by_reason["pairing"]["stream"].endswith(codec.POSITION_CLOSED)
    assert by_reason["pairing"]["original"]["correlation_id"] == "c-close"
    assert "no decision to pair" in text and "3 dead letters (of 3 in the stream)" in text


def test_filters_combine(poisoned):
    assert [e["reason"] for e in run("list", "--reason", "RSI")[1]["entries"]] == ["invalid:rsi"]
    assert [e["reason"] for e in run("list", "--reason", "invalid:payload")[1]["entries"]] == ["invalid:payload"]
    assert [e["reason"] for e in run("list", "--stream", codec.POSITION_CLOSED)[1]["entries"]] == ["pairing"]
    assert run("list", "--stream", codec.SIGNAL_GENERATED, "--reason", "pair")[1]["matched"] == 0
    assert run("list", "--since", "1h")[1]["matched"] == 3
    future = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    assert run("list", "--since", future)[1]["matched"] == 0
    assert len(run("list", "--limit", "2")[1]["entries"]) == 2


def test_replay_after_the_cause_is_fixed_pairs_the_close(poisoned):
    # the close had no decision to pair; the decision arrives (the producer is fixed), then replay
    publish(poisoned, codec.SIGNAL_GENERATED, signal_payload("ADAUSDT"), correlation_id="c-signal")
    drain("dl")
    _, dry = run("replay", "--reason", "no decision to pair", "--dry-run")
    assert dry["matched"] == 1 and dry["replayed"] == [] and len(dead_letters(poisoned)) == 3

    _, result = run("replay", "--reason", "no decision to pair")
    (replayed,) = result["replayed"]
    assert replayed["stream"] == codec.stream_key(codec.POSITION_CLOSED, settings.RLV3_STREAM_PREFIX)
    assert len(dead_letters(poisoned)) == 2  # removed from the dead-letter stream
    new_id, fields = stream_entries(poisoned, codec.POSITION_CLOSED)[-1]
    assert new_id == replayed["new_entry_id"]
    assert fields["correlation_id"] == "c-close" and json.loads(fields["payload"])["pnl"] == 12.5  # the original fields

    drain("dl")
    experience = Experience.objects.get(position_id="p-1")
    assert (experience.symbol, experience.pnl, experience.roi) == ("ADAUSDT", 12.5, 2.5)
    assert len(dead_letters(poisoned)) == 2  # and it did not come back


def test_purge_removes_only_what_matches_and_needs_a_filter(poisoned):
    with pytest.raises(CommandError, match="needs a filter"):
        call_command("rlv3_dead_letters", "purge", stdout=io.StringIO())
    assert run("purge", "--stream", codec.SIGNAL_GENERATED, "--dry-run")[1]["purged"] == 0
    assert len(dead_letters(poisoned)) == 3
    assert run("purge", "--stream", codec.SIGNAL_GENERATED)[1]["purged"] == 2
    assert [d.error for d in dead_letters(poisoned)] == ["no decision to pair"]
    assert run("purge", "--all")[1]["purged"] == 1
    assert dead_letters(poisoned) == []


def test_since_accepts_durations_and_iso_times():
    now = datetime(2025, 1, 2, 12, 0, tzinfo=UTC)
    assert parse_since("30m", now=now) == now - timedelta(minutes=30)
    assert parse_since("2h", now=now) == now - timedelta(hours=2)
    assert parse_since("7d", now=now) == now - timedelta(days=7)
    assert parse_since("2025-01-01T00:00:00") == datetime(2025, 1, 1, tzinfo=UTC)
    with pytest.raises(CommandError, match="--since"):
        parse_since("yesterday")
