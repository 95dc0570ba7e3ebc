"""Retention: archive old decisions and experiences to CSV with a sha256 checksum, then delete them.

A decision is due when it was created before the cutoff and its experience, if it has one, closed
before the cutoff too: a decision and the experience that realises it are archived and deleted
together (Experience.decision is PROTECT, so an experience is never orphaned and a decision with a
fresh outcome stays until that outcome is old as well).

A run works in rounds of at most ``round_rows`` decisions, in key order, each in two phases, so
nothing is deleted that is not safely on disk and memory stays bounded however much is due:

1. :func:`retention_archive` streams the round's due rows into ``decisions-<stamp>-<part>.csv``
   and ``experiences-<stamp>-<part>.csv`` (written under a temporary name, fsynced, renamed), each
   with a ``*.csv.sha256`` file in ``sha256sum`` format, and re-reads each file to verify its
   checksum.
2. :func:`retention_delete` deletes the archived rows in batches of ids, one short transaction per
   batch (no table lock, no long-running transaction), experiences first. A decision that gained
   an experience after it was archived is kept (it is archived again, with its outcome, by a later
   run once that outcome is old too).

A run stopped part way leaves whole rounds archived and deleted, and at most one round archived
but not (or not all) deleted; the next run archives what is left of it again, in new files.

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

from django.db import router, transaction
from django.db.models import Exists, OuterRef

from .models import Decision, Experience

CHUNK = 2_000  # rows read per query while archiving
ROUND_ROWS = 100_000  # decisions archived and deleted per round (the ids a round holds in memory)


@dataclass
class ArchivedFile:
    path: str
    sha256: str
    rows: int


@dataclass
class RetentionResult:
    """What one round, or a whole run, did. A round's ``decision_ids`` and ``experience_ids`` are
    the primary keys it archived, in order; a run keeps only the counts."""

    cutoff: str
    decision_ids: list[uuid.UUID] = field(default_factory=list)
    experience_ids: list[int] = field(default_factory=list)
    files: list[ArchivedFile] = field(default_factory=list)
    decisions_archived: int = 0
    experiences_archived: int = 0
    decisions_deleted: int = 0
    experiences_deleted: int = 0
    kept_paired_since: int = 0
    rounds: int = 0
    dry_run: bool = False

    def summary(self) -> dict:
        return {
            "cutoff": self.cutoff, "dry_run": self.dry_run,
            "decisions_archived": self.decisions_archived, "experiences_archived": self.experiences_archived,
            "decisions_deleted": self.decisions_deleted, "experiences_deleted": self.experiences_deleted,
            "kept_paired_since": self.kept_paired_since, "rounds": self.rounds, "files": [vars(f) for f in self.files],
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


def _chunks(queryset, attnames: list[str], *, limit: int) -> Iterator[list[tuple]]:
    """The first ``limit`` rows of ``queryset`` in key order, CHUNK at a time, by keyset (never OFFSET)."""
    last = None
    while limit > 0:
        after = queryset if last is None else queryset.filter(pk__gt=last)
        rows = list(after.order_by("pk").values_list(*attnames)[:min(CHUNK, limit)])
        if not rows:
            return
        yield rows
        limit -= len(rows)
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


def retention_archive(
    *, cutoff: datetime, out_dir: Path, stamp: str, after: uuid.UUID | None = None, limit: int = ROUND_ROWS,
) -> RetentionResult:
    """Phase 1 of a round: write the first ``limit`` due decisions (by key, after ``after``) and
    their experiences to verified CSV files named with ``stamp``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result = RetentionResult(cutoff=cutoff.isoformat())
    # No transaction around the reads: each chunk is its own short query (no long snapshot held).
    # The experiences file holds exactly the experiences of the decisions written, so they agree.
    attnames = [a for _, a in _columns(Decision)]
    due = due_decisions(cutoff) if after is None else due_decisions(cutoff).filter(pk__gt=after)
    decisions_file, decision_ids = _write_csv(
        out_dir / f"decisions-{stamp}.csv", Decision, _chunks(due, attnames, limit=limit)
    )
    experiences_file, experience_ids = _write_csv(
        out_dir / f"experiences-{stamp}.csv", Experience, _experience_chunks(decision_ids, [a for _, a in _columns(Experience)])
    )
    for archived in (decisions_file, experiences_file):
        if not verify_checksum(Path(archived.path)):
            raise RuntimeError(f"archive {archived.path} does not match its checksum: nothing deleted")
    result.decision_ids, result.experience_ids = decision_ids, experience_ids
    result.decisions_archived, result.experiences_archived = len(decision_ids), len(experience_ids)
    result.files = [decisions_file, experiences_file]
    result.rounds = 1
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
            # archive was written keeps its row (and its new experience). One DELETE: the
            # collector's delete() would first fetch every row of the batch to check PROTECT,
            # which this filter already guarantees (and the foreign key still enforces).
            dec_deleted = Decision.objects.filter(pk__in=ids, experience__isnull=True)._raw_delete(router.db_for_write(Decision))
        result.experiences_deleted += exp_deleted
        result.decisions_deleted += dec_deleted
        result.kept_paired_since += len(ids) - dec_deleted
    return result


def retention_run(
    *, cutoff: datetime, out_dir: Path, stamp: str, batch: int = 1_000, dry_run: bool = False, round_rows: int = ROUND_ROWS,
) -> RetentionResult:
    """Archive then (unless ``dry_run``) delete everything due before ``cutoff``, in rounds of at
    most ``round_rows`` decisions (files ``*-<stamp>-0001.csv``, ``-0002``, ...)."""
    run = RetentionResult(cutoff=cutoff.isoformat(), dry_run=dry_run)
    if dry_run:
        due = due_decisions(cutoff)
        run.decisions_archived = due.count()
        run.experiences_archived = Experience.objects.filter(decision__in=due).count()
        return run
    after = None
    while True:
        part = retention_delete(
            result=retention_archive(cutoff=cutoff, out_dir=out_dir, stamp=f"{stamp}-{run.rounds + 1:04d}", after=after, limit=round_rows),
            batch=batch,
        )
        run.rounds += 1
        run.files += part.files
        for name in ("decisions_archived", "experiences_archived", "decisions_deleted", "experiences_deleted", "kept_paired_since"):
            setattr(run, name, getattr(run, name) + getattr(part, name))
        after = part.decision_ids[-1] if part.decision_ids else None
        if part.decisions_archived < round_rows or not due_decisions(cutoff).filter(pk__gt=after).exists():
            return run
