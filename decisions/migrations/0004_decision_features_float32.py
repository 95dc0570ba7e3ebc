"""Decision.features: from a JSON list of numbers to big-endian float32 bytes (Float32VectorField).

On PostgreSQL the column is converted in place by SQL (float4send gives the same bytes as
numpy's '>f4'); elsewhere (SQLite) row by row in Python. The reverse gives the JSON list back.
"""

import json

import numpy as np
from django.db import migrations, models

import decisions.fields

_TO_BYTES = """
CREATE FUNCTION pg_temp.rlv3_float32_bytes(v jsonb) RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(string_agg(float4send(x::real), ''::bytea ORDER BY i), ''::bytea)
    FROM jsonb_array_elements_text(v) WITH ORDINALITY AS t(x, i)
$$;
ALTER TABLE decisions_decision ALTER COLUMN features TYPE bytea USING pg_temp.rlv3_float32_bytes(features);
DROP FUNCTION pg_temp.rlv3_float32_bytes(jsonb);
"""

# IEEE 754 single precision decoded by arithmetic (exact in float8); features are always finite.
_TO_JSON = """
CREATE FUNCTION pg_temp.rlv3_float32_json(b bytea) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(jsonb_agg(
        CASE WHEN e = 0 THEN s * m * 2.0::float8 ^ -149
             ELSE s * (8388608 + m) * 2.0::float8 ^ (e - 150) END ORDER BY i), '[]'::jsonb)
    FROM (
        SELECT i, CASE WHEN w >> 31 = 0 THEN 1.0::float8 ELSE -1.0::float8 END AS s,
               (w >> 23) & 255 AS e, w & 8388607 AS m
        FROM (
            SELECT i, (get_byte(b, i * 4)::bigint << 24) | (get_byte(b, i * 4 + 1) << 16)
                      | (get_byte(b, i * 4 + 2) << 8) | get_byte(b, i * 4 + 3) AS w
            FROM generate_series(0, length(b) / 4 - 1) AS i
        ) words
    ) parts
$$;
ALTER TABLE decisions_decision ALTER COLUMN features TYPE jsonb USING pg_temp.rlv3_float32_json(features);
DROP FUNCTION pg_temp.rlv3_float32_json(bytea);
"""


def _convert_rows(schema_editor, convert) -> None:
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT id, features FROM decisions_decision")
        rows = cursor.fetchall()
        for pk, value in rows:
            cursor.execute("UPDATE decisions_decision SET features = %s WHERE id = %s", [convert(value), pk])


def _alter(apps, schema_editor, old, new) -> None:
    model = apps.get_model("decisions", "Decision")
    old.set_attributes_from_name("features")
    new.set_attributes_from_name("features")
    old.model = new.model = model
    schema_editor.alter_field(model, old, new)


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(_TO_BYTES)
        return
    _alter(apps, schema_editor, models.JSONField(), models.BinaryField(null=True))
    _convert_rows(schema_editor, lambda v: np.asarray(json.loads(v), dtype=">f4").tobytes())
    _alter(apps, schema_editor, models.BinaryField(null=True), decisions.fields.Float32VectorField())


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(_TO_JSON)
        return
    _alter(apps, schema_editor, decisions.fields.Float32VectorField(), models.TextField(null=True))
    _convert_rows(schema_editor, lambda v: json.dumps(np.frombuffer(bytes(v), dtype=">f4").tolist()))
    _alter(apps, schema_editor, models.TextField(null=True), models.JSONField())


class Migration(migrations.Migration):
    dependencies = [("decisions", "0003_experience_lookup_indexes")]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(forward, backward)],
            state_operations=[
                migrations.AlterField(
                    model_name="decision",
                    name="features",
                    field=decisions.fields.Float32VectorField(help_text="The 64-dim feature vector (float32)."),
                ),
            ],
        ),
    ]
