"""Request and response shapes. Observation validation is delegated to the one shared function,
`training.rl.features.validate_observation`, so the API and the stream consumer accept exactly
the same inputs."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from decisions.api.schema import DATASET_PATTERN, observation_schema

from decisions.models import Decision, Experience, ShadowModeChange
from training.models import ModelVersion, TrainingRun
from training.rl.actions import ACTION_NAMES
from training.rl.features import OBSERVATION_DEFAULTS, REGIMES, ObservationError, validate_observation, validate_observations


def _observation_fields() -> dict[str, serializers.Field]:
    fields: dict[str, serializers.Field] = {
        "symbol": serializers.CharField(required=False, max_length=32, help_text="Instrument, e.g. BTCUSDT.")
    }
    for name, default in OBSERVATION_DEFAULTS.items():
        if name == "regime":
            fields[name] = serializers.ChoiceField(choices=REGIMES, required=False, default=default)
        elif name != "symbol":
            fields[name] = serializers.FloatField(required=False, default=default)
    return fields


class ObservationSerializer(serializers.Serializer):
    """One observation (CONTRACTS section 4). Every field is optional with the seed's default."""

    def get_fields(self):
        return _observation_fields()

    def to_internal_value(self, data):
        try:
            return validate_observation(data)
        except ObservationError as exc:
            raise serializers.ValidationError({exc.field: [exc.reason]}) from None

    def run_validation(self, data=serializers.empty):
        # validate_observation is the whole validation. DRF's default would also build the 40
        # declared fields (for read-only defaults) on every request: ~1 ms of a prediction's time.
        if data is serializers.empty:
            data = {}
        return self.to_internal_value(data)


class PredictBatchSerializer(serializers.Serializer):
    observations = serializers.ListField(child=ObservationSerializer(), min_length=1, max_length=settings.RLV3_MAX_BATCH)

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError({"__root__": ["body must be a JSON object"]})
        items = data.get("observations")
        if not isinstance(items, list):
            raise serializers.ValidationError({"observations": ["must be a list of observation objects"]})
        if not items:
            raise serializers.ValidationError({"observations": ["must not be empty"]})
        if len(items) > settings.RLV3_MAX_BATCH:
            raise serializers.ValidationError(
                {"observations": [f"at most {settings.RLV3_MAX_BATCH} observations per request, got {len(items)}"]}
            )
        try:
            return {"observations": validate_observations(items)}
        except ObservationError as exc:
            raise serializers.ValidationError({f"observations[{exc.index}].{exc.field}": [exc.reason]}) from None


# JSON bodies are typed: a number where text is expected (or "5" where a number is) is an error,
# not something to coerce. DRF's fields coerce because they also parse forms and query strings.
class StrictCharField(serializers.CharField):
    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        # The length the schema states is the text's as sent: DRF would check it after trimming.
        if self.max_length is not None and len(data) > self.max_length:
            self.fail("max_length", max_length=self.max_length)
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    default_error_messages = {"invalid": "must be an integer"}

    def to_internal_value(self, data):
        # JSON Schema counts 3.0 as an integer; "3" and true are not.
        if isinstance(data, float) and data.is_integer():
            data = int(data)
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    default_error_messages = {"invalid": "must be true or false"}

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


# DRF refuses NUL characters (PostgreSQL text cannot hold them): the schema says so. The pattern
# asks for one character or more because drf-spectacular adds the blank string as a oneOf branch.
@extend_schema_field({"type": "string", "maxLength": 2000, "pattern": "^[^\\x00]+$", "default": "",
                      "description": "Why (kept in the audit trail); at most 2,000 characters, no NUL."})
class ReasonField(StrictCharField):
    """The free-text reason of an audited operator action."""

    def __init__(self, **kwargs):
        super().__init__(required=False, allow_blank=True, max_length=2000, default="", **kwargs)


@extend_schema_field({"type": "string", "pattern": DATASET_PATTERN, "maxLength": 200,
                      "description": "A bundled dataset (eurusd_1h, googl_1d) or recorded:SYMBOL."})
class DatasetField(StrictCharField):
    """The dataset name of a training request (checked against the known datasets by the view)."""


class TrainRequestSerializer(serializers.Serializer):
    timesteps = StrictIntegerField(required=False, min_value=1_000, max_value=50_000_000)
    num_episodes = StrictIntegerField(required=False, min_value=1, max_value=100_000, help_text="Seed compatibility: episodes of the configured length.")
    dataset = DatasetField(required=False, max_length=200)
    seed = StrictIntegerField(required=False, min_value=0, max_value=2**31 - 1, default=0)
    seeds = serializers.ListField(child=StrictIntegerField(min_value=0, max_value=2**31 - 1), required=False, min_length=1, max_length=16)


class TrainQuerySerializer(serializers.Serializer):
    """The seed's `POST train?num_episodes=N` (a query string: digits only)."""

    num_episodes = serializers.RegexField(
        r"^(100000|[1-9][0-9]{0,4})$", required=False, help_text="Seed compatibility: episodes to train (1-100000).",
        error_messages={"invalid": "must be a whole number from 1 to 100000"},
    )

    def validate_num_episodes(self, value: str) -> int:
        return int(value)


class TrainAcceptedSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    url = serializers.CharField()
    status = serializers.CharField()
    dataset = serializers.CharField()
    timesteps = serializers.IntegerField()


class ShadowModeRequestSerializer(serializers.Serializer):
    enabled = StrictBooleanField()
    reason = ReasonField()


class ShadowModeChangeSerializer(serializers.ModelSerializer):
    changed_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = ShadowModeChange
        fields = ["changed_by", "changed_at", "old_value", "new_value", "reason", "via"]


class ShadowModeResponseSerializer(serializers.Serializer):
    shadow_mode = serializers.BooleanField()
    previous = serializers.BooleanField()
    change = ShadowModeChangeSerializer()


@extend_schema_field(observation_schema())
class StoredObservationField(serializers.DictField):
    """A decision's observation: every field the policy saw, defaults filled in (ObservationField's
    dict; the symbol is the decision's own field)."""


class DecisionSerializer(serializers.ModelSerializer):
    action = serializers.SerializerMethodField()
    action_code = serializers.IntegerField(source="action")
    observation = StoredObservationField(read_only=True)
    probabilities = serializers.ListField(
        child=serializers.FloatField(), read_only=True, help_text="The policy's probability of each action, by action code.")

    class Meta:
        model = Decision
        fields = [
            "decision_id", "symbol", "action", "action_code", "confidence", "probabilities", "value",
            "model_version", "role", "shadow_mode", "source", "observation", "stream_entry_id",
            "correlation_id", "trace_id", "created_at",
        ]

    def get_action(self, obj) -> str:
        return ACTION_NAMES[obj.action]


class ExperienceSerializer(serializers.ModelSerializer):
    action = serializers.SerializerMethodField()
    action_code = serializers.IntegerField(source="action")
    decision = serializers.SerializerMethodField()

    class Meta:
        model = Experience
        fields = [
            "id", "symbol", "observation", "action", "action_code", "behaviour_probabilities", "model_version",
            "reward", "pnl", "roi", "position_id", "correlation_id", "closed_at", "decision",
        ]

    def get_action(self, obj) -> str:
        return ACTION_NAMES[obj.action]

    def get_decision(self, obj) -> dict:
        d = obj.decision
        return {"decision_id": str(d.decision_id), "confidence": d.confidence, "value": d.value,
                "shadow_mode": d.shadow_mode, "created_at": d.created_at.isoformat()}


class ModelVersionSerializer(serializers.ModelSerializer):
    aliases = serializers.SerializerMethodField()
    training_run = serializers.PrimaryKeyRelatedField(read_only=True)

    class Meta:
        model = ModelVersion
        fields = [
            "version", "aliases", "metrics", "config", "dataset", "dataset_fingerprint", "feature_spec_version",
            "code_version", "sha256", "artifact_path", "gate_decision", "training_run", "created_at", "tags",
        ]

    def get_aliases(self, obj) -> list[str]:
        return sorted(a.name for a in obj.aliases.all())


class PromoteRequestSerializer(serializers.Serializer):
    reason = ReasonField()


class TrainingRunSerializer(serializers.ModelSerializer):
    model_versions = serializers.SerializerMethodField()
    requested_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = TrainingRun
        fields = [
            "id", "kind", "status", "dataset", "seed", "seeds", "parent", "timesteps", "timesteps_done", "progress",
            "recent_mean_reward", "config", "metrics", "error", "requested_by", "created_at", "started_at",
            "heartbeat_at", "finished_at", "model_versions",
        ]

    def get_model_versions(self, obj) -> list[int]:
        return [v.version for v in obj.model_versions.all()]


class StatusSerializer(serializers.Serializer):
    active = serializers.BooleanField(help_text="True while a stream subscriber is alive (fresh heartbeat).")
    shadow_mode = serializers.BooleanField()
    model_loaded = serializers.BooleanField(help_text="False while the untrained fallback is served.")
    experiences_collected = serializers.IntegerField(help_text="Exact up to 10,000; beyond, PostgreSQL's live-row statistics.")
    decisions_total = serializers.IntegerField(help_text="Exact up to 10,000; beyond, PostgreSQL's live-row statistics.")
    model_path = serializers.CharField(allow_blank=True)
    served_version = serializers.CharField()
    champion_version = serializers.IntegerField(allow_null=True)
    challenger_version = serializers.IntegerField(allow_null=True)
    load_error = serializers.CharField(allow_blank=True)
    feature_spec_version = serializers.CharField()
    last_training_run = serializers.DictField(allow_null=True)
    subscriber = serializers.DictField()
