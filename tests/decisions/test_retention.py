"""rlv3_retention: due rows are archived (CSV + verified sha256) and deleted in batches; a decision
and its experience go together; nothing recent, and nothing not on disk, is ever deleted."""

from __future__ import annotations

import csv
import hashlib
import json
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.utils import timezone

from decisions.models import Decision, DecisionSource, Experience
from decisions.retention import retention_archive, retention_delete, verify_checksum

pytestmark = pytest.mark.django_db


# An experience's observation is JSON: text that needs quoting in a CSV must survive the archive.
OUTCOME_OBSERVATION = {"rsi": 40.0, "note": "a,\"quoted\"\nline"}


def _decision(days_ago: float, symbol: str = "BTCUSDT") -> Decision:
    return Decision.objects.create(
        symbol=symbol, observation={"rsi": 40.0, "regime": "RANGE"}, features=[0.5] * 64, action=1,
        probabilities=[0.1, 0.5, 0.1, 0.1, 0.1, 0.1], confidence=0.5, value=0.25, model_version="3",
        shadow_mode=True, source=DecisionSource.STREAM, created_at=timezone.now() - timedelta(days=days_ago),
    )


def _experience(decision: Decision, days_ago: float, pnl: float = 12.5) -> Experience:
    return Experience.objects.create(
        decision=decision, symbol=decision.symbol, observation=OUTCOME_OBSERVATION, action=decision.action,
        behaviour_probabilities=decision.probabilities, model_version=decision.model_version, reward=0.01,
        pnl=pnl, roi=1.0, closed_at=timezone.now() - timedelta(days=days_ago),
    )


def _run(tmp_path: Path, *args: str) -> dict:
    out = StringIO()
    call_command("rlv3_retention", "--days", "30", "--out", str(tmp_path / "archive"), "--json", *args, stdout=out)
    return json.loads(out.getvalue().strip().splitlines()[-1])


def _rows(path: str) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_old_rows_are_archived_with_checksums_then_deleted(tmp_path):
    old_unpaired = [_decision(40 + i) for i in range(5)]
    old_paired = [_decision(50 + i) for i in range(3)]
    old_experiences = [_experience(d, 45, pnl=float(i)) for i, d in enumerate(old_paired)]
    old_with_fresh_outcome = _decision(60)
    fresh_outcome = _experience(old_with_fresh_outcome, 1)
    recent = [_decision(2), _decision(29)]
    _experience(recent[0], 1)

    stored_observation = Decision.objects.get(pk=old_paired[0].pk).observation
    assert (stored_observation["rsi"], stored_observation["regime"], stored_observation["volatility"]) == (40.0, "RANGE", 0.02)

    summary = _run(tmp_path, "--batch", "2")

    assert summary["decisions_archived"] == 8 and summary["experiences_archived"] == 3
    assert summary["decisions_deleted"] == 8 and summary["experiences_deleted"] == 3
    decisions_file, experiences_file = (f["path"] for f in summary["files"])
    for f in summary["files"]:
        data = Path(f["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f["sha256"]
        assert Path(f["path"] + ".sha256").read_text() == f"{f['sha256']}  {Path(f['path']).name}\n"  # sha256sum -c format
        assert verify_checksum(Path(f["path"]))
    archived = _rows(decisions_file)
    assert list(archived[0])[0] == "decision_id"  # the key first
    assert sorted(r["decision_id"] for r in archived) == sorted(str(d.pk) for d in old_unpaired + old_paired)
    first = next(r for r in archived if r["decision_id"] == str(old_paired[0].pk))
    assert json.loads(first["observation"]) == stored_observation  # the stored fields, defaults included
    assert json.loads(first["features"]) == [0.5] * 64
    exp_rows = _rows(experiences_file)
    assert sorted(int(r["id"]) for r in exp_rows) == sorted(e.pk for e in old_experiences)
    assert {r["decision_id"] for r in exp_rows} == {str(d.pk) for d in old_paired}  # archived together
    assert sorted(float(r["pnl"]) for r in exp_rows) == [0.0, 1.0, 2.0]
    assert all(json.loads(r["observation"]) == OUTCOME_OBSERVATION for r in exp_rows)  # JSON survives CSV quoting
    # What stays: the recent rows, and the old decision whose outcome is recent (with that outcome).
    assert set(Decision.objects.values_list("pk", flat=True)) == {old_with_fresh_outcome.pk, *(d.pk for d in recent)}
    assert Experience.objects.filter(pk=fresh_outcome.pk).exists() and Experience.objects.count() == 2


def test_a_second_run_finds_nothing(tmp_path):
    _decision(40)
    assert _run(tmp_path)["decisions_deleted"] == 1
    again = _run(tmp_path)
    assert again["decisions_archived"] == 0 and again["decisions_deleted"] == 0


def test_dry_run_counts_and_changes_nothing(tmp_path):
    d = _decision(40)
    _experience(d, 35)
    summary = _run(tmp_path, "--dry-run")
    assert (summary["decisions_archived"], summary["experiences_archived"], summary["decisions_deleted"]) == (1, 1, 0)
    assert Decision.objects.count() == 1 and Experience.objects.count() == 1 and not (tmp_path / "archive").exists()


def test_a_decision_paired_after_archiving_is_kept_with_its_new_experience(tmp_path):
    late = _decision(40)
    other = _decision(41)
    result = retention_archive(cutoff=timezone.now() - timedelta(days=30), out_dir=tmp_path, stamp="t")
    assert sorted(result.decision_ids) == sorted([late.pk, other.pk])
    new = _experience(late, 0)  # a position.closed paired it between the archive and the delete
    retention_delete(result=result, batch=10)
    assert result.decisions_deleted == 1 and result.kept_paired_since == 1 and result.experiences_deleted == 0
    assert Decision.objects.filter(pk=late.pk).exists() and Experience.objects.filter(pk=new.pk).exists()
    assert not Decision.objects.filter(pk=other.pk).exists()


def test_a_corrupted_archive_fails_its_checksum(tmp_path):
    _decision(40)
    result = retention_archive(cutoff=timezone.now() - timedelta(days=30), out_dir=tmp_path, stamp="t")
    path = Path(result.files[0].path)
    path.write_bytes(path.read_bytes().replace(b"BTCUSDT", b"ETHUSDT"))
    assert not verify_checksum(path)


def test_invalid_options_are_refused(tmp_path):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError):
        call_command("rlv3_retention", "--days", "0", "--out", str(tmp_path))
    with pytest.raises(CommandError):
        call_command("rlv3_retention", "--batch", "0", "--out", str(tmp_path))


def test_a_run_works_in_rounds_each_archived_and_verified_before_its_deletes(tmp_path):
    due = [_decision(40 + i) for i in range(8)]
    paired = {d.pk: _experience(d, 35, pnl=float(i)) for i, d in enumerate(due[::3])}
    recent = _decision(3)

    summary = _run(tmp_path, "--round", "3", "--batch", "2")

    assert summary["rounds"] == 3
    assert (summary["decisions_archived"], summary["experiences_archived"]) == (8, 3)
    assert (summary["decisions_deleted"], summary["experiences_deleted"]) == (8, 3)
    decision_files, experience_files = summary["files"][0::2], summary["files"][1::2]
    assert [Path(f["path"]).name.rsplit("-", 1)[1] for f in decision_files] == ["0001.csv", "0002.csv", "0003.csv"]
    rounds = [[r["decision_id"] for r in _rows(f["path"])] for f in decision_files]
    assert [len(r) for r in rounds] == [3, 3, 2] and [f["rows"] for f in decision_files] == [3, 3, 2]
    assert sum(rounds, []) == sorted(str(d.pk) for d in due)  # disjoint, in key order, all of them
    for f in summary["files"]:
        assert verify_checksum(Path(f["path"]))
    for ids, f in zip(rounds, experience_files):  # each round's outcomes are in that round's file
        assert {r["decision_id"] for r in _rows(f["path"])} == {str(pk) for pk in paired if str(pk) in ids}
    assert list(Decision.objects.values_list("pk", flat=True)) == [recent.pk] and not Experience.objects.exists()


def test_a_full_last_round_leaves_no_empty_files(tmp_path):
    for i in range(4):
        _decision(40 + i)
    summary = _run(tmp_path, "--round", "2")
    assert summary["rounds"] == 2 and [f["rows"] for f in summary["files"][0::2]] == [2, 2]
    assert sorted(p.name for p in (tmp_path / "archive").iterdir()) == sorted(
        name for f in summary["files"] for name in (Path(f["path"]).name, Path(f["path"]).name + ".sha256")
    )


def test_a_round_of_a_later_run_keeps_what_was_paired_since_and_archives_it_next_time(tmp_path):
    """A run stopped after its archive (or a decision paired meanwhile): nothing is lost; the next
    run archives the kept decision again with its outcome once that is old."""
    late = _decision(40)
    result = retention_archive(cutoff=timezone.now() - timedelta(days=30), out_dir=tmp_path / "archive", stamp="t")
    _experience(late, 0)
    retention_delete(result=result, batch=10)
    assert Decision.objects.filter(pk=late.pk).exists()
    assert _run(tmp_path)["decisions_archived"] == 0  # its outcome is recent: not due yet
    Experience.objects.filter(decision=late).update(closed_at=timezone.now() - timedelta(days=31))
    again = _run(tmp_path)
    assert (again["decisions_archived"], again["experiences_archived"], again["decisions_deleted"]) == (1, 1, 1)


def test_a_round_too_small_is_refused(tmp_path):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="--round"):
        call_command("rlv3_retention", "--round", "0", "--out", str(tmp_path))
