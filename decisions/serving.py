"""The policy, loaded once per process and swapped when the champion alias moves.

Serving runs on the numpy inference runtime (no torch in the web or subscriber process). An artifact
is loaded only when its sha256 matches its ModelVersion; a refused or missing artifact leaves the
last good policy in place (or, with none, an untrained network reported as `model_loaded=false`).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.db import DatabaseError, InterfaceError

from training.rl.inference import PolicyRuntime

log = logging.getLogger(__name__)

UNTRAINED = "untrained"


@dataclass(frozen=True)
class ServedPolicy:
    runtime: PolicyRuntime
    version: str  # the version number as text, or "untrained"
    loaded: bool  # False for the untrained fallback
    path: str = ""


@dataclass
class _State:
    champion: ServedPolicy | None = None
    challenger: ServedPolicy | None = None
    checked_at: float = float("-inf")
    aliases: dict = field(default_factory=dict)
    refused: dict = field(default_factory=dict)  # version -> reason it was refused
    registry_error: str = ""  # why the last alias read failed; cleared by the next one that works


class PolicyServer:
    """Thread-safe holder of the served champion (and challenger, for A/B scoring in shadow)."""

    def __init__(self, poll_seconds: float | None = None):
        self._lock = threading.Lock()
        self._state = _State()
        self._cache: dict[int, ServedPolicy] = {}
        self._poll = settings.RLV3_MODEL_POLL_SECONDS if poll_seconds is None else poll_seconds
        self._untrained = ServedPolicy(runtime=PolicyRuntime.untrained(seed=0), version=UNTRAINED, loaded=False)
        self._shadow: tuple[float, bool] | None = None  # (monotonic time read, enabled)

    # -- public ------------------------------------------------------------------------------
    def champion(self) -> ServedPolicy:
        self._maybe_refresh()
        return self._state.champion or self._untrained

    def challenger(self) -> ServedPolicy | None:
        self._maybe_refresh()
        return self._state.challenger

    def shadow_mode(self) -> bool:
        """The persisted shadow-mode switch, re-read at most every RLV3_SHADOW_MODE_CACHE_SECONDS:
        one query per second per process instead of one per prediction. A change made in another
        process is seen within that time; one made here (shadow_mode_note) at once."""
        cached = self._shadow
        if cached is not None and time.monotonic() - cached[0] < settings.RLV3_SHADOW_MODE_CACHE_SECONDS:
            return cached[1]
        from decisions.services import shadow_mode_state

        enabled = shadow_mode_state().enabled
        self._shadow = (time.monotonic(), enabled)
        return enabled

    def shadow_mode_note(self, enabled: bool) -> None:
        """Record a change this process just committed (so its next prediction already uses it)."""
        self._shadow = (time.monotonic(), enabled)

    def refresh(self) -> None:
        """Re-read the aliases now (tests and the admin call this after moving an alias)."""
        with self._lock:
            self._refresh_locked()

    def describe(self) -> dict:
        champion = self.champion()
        challenger = self._state.challenger
        return {
            "model_loaded": champion.loaded,
            "served_version": champion.version,
            "model_path": champion.path,
            "challenger_version": challenger.version if challenger else None,
            "load_error": self._load_error(),
            "refused_versions": dict(self._state.refused),
        }

    # -- internals -----------------------------------------------------------------------------
    def _load_error(self) -> str:
        """What stands between the registry and what is served now: the registry being unreachable,
        and the champion or challenger version named by the aliases being refused."""
        state = self._state
        errors = [state.registry_error] if state.registry_error else []
        for name in ("champion", "challenger"):
            wanted = state.aliases.get(name)
            if wanted is not None and str(wanted) in state.refused:
                errors.append(f"v{wanted} refused: {state.refused[str(wanted)]}")
        return "; ".join(errors)

    def _due(self) -> bool:
        """Whether the aliases should be read now: every RLV3_MODEL_POLL_SECONDS, and on every call
        while the last read failed and no policy was ever loaded (a process that started during a
        database outage). That process would otherwise serve the untrained network for up to a poll
        interval after the database came back."""
        state = self._state
        return (state.champion is None and bool(state.registry_error)) or time.monotonic() - state.checked_at >= self._poll

    def _maybe_refresh(self) -> None:
        if not self._due():
            return
        if not self._lock.acquire(blocking=self._state.champion is None):
            return  # another thread is refreshing; keep serving the current policy
        try:
            if self._due():
                self._refresh_locked()
        finally:
            self._lock.release()

    def _refresh_locked(self) -> None:
        from training.models import AliasChange, AliasName, ModelVersion
        from training.selectors import alias_versions

        self._state.checked_at = time.monotonic()
        try:
            aliases = alias_versions()
            self._state.registry_error = ""
            if aliases == self._state.aliases and self._state.champion is not None:
                return
            wanted = aliases.get(AliasName.CHAMPION)
            champion = self._state.champion
            if wanted is not None and (champion is None or champion.version != str(wanted)):
                candidates = [wanted] + [
                    v for v in AliasChange.objects.filter(name=AliasName.CHAMPION, new_version__isnull=False)
                    .exclude(new_version=wanted).values_list("new_version", flat=True)
                ]
                for number in dict.fromkeys(candidates):  # the champion, then earlier champions, newest first
                    if champion is not None and champion.version == str(number):
                        break  # the one already served is the best good fallback
                    served = self._load(ModelVersion.objects.filter(version=number).first())
                    if served is not None:
                        champion = served
                        break
            elif wanted is None:
                champion = None
            challenger_number = aliases.get(AliasName.CHALLENGER)
            challenger = (
                self._load(ModelVersion.objects.filter(version=challenger_number).first())
                if challenger_number is not None else None
            )
            self._state.champion, self._state.challenger, self._state.aliases = champion, challenger, aliases
        except (DatabaseError, InterfaceError) as exc:  # InterfaceError: a connection the outage closed
            self._state.registry_error = f"registry unavailable: {exc}"
            log.warning("policy refresh failed: %s", exc)

    def _load(self, version) -> ServedPolicy | None:
        if version is None:
            return None
        cached = self._cache.get(version.version)
        if cached is not None:
            return cached
        try:
            runtime = PolicyRuntime.load(version.runtime_path, expected_sha256=version.runtime_sha256)
        except Exception as exc:  # refused (sha256, spec) or unreadable: never serve it
            self._state.refused[str(version.version)] = str(exc)
            log.error("model v%s refused: %s", version.version, exc)
            return None
        served = ServedPolicy(runtime=runtime, version=str(version.version), loaded=True, path=version.artifact_path)
        self._cache[version.version] = served
        self._state.refused.pop(str(version.version), None)
        log.info("serving model v%s from %s", version.version, version.runtime_path)
        return served


_server: PolicyServer | None = None
_server_lock = threading.Lock()


def policy_server() -> PolicyServer:
    """The process-wide PolicyServer (created on first use, after fork)."""
    global _server
    if _server is None:
        with _server_lock:
            if _server is None:
                _server = PolicyServer()
    return _server


def policy_server_reset() -> None:
    """Forget the loaded policies (tests use this to simulate a fresh process)."""
    global _server
    with _server_lock:
        _server = None
