"""`manage.py rlv3_dead_letters list|replay|purge`: inspect the dead-letter stream, replay, clean up.

Dead letters live in ``{RLV3_STREAM_PREFIX}rl_v3.dead_letter`` (decisions.streams.codec): each holds
the original entry's fields, its stream and id, and the error. The operator's loop is: ``list`` to
see what failed and why, fix the producer (or the data it refers to), ``replay`` to put the original
fields back on their original stream (a new entry the subscriber consumes as usual; the dead letter
is removed in the same MULTI/EXEC), and ``purge`` what is not worth replaying.

Filters (all combine): ``--reason`` (case-insensitive substring of the error, or its reason label such
as ``invalid:payload`` or ``pairing``), ``--stream`` (event type or full stream key), ``--since``
(ISO-8601 time or a duration such as 30m, 2h, 7d, measured from the dead letter's own entry time),
``--limit``. ``--dry-run`` shows what replay or purge would do without doing it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from decisions.metrics import dead_letter_reason
from decisions.streams import codec

PAGE = 500
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True)
class StoredDeadLetter:
    """A dead-letter entry: its id in the dead-letter stream and what it says."""

    dead_id: str
    letter: codec.DeadLetter
    correlation_id: str | None

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(int(self.dead_id.split("-", 1)[0]) / 1000, UTC)

    @property
    def reason(self) -> str:
        return dead_letter_reason(self.letter.error)

    def to_dict(self) -> dict:
        return {
            "id": self.dead_id, "time": self.time.isoformat(), "stream": self.letter.stream, "entry_id": self.letter.entry_id,
            "reason": self.reason, "error": self.letter.error, "deliveries": self.letter.deliveries,
            "consumer": self.letter.consumer, "correlation_id": self.correlation_id, "original": self.letter.original,
        }


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """``2h``, ``30m``, ``7d`` (ago) or an ISO-8601 time (naive means UTC) -> aware UTC datetime."""
    now = now or datetime.now(UTC)
    match = _DURATION.match(text.strip().lower())
    if match:
        return now - timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    try:
        return codec.parse_timestamp(text, field_name="--since")
    except codec.WireError:
        raise CommandError(f"--since: expected an ISO-8601 time or a duration like 30m, 2h, 7d; got {text!r}") from None


def stream_key_for(name: str, prefix: str) -> str:
    """An event type (``signal.generated``) or a full key -> the full stream key."""
    return name if name.startswith(prefix) else codec.stream_key(name, prefix)


def dead_letters_select(
    client: redis.Redis, *, prefix: str, reason: str | None = None, stream: str | None = None,
    since: datetime | None = None, limit: int | None = None,
) -> list[StoredDeadLetter]:
    """Dead letters matching every given filter, oldest first, at most ``limit``."""
    key = codec.stream_key(codec.DEAD_LETTER, prefix)
    wanted_stream = stream_key_for(stream, prefix) if stream else None
    needle = reason.lower() if reason else None
    start = f"{int(since.timestamp() * 1000)}-0" if since else "-"
    out: list[StoredDeadLetter] = []
    while limit is None or len(out) < limit:
        page = client.xrange(key, min=start, max="+", count=PAGE)
        for dead_id, fields in page:
            try:
                stored = StoredDeadLetter(_text(dead_id), codec.decode_dead_letter(fields), codec.decode_entry(fields).correlation_id)
            except (codec.WireError, KeyError, TypeError):
                continue  # not written by this service's codec: never replayed blindly
            if wanted_stream and stored.letter.stream != wanted_stream:
                continue
            if needle and needle not in stored.letter.error.lower() and needle != stored.reason:
                continue
            out.append(stored)
            if limit is not None and len(out) >= limit:
                break
        if len(page) < PAGE:
            break
        start = f"({_text(page[-1][0])}"  # exclusive: continue after the last entry read
    return out


def dead_letter_replay(client: redis.Redis, stored: StoredDeadLetter, *, prefix: str) -> str:
    """Re-add the original fields to the original stream and delete the dead letter, atomically.

    Returns the new entry's id. Raises ValueError when there is nothing to replay (the original was
    trimmed from its stream before it could be read).
    """
    if not stored.letter.original:
        raise ValueError("the original entry's fields were not kept (it was trimmed while pending)")
    pipe = client.pipeline(transaction=True)
    pipe.xadd(stored.letter.stream, stored.letter.original)
    pipe.xdel(codec.stream_key(codec.DEAD_LETTER, prefix), stored.dead_id)
    new_id, _ = pipe.execute()
    return _text(new_id)


def dead_letters_purge(client: redis.Redis, ids: list[str], *, prefix: str) -> int:
    """Delete dead letters by id; returns how many were deleted."""
    key = codec.stream_key(codec.DEAD_LETTER, prefix)
    return sum(client.xdel(key, *ids[i : i + PAGE]) for i in range(0, len(ids), PAGE))


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Command(BaseCommand):
    help = "List, replay or purge dead letters (the subscriber's rejected stream entries)."

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["list", "replay", "purge"])
        parser.add_argument("--reason", help="Case-insensitive substring of the error, or a reason label (invalid:payload, pairing, max_deliveries, processing_failed).")
        parser.add_argument("--stream", help="Original stream: an event type (signal.generated) or a full stream key.")
        parser.add_argument("--since", help="Only dead letters added since: ISO-8601 time, or a duration ago (30m, 2h, 7d).")
        parser.add_argument("--limit", type=int, help="At most this many (list: default 50; replay/purge: all that match).")
        parser.add_argument("--dry-run", action="store_true", help="Show what replay or purge would do; change nothing.")
        parser.add_argument("--all", dest="purge_all", action="store_true", help="purge: allow purging without any filter.")
        parser.add_argument("--json", dest="as_json", action="store_true", help="Print one JSON object as the last line.")

    def handle(self, *args, action, reason, stream, since, limit, dry_run, purge_all, as_json, **options):
        if limit is not None and limit <= 0:
            raise CommandError("--limit must be a positive number")
        if action == "purge" and not (reason or stream or since or limit or purge_all):
            raise CommandError("purge needs a filter (--reason, --stream, --since, --limit) or --all")
        prefix = settings.RLV3_STREAM_PREFIX
        client = redis.Redis.from_url(settings.REDIS_URL, decode_responses=True, socket_timeout=10)
        try:
            matched = dead_letters_select(
                client, prefix=prefix, reason=reason, stream=stream,
                since=parse_since(since) if since else None, limit=limit or (50 if action == "list" else None),
            )
        except redis.RedisError as exc:
            raise CommandError(f"Redis unavailable: {exc}") from None
        self._table(matched)
        result = {"action": action, "dry_run": dry_run, "matched": len(matched), "replayed": [], "purged": 0, "skipped": []}
        if action == "replay":
            self._replay(client, matched, prefix=prefix, dry_run=dry_run, result=result)
        elif action == "purge":
            if not dry_run:
                result["purged"] = dead_letters_purge(client, [s.dead_id for s in matched], prefix=prefix)
            self.stdout.write(f"{'would purge' if dry_run else 'purged'} {len(matched) if dry_run else result['purged']} dead letters")
        else:
            self.stdout.write(f"{len(matched)} dead letters (of {client.xlen(codec.stream_key(codec.DEAD_LETTER, prefix))} in the stream)")
        if as_json:
            result["entries"] = [s.to_dict() for s in matched] if action == "list" else [s.dead_id for s in matched]
            self.stdout.write(json.dumps(result, separators=(",", ":"), default=str))

    def _replay(self, client, matched: list[StoredDeadLetter], *, prefix: str, dry_run: bool, result: dict) -> None:
        for stored in matched:
            if dry_run:
                self.stdout.write(f"would replay {stored.dead_id} to {stored.letter.stream}")
                continue
            try:
                new_id = dead_letter_replay(client, stored, prefix=prefix)
            except ValueError as exc:
                result["skipped"].append({"id": stored.dead_id, "why": str(exc)})
                self.stderr.write(f"skipped {stored.dead_id}: {exc}")
                continue
            result["replayed"].append({"id": stored.dead_id, "stream": stored.letter.stream, "new_entry_id": new_id})
            self.stdout.write(f"replayed {stored.dead_id} to {stored.letter.stream} as {new_id}")
        verb = "would replay" if dry_run else "replayed"
        self.stdout.write(f"{verb} {len(matched) if dry_run else len(result['replayed'])} of {len(matched)} matching dead letters")

    def _table(self, matched: list[StoredDeadLetter]) -> None:
        if not matched:
            return
        self.stdout.write(f"{'dead-letter id':<17} {'time (UTC)':<19} {'stream':<20} {'reason':<18} error")
        prefix = settings.RLV3_STREAM_PREFIX
        for s in matched:
            self.stdout.write(
                f"{s.dead_id:<17} {s.time:%Y-%m-%d %H:%M:%S} {s.letter.stream.removeprefix(prefix):<20} {s.reason:<18} {s.letter.error[:100]}"
            )
