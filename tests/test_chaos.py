"""A small chaos run in the suite (``make chaos`` runs the full 10,000 signals).

bench/chaos.py brings up web, a Celery worker and the subscriber against the real PostgreSQL (through
a TCP proxy it cuts) and a private Redis (which it restarts), streams signals with poison entries
and matching position closes, SIGKILLs the subscriber five times and the worker mid-training,
corrupts the promoted champion's artifact, and audits the result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def chaos_result() -> dict:
    database_url = os.environ.get("DATABASE_URL", "")
    if not database_url.startswith("postgres"):
        pytest.skip("the chaos run needs PostgreSQL (DATABASE_URL=postgres://...)")
    argv = [sys.executable, "bench/chaos.py", "--signals", os.environ.get("RLV3_CHAOS_SIGNALS", "400"), "--seconds", "25",
            "--cut-seconds", "5", "--database", f"rlv3_chaos_ci_{os.getpid()}", "--drop-database", "--no-record", "--json"]
    out = subprocess.run(argv, cwd=ROOT, env=os.environ.copy(), capture_output=True, text=True, timeout=1500)
    lines = out.stdout.strip().splitlines()
    assert lines, out.stderr[-4000:]
    try:
        return json.loads(lines[-1])
    except ValueError:
        raise AssertionError(f"no JSON line (exit {out.returncode}):\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}") from None


def test_every_signal_is_decided_exactly_once(chaos_result):
    assert chaos_result["signals"] > 0
    assert chaos_result["lost"] == 0
    assert chaos_result["duplicated"] == 0
    assert chaos_result["decisions"] == chaos_result["signals"]
    assert chaos_result["decisions_not_from_a_signal"] == 0


def test_every_poison_entry_is_dead_lettered(chaos_result):
    assert chaos_result["poison_sent"] > 0
    assert chaos_result["poison_dead_lettered"] == chaos_result["poison_sent"] == chaos_result["dead_lettered"]


def test_every_close_is_paired_with_its_decision(chaos_result):
    assert chaos_result["closes_unpaired"] == 0
    assert chaos_result["experiences_paired"] == chaos_result["closes_sent"] == chaos_result["decisions"]


def test_the_faults_happened(chaos_result):
    assert chaos_result["subscriber_kills"] == 5 and chaos_result["redis_restarts"] == 1
    assert chaos_result["database_cut_seconds"] > 0
    assert chaos_result["status_during_outage"], "status was never observed during the database outage"


def test_a_training_run_lost_with_its_worker_fails_and_a_new_one_succeeds(chaos_result):
    assert (chaos_result["training_runs_failed"], chaos_result["training_runs_recovered"]) == (1, 1)


def test_the_corrupted_champion_is_refused_and_the_previous_version_served(chaos_result):
    assert chaos_result["corrupted_refused"] is True
    assert chaos_result["model_served_after_corruption"] == "1"
    assert chaos_result["stream_decisions_after_corruption_by"] == ["1"]


def test_status_never_claimed_a_healthy_database_during_the_outage(chaos_result):
    assert chaos_result["status_lies"] == 0, chaos_result["status_lie_examples"]
