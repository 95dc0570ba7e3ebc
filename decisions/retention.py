"""Retention: archive old decisions and experiences to CSV with a sha256 checksum, then delete them.

A decision is due when it was created before the cutoff and its experience, if it has one, closed
before the cutoff too: a decision and the experience that realises it are archived and deleted
together (Experience.decision is PROTECT, so an experience is never orphaned and a decision with a
fresh outcome stays until that outcome is old as well).

Two phases, so nothing is deleted that is not safely on disk:

1. :func:`retention_archive` streams the due rows, in key order, into ``decisions-*.csv`` and
   ``experiences-*.csv`` (written under a temporary name, fsynced, renamed), each with a
   ``*.csv.sha256`` file in ``sha256sum`` format, and re-reads each file to verify its checksum.
2. :func:`retention_delete` deletes the archived rows in batches of ids, one short transaction per
   batch (no table lock, no long-running transaction), experiences first. A decision that gained
   an experience after it was archived is kept (it is archived again, with its outcome, by a later
   run once that outcome is old too).

The live path never updates decisions or experiences in place, so an archived row is final.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from django.db import transaction
from django.db.models import Exists, OuterRef

from .models import Decision, Experience

CHUNK = 2_000  # rows read per query while archiving


@dataclass
class ArchivedFile:
    path: str
    sha256: str
    rows: int


@dataclass
class RetentionResult:
    """What one run did (``ids`` are the archived primary keys, in order)."""

    cutoff: str
    decision_ids: list[uuid.UUID] = field(default_factory=list)
    experience_ids: list[int] = field(default_factory=list)
    files: list[ArchivedFile] = field(default_factory=list)
    decisions_deleted: int = 0
    experiences_deleted: int = 0
    kept_paired_since: int = 0
    dry_run: bool = False

    def summary(self) -> dict:
        return {
            "cutoff": self.cutoff, "dry_run": self.dry_run,
            "decisions_archived": len(self.decision_ids), "experiences_archived": len(self.experience_ids),
            "decisions_deleted": self.decisions_deleted, "experiences_deleted": self.experiences_deleted,
            "kept_paired_since": self.kept_paired_since, "files": [vars(f) for f in self.files],
        }


def due_decisions(cutoff: datetime):
    """Decisions created before ``cutoff`` with no experience, or one closed before ``cutoff``."""
    recent_outcome = Experience.objects.filter(decision=OuterRef("pk"), closed_at__gte=cutoff)
    return Decision.objects.filter(created_at__lt=cutoff).filter(~Exists(recent_outcome))


def _columns(model) -> list[tuple[str, str]]:
    return [(f.column, f.attname) for f in model._meta.concrete_fields]


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _chunks(queryset, attnames: list[str]) -> Iterator[list[tuple]]:
    """Rows of ``queryset`` in key order, CHUNK at a time, by keyset (never OFFSET)."""
    last = None
    while True:
        after = queryset if last is None else queryset.filter(pk__gt=last)
        rows = list(after.order_by("pk").values_list(*attnames)[:CHUNK])
        if not rows:
            return
        yield rows
        last = rows[-1][0]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _experience_chunks(decision_ids: list[uuid.UUID], attnames: list[str]) -> Iterator[list[tuple]]:
    """The experiences of ``decision_ids`` (all of them, in chunks of decisions)."""
    for start in range(0, len(decision_ids), CHUNK):
        chunk = decision_ids[start:start + CHUNK]
        rows = list(Experience.objects.filter(decision_id__in=chunk).order_by("pk").values_list(*attnames))
        if rows:
            yield rows


def _write_csv(path: Path, model, chunks: Iterator[list[tuple]]) -> tuple[ArchivedFile, list]:
    """Write the rows of ``chunks`` (all concrete columns of ``model``, its key first) to
    ``path`` atomically; returns the file and the keys written."""
    columns = _columns(model)
    tmp = path.with_name(path.name + ".partial")
    ids: list = []
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([c for c, _ in columns])
        for rows in chunks:
            writer.writerows([_cell(v) for v in row] for row in rows)
            ids += [row[0] for row in rows]
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    digest = sha256_of(path)
    checksum = path.with_name(path.name + ".sha256")
    checksum.write_text(f"{digest}  {path.name}\n", encoding="ascii")
    return ArchivedFile(path=str(path), sha256=digest, rows=len(ids)), ids


def verify_checksum(path: Path) -> bool:
    """True when ``path`` matches the digest in ``path.sha256`` (sha256sum format)."""
    expected = Path(str(path) + ".sha256").read_text(encoding="ascii").split()[0]
    return sha256_of(path) == expected


def retention_archive(*, cutoff: datetime, out_dir: Path, stamp: str) -> RetentionResult:
    """Phase 1: write the due decisions and their experiences to verified CSV files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result = RetentionResult(cutoff=cutoff.isoformat())
    # No transaction around the reads: each chunk is its own short query (no long snapshot held).
    # The experiences file holds exactly the experiences of the decisions written, so they agree.
    attnames = [a for _, a in _columns(Decision)]
    decisions_file, decision_ids = _write_csv(
        out_dir / f"decisions-{stamp}.csv", Decision, _chunks(due_decisions(cutoff), attnames)
    )
    experiences_file, experience_ids = _write_csv(
        out_dir / f"experiences-{stamp}.csv", Experience, _experience_chunks(decision_ids, [a for _, a in _columns(Experience)])
    )
    for archived in (decisions_file, experiences_file):
        if not verify_checksum(Path(archived.path)):
            raise RuntimeError(f"archive {archived.path} does not match its checksum: nothing deleted")
    result.decision_ids, result.experience_ids = decision_ids, experience_ids
    result.files = [decisions_file, experiences_file]
    return result


def retention_delete(*, result: RetentionResult, batch: int) -> RetentionResult:
    """Phase 2: delete what ``result`` archived, ``batch`` ids per short transaction."""
    archived_experiences = set(result.experience_ids)
    for start in range(0, len(result.decision_ids), batch):
        ids = result.decision_ids[start:start + batch]
        with transaction.atomic():
            # Experiences of these decisions that are in the archive go first (PROTECT) ...
            current = Experience.objects.filter(decision_id__in=ids).values_list("pk", flat=True)
            exp_deleted, _ = Experience.objects.filter(pk__in=[pk for pk in current if pk in archived_experiences]).delete()
            # ... then the decisions that now have no experience. One that was paired after the
            # archive was written keeps its row (and its new experience).
            dec_deleted, _ = Decision.objects.filter(pk__in=ids, experience__isnull=True).delete()
        result.experiences_deleted += exp_deleted
        result.decisions_deleted += dec_deleted
        result.kept_paired_since += len(ids) - dec_deleted
    return result


def retention_run(*, cutoff: datetime, out_dir: Path, stamp: str, batch: int = 1_000, dry_run: bool = False) -> RetentionResult:
    """Archive then (unless ``dry_run``) delete everything due before ``cutoff``."""
    if dry_run:
        due = due_decisions(cutoff)
        result = RetentionResult(cutoff=cutoff.isoformat(), dry_run=True)
        result.decision_ids = list(due.order_by("pk").values_list("pk", flat=True))
        result.experience_ids = list(
            Experience.objects.filter(decision_id__in=result.decision_ids).order_by("pk").values_list("pk", flat=True)
        )
        return result
    return retention_delete(result=retention_archive(cutoff=cutoff, out_dir=out_dir, stamp=stamp), batch=batch)
