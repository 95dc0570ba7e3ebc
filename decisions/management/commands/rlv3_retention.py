"""`manage.py rlv3_retention`: archive decisions and experiences older than the retention period
to CSV files with sha256 checksums, then delete them in small batches (decisions.retention)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from decisions.retention import ROUND_ROWS, retention_run


class Command(BaseCommand):
    help = "Archive (CSV + sha256) and delete decisions and experiences older than RLV3_RETENTION_DAYS."

    def add_arguments(self, parser):
        parser.add_argument("--days", type=int, default=None, help="Keep this many days (default: RLV3_RETENTION_DAYS).")
        parser.add_argument("--out", default=None, help="Archive directory (default: RLV3_ARCHIVE_DIR).")
        parser.add_argument("--batch", type=int, default=1000, help="Rows deleted per transaction.")
        parser.add_argument(
            "--round", type=int, default=ROUND_ROWS, dest="round_rows",
            help=f"Decisions archived (one pair of files) and then deleted per round (default {ROUND_ROWS:,}).",
        )
        parser.add_argument("--dry-run", action="store_true", help="Count what is due; write and delete nothing.")
        parser.add_argument("--json", action="store_true", help="Print one JSON object as the last line.")

    def handle(self, *args, days, out, batch, round_rows, dry_run, **options):
        days = settings.RLV3_RETENTION_DAYS if days is None else days
        if days < 1:
            raise CommandError("--days must be at least 1")
        if not 1 <= batch <= 100_000:
            raise CommandError("--batch must be between 1 and 100000")
        if not 1 <= round_rows <= 10_000_000:
            raise CommandError("--round must be between 1 and 10000000")
        now = timezone.now()
        cutoff = now - timedelta(days=days)
        out_dir = Path(out) if out else Path(settings.RLV3_ARCHIVE_DIR)
        result = retention_run(
            cutoff=cutoff, out_dir=out_dir, stamp=now.strftime("%Y%m%dT%H%M%SZ"), batch=batch, dry_run=dry_run, round_rows=round_rows,
        )
        summary = result.summary()
        verb = "would archive" if dry_run else "archived"
        self.stdout.write(
            f"rlv3_retention: cutoff {cutoff:%Y-%m-%d %H:%M} UTC ({days} days): {verb} {summary['decisions_archived']} "
            f"decisions and {summary['experiences_archived']} experiences; deleted {summary['decisions_deleted']} and "
            f"{summary['experiences_deleted']} in {summary['rounds']} round(s); kept {summary['kept_paired_since']} paired since archiving"
        )
        for f in summary["files"]:
            self.stdout.write(f"  {f['path']}  {f['rows']} rows  sha256 {f['sha256']}")
        if options["json"]:
            self.stdout.write(json.dumps(summary, sort_keys=True))
