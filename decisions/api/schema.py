"""OpenAPI shapes that serializers cannot express, built from the one source of each rule.

The observation's ranges come from ``training.rl.features`` (the validator's own bounds), so the
schema promises exactly what ``validate_observation`` accepts. ``predict`` takes one observation or
``{"observations": [...]}`` and answers one prediction or a list: ``anyOf``, because a batch body
is also a well-formed observation object (unknown keys are ignored) and ``oneOf`` would reject it.
"""

from __future__ import annotations

from django.conf import settings

from training.rl.actions import ACTION_NAMES
from training.rl.features import HORIZONS, OBSERVATION_BOUNDS, OBSERVATION_DEFAULTS, REGIMES

SYMBOL_PATTERN = r"^[A-Za-z0-9._:/-]{1,32}$"
# Bundled datasets or recorded:SYMBOL (training.datasets.dataset_is_known without file paths).
DATASET_PATTERN = r"^(eurusd_1h|googl_1d|recorded:[A-Za-z0-9._:/-]{1,32})$"


def _number(name: str) -> dict:
    low, high = OBSERVATION_BOUNDS[name]
    schema: dict = {"type": "number", "default": OBSERVATION_DEFAULTS[name]}
    if name == "position_side":
        return {**schema, "enum": [-1, 0, 1], "description": "-1 short, 0 flat, 1 long."}
    schema.update(minimum=low, maximum=high)
    if name in HORIZONS:
        schema["exclusiveMinimum"] = True  # a price cannot fall to 0: a change of exactly -1 is refused
    return schema


def observation_schema() -> dict:
    """JSON schema of one observation (CONTRACTS section 4): every field optional, seed defaults."""
    properties: dict[str, dict] = {
        "symbol": {"type": "string", "pattern": SYMBOL_PATTERN, "description": "Instrument, e.g. BTCUSDT."},
        "regime": {"type": "string", "enum": list(REGIMES), "default": OBSERVATION_DEFAULTS["regime"]},
    }
    for name in OBSERVATION_DEFAULTS:
        if name != "regime":
            properties[name] = _number(name)
    return {"type": "object", "properties": properties, "description": "One observation; omitted fields take the seed's defaults."}


def predict_request_schema() -> dict:
    batch = {
        "type": "object",
        "required": ["observations"],
        "properties": {
            "observations": {"type": "array", "items": observation_schema(), "minItems": 1, "maxItems": settings.RLV3_MAX_BATCH},
        },
    }
    return {"anyOf": [observation_schema(), batch]}


def prediction_schema() -> dict:
    probability = {"type": "number", "minimum": 0, "maximum": 1}
    return {
        "type": "object",
        "required": ["decision_id", "symbol", "action", "action_code", "confidence", "probabilities", "value", "model_version", "shadow_mode"],
        "properties": {
            "decision_id": {"type": "string", "format": "uuid"},
            "symbol": {"type": "string"},
            "action": {"type": "string", "enum": list(ACTION_NAMES)},
            "action_code": {"type": "integer", "minimum": 0, "maximum": len(ACTION_NAMES) - 1},
            "confidence": {**probability, "description": "The policy's probability of the chosen action."},
            "probabilities": {
                "type": "object", "properties": {name: probability for name in ACTION_NAMES}, "required": list(ACTION_NAMES),
                "description": "Probability of each action, by name.",
            },
            "value": {"type": "number", "description": "The critic's value estimate (not a confidence)."},
            "model_version": {"type": "string"},
            "shadow_mode": {"type": "boolean"},
        },
    }


def predict_response_schema() -> dict:
    """One prediction for one observation, a list (in request order) for a batch."""
    one = prediction_schema()
    return {"anyOf": [one, {"type": "array", "items": one}]}
