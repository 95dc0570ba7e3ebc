"""Model fields of the live side."""

from __future__ import annotations

import json
import operator
from collections.abc import Mapping, Sequence

import numpy as np
from django.core.exceptions import ValidationError
from django.db import models

from training.rl.features import OBSERVATION_DEFAULTS, REGIMES

# Big-endian IEEE 754 single precision: the byte order of PostgreSQL's own binary float4
# (float4send), so SQL can build and read the same bytes.
FLOAT32_BE = np.dtype(">f4")


def _float_list(value) -> list[float]:
    """Numbers (a sequence or an array) as a flat list of Python floats."""
    try:
        return np.asarray(value, dtype=np.float64).ravel().tolist()
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"not a list of numbers: {exc}") from exc


class Float32VectorField(models.BinaryField):
    """A vector of floats stored as big-endian float32 bytes (4 bytes a value; 64 values are 256
    bytes where JSON took about 1.2 kB and PostgreSQL parsed every number). In Python the value is
    a list of floats; lists, tuples, numpy arrays and the stored bytes are accepted on the way in.
    The model's feature vectors are float32 already, so nothing is rounded by storing them."""

    description = "Vector of float32 values"

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("editable", False)
        super().__init__(*args, **kwargs)

    def deconstruct(self):
        name, _path, args, kwargs = super().deconstruct()
        return name, "decisions.fields.Float32VectorField", args, kwargs

    def from_db_value(self, value, expression, connection):
        return None if value is None else np.frombuffer(bytes(value), dtype=FLOAT32_BE).tolist()

    def to_python(self, value):
        if value is None or isinstance(value, list):
            return value
        if isinstance(value, (bytes, bytearray, memoryview)):
            return np.frombuffer(bytes(value), dtype=FLOAT32_BE).tolist()
        return _float_list(value)

    def get_db_prep_value(self, value, connection, prepared=False):
        if value is None:
            return None
        if not isinstance(value, (bytes, bytearray, memoryview)):
            value = np.asarray(value, dtype=FLOAT32_BE).tobytes()
        return connection.Database.Binary(value)

    def value_to_string(self, obj):
        """Serialized (dumpdata) as a JSON list of numbers."""
        value = self.value_from_object(obj)
        return json.dumps(self.to_python(value))


class FloatArrayField(models.Field):
    """A list of floats: ``double precision[]`` on PostgreSQL (binary input is a copy, where jsonb
    parsed every number into a numeric, the larger part of a decision's insert cost), a JSON array
    elsewhere (SQLite). Exact both ways: a Python float is a float8, and JSON keeps its shortest repr."""

    description = "List of float64 values"

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("editable", False)
        super().__init__(*args, **kwargs)

    def db_type(self, connection):
        return "double precision[]" if connection.vendor == "postgresql" else "text"

    def from_db_value(self, value, expression, connection):
        return None if value is None else self.to_python(value)

    def to_python(self, value):
        if value is None or isinstance(value, list):
            return value
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise ValidationError(f"not a JSON list of numbers: {exc}") from exc
        return _float_list(value)

    def get_db_prep_value(self, value, connection, prepared=False):
        if value is None:
            return None
        values = np.asarray(value, dtype=np.float64).ravel().tolist()
        return values if connection.vendor == "postgresql" else json.dumps(values, allow_nan=False)

    def value_to_string(self, obj):
        """Serialized (dumpdata) as JSON."""
        return json.dumps(self.value_from_object(obj))


# The stored order of an observation's values: its numeric fields in the feature module's order
# (OBSERVATION_DEFAULTS), then the regime's index in REGIMES. FEATURE_SPEC_VERSION changes
# whenever the fields do, and each decision row records the version it was stored under.
OBSERVATION_NUMBERS = tuple(name for name in OBSERVATION_DEFAULTS if name != "regime")
OBSERVATION_REGIMES = REGIMES
OBSERVATION_LENGTH = len(OBSERVATION_NUMBERS) + 1
_REGIME_CODE = {name: float(code) for code, name in enumerate(OBSERVATION_REGIMES)}
_numbers_of = operator.itemgetter(*OBSERVATION_NUMBERS)


def observation_encode(obs: Mapping) -> list[float]:
    """The stored values of an observation (a missing field takes its default; ``symbol`` is kept
    in the decision's own column)."""
    regime = obs.get("regime", OBSERVATION_DEFAULTS["regime"])
    if regime not in _REGIME_CODE:
        raise ValidationError(f"regime must be one of {', '.join(OBSERVATION_REGIMES)}, got {regime!r}")
    return [float(obs.get(name, OBSERVATION_DEFAULTS[name])) for name in OBSERVATION_NUMBERS] + [_REGIME_CODE[regime]]


def observations_encode(observations: Sequence[Mapping]) -> np.ndarray:
    """The stored values of validated observations (every field present), as an (N, 37) float64
    matrix, in one pass."""
    out = np.empty((len(observations), OBSERVATION_LENGTH), dtype=np.float64)
    out[:, :-1] = [_numbers_of(obs) for obs in observations]
    out[:, -1] = [_REGIME_CODE[obs["regime"]] for obs in observations]
    return out


def observation_decode(values: Sequence[float]) -> dict:
    if len(values) != OBSERVATION_LENGTH:
        raise ValueError(f"expected {OBSERVATION_LENGTH} stored observation values, got {len(values)}")
    obs = dict(zip(OBSERVATION_NUMBERS, values))
    obs["regime"] = OBSERVATION_REGIMES[int(values[-1])]
    return obs


class ObservationField(FloatArrayField):
    """The observation fields a decision was taken on, stored as their values in a fixed order
    (``OBSERVATION_NUMBERS``, then the regime's index): 37 float8 in a ``double precision[]``.
    In Python the value is the dict of fields (without ``symbol``, which is the row's own column)."""

    description = "Observation fields as float64 values"

    def to_python(self, value):
        if value is None or isinstance(value, dict):
            return value
        return observation_decode(super().to_python(value))

    def get_db_prep_value(self, value, connection, prepared=False):
        if isinstance(value, Mapping):
            value = observation_encode(value)
        return super().get_db_prep_value(value, connection, prepared)

    def value_to_string(self, obj):
        return json.dumps(self.to_python(self.value_from_object(obj)))
