"""Model fields of the live side."""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
from django.core.exceptions import ValidationError
from django.db import models

from training.rl.features import ObservationError, observation_from_values, observation_values

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


def float_array_literal(values: list[float]) -> str:
    """PostgreSQL's text form of a float8[] (``{0.1,2.5}``): repr gives each float's shortest exact
    digits. A parameter as this text costs a few µs; as a Python list, psycopg's array dumper takes
    about 2 µs per element."""
    return "{" + ",".join(map(repr, values)) + "}"


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
        return float_array_literal(values) if connection.vendor == "postgresql" else json.dumps(values, allow_nan=False)

    def value_to_string(self, obj):
        """Serialized (dumpdata) as JSON."""
        return json.dumps(self.value_from_object(obj))


class ObservationField(FloatArrayField):
    """The observation fields a decision was taken on, stored as their values in a fixed order
    (``training.rl.features.OBSERVATION_NUMBERS``, then the regime's index in REGIMES): 37 float8 in
    a ``double precision[]``. FEATURE_SPEC_VERSION changes whenever the fields do, and each decision
    row records the version it was stored under. In Python the value is the dict of fields (without
    ``symbol``, which is the row's own column)."""

    description = "Observation fields as float64 values"

    def to_python(self, value):
        if value is None or isinstance(value, dict):
            return value
        try:
            return observation_from_values(super().to_python(value))
        except ValueError as exc:
            raise ValidationError(str(exc)) from exc

    def get_db_prep_value(self, value, connection, prepared=False):
        if isinstance(value, Mapping):
            try:
                value = observation_values(value)
            except ObservationError as exc:
                raise ValidationError(str(exc)) from exc
        return super().get_db_prep_value(value, connection, prepared)

    def value_to_string(self, obj):
        return json.dumps(self.to_python(self.value_from_object(obj)))
