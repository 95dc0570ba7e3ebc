"""Writes on the live side: decisions, experiences, market bars, shadow mode."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from training.rl.features import FEATURE_SPEC_VERSION, observations_to_matrix

from .models import Decision, DecisionSource, ModelRole, ShadowModeChange, ShadowModeState
from .serving import ServedPolicy, policy_server

log = logging.getLogger(__name__)


# --- shadow mode --------------------------------------------------------------------------------


def shadow_mode_state() -> ShadowModeState:
    """The persisted switch; created from RLV3_SHADOW_MODE the first time it is read."""
    state, _ = ShadowModeState.objects.get_or_create(pk=1, defaults={"enabled": settings.RLV3_SHADOW_MODE})
    return state


def shadow_mode_set(*, enabled: bool, user=None, reason: str = "", via: str = "api") -> ShadowModeState:
    """Change shadow mode, recording who, when, old -> new and why. A no-op change is still audited."""
    with transaction.atomic():
        shadow_mode_state()
        state = ShadowModeState.objects.select_for_update().get(pk=1)
        old = state.enabled
        state.enabled = enabled
        state.updated_at = timezone.now()
        state.save(update_fields=["enabled", "updated_at"])
        ShadowModeChange.objects.create(
            changed_by=user if getattr(user, "is_authenticated", False) else None,
            old_value=old, new_value=enabled, reason=reason, via=via,
        )
    log.info("shadow mode %s -> %s by %s: %s", old, enabled, getattr(user, "username", None), reason)
    return state


# --- decisions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignalContext:
    """Where a decision request came from (stream metadata is empty for API calls)."""

    stream_entry_id: str | None = None
    correlation_id: str | None = None
    trace_id: str | None = None


def _decisions_build(
    *, policy: ServedPolicy, observations: Sequence[dict], role: str, shadow: bool, source: str,
    contexts: Sequence[SignalContext] | None = None,
) -> list[Decision]:
    vectors = observations_to_matrix(observations)
    batch = policy.runtime.predict_batch(vectors)
    now = timezone.now()
    contexts = contexts or [SignalContext()] * len(observations)
    built = []
    for i, (obs, ctx) in enumerate(zip(observations, contexts)):
        probs = [float(p) for p in batch.probabilities[i]]
        action = int(batch.actions[i])
        built.append(
            Decision(
                symbol=obs.get("symbol") or "",
                observation=obs,
                features=[float(x) for x in vectors[i]],
                feature_spec_version=FEATURE_SPEC_VERSION,
                action=action,
                probabilities=probs,
                confidence=min(1.0, max(0.0, probs[action])),
                value=float(batch.values[i]),
                model_version=policy.version,
                role=role,
                shadow_mode=shadow,
                source=source,
                stream_entry_id=ctx.stream_entry_id,
                correlation_id=ctx.correlation_id,
                trace_id=ctx.trace_id,
                created_at=now,
            )
        )
    return built


def decisions_predict(*, observations: Sequence[dict], source: str = DecisionSource.API) -> list[Decision]:
    """Score validated observations with the champion and store one Decision each (bulk insert)."""
    policy = policy_server().champion()
    shadow = shadow_mode_state().enabled
    decisions = _decisions_build(
        policy=policy, observations=observations, role=ModelRole.CHAMPION, shadow=shadow, source=source
    )
    return Decision.objects.bulk_create(decisions)
