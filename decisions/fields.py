"""Model fields of the live side."""

from __future__ import annotations

import json

import numpy as np
from django.core.exceptions import ValidationError
from django.db import models

# Big-endian IEEE 754 single precision: the byte order of PostgreSQL's own binary float4
# (float4send), so SQL can build and read the same bytes.
FLOAT32_BE = np.dtype(">f4")


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
        try:
            return np.asarray(value, dtype=np.float64).ravel().tolist()
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"not a vector of numbers: {exc}") from exc

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
