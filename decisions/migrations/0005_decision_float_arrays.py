"""Decision.observation and Decision.probabilities: from jsonb to float8 arrays; decision ids are
UUID version 7 from now on (earlier ids stay as they are).

jsonb parsed every number of a row into a numeric: two thirds of PostgreSQL's work per inserted
decision. The observation is stored as its 36 numeric fields in the order below (the feature
module's order when this migration was written), then the regime's index in REGIMES; the symbol
is the row's own column. On PostgreSQL the columns are converted in place by SQL; elsewhere
(SQLite) row by row, as JSON text. The reverse gives the JSON objects back, with the symbol when there is one.
"""

import json

from django.db import migrations, models

import decisions.fields
import decisions.ids

# (field, default): a field missing from a stored observation takes its default.
NUMBERS = (
    ("price_change_1m", 0.0),
    ("price_change_5m", 0.0),
    ("price_change_15m", 0.0),
    ("volatility", 0.02),
    ("rsi", 50.0),
    ("macd", 0.0),
    ("position_size", 0.0),
    ("position_side", 0.0),
    ("balance", 10000.0),
    ("equity", 10000.0),
    ("trend_strength", 0.5),
    ("volume_ratio", 1.0),
    ("spread", 0.001),
    ("time_of_day", 0.5),
    ("price_change_30m", 0.0),
    ("price_change_1h", 0.0),
    ("price_change_4h", 0.0),
    ("volatility_long", 0.02),
    ("macd_signal", 0.0),
    ("bollinger_position", 0.0),
    ("bollinger_width", 0.02),
    ("atr", 0.02),
    ("trend_slope", 0.0),
    ("trend_slope_long", 0.0),
    ("ema_distance", 0.0),
    ("rsi_fast", 50.0),
    ("stochastic_k", 50.0),
    ("close_location", 0.5),
    ("bar_range", 0.02),
    ("high_distance", -0.02),
    ("low_distance", 0.02),
    ("time_of_week", 0.5),
    ("unrealized_pnl", 0.0),
    ("time_in_position", 0.0),
    ("drawdown", 0.0),
    ("cooldown_remaining", 0.0),
)
REGIMES = ("TREND", "RANGE", "BREAKOUT", "MEAN_REVERSION")

_VALUES = ", ".join(f"coalesce((o->>'{name}')::float8, {default!r})" for name, default in NUMBERS)
_REGIME_CODE = " ".join(f"WHEN '{name}' THEN {code}" for code, name in enumerate(REGIMES))
_TO_ARRAYS = f"""
CREATE FUNCTION pg_temp.rlv3_observation_values(o jsonb) RETURNS float8[] LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY[{_VALUES}, CASE o->>'regime' {_REGIME_CODE} ELSE 0 END]::float8[]
$$;
CREATE FUNCTION pg_temp.rlv3_float_values(v jsonb) RETURNS float8[] LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(array_agg(x::float8 ORDER BY i), '{{}}'::float8[])
    FROM jsonb_array_elements_text(v) WITH ORDINALITY AS t(x, i)
$$;
ALTER TABLE decisions_decision
    ALTER COLUMN observation TYPE double precision[] USING pg_temp.rlv3_observation_values(observation),
    ALTER COLUMN probabilities TYPE double precision[] USING pg_temp.rlv3_float_values(probabilities);
DROP FUNCTION pg_temp.rlv3_observation_values(jsonb);
DROP FUNCTION pg_temp.rlv3_float_values(jsonb);
"""

_PAIRS = ", ".join(f"'{name}', v[{i}]" for i, (name, _) in enumerate(NUMBERS, start=1))
_REGIME_NAMES = ", ".join(f"'{name}'" for name in REGIMES)
_TO_JSON = f"""
CREATE FUNCTION pg_temp.rlv3_observation_json(v float8[], symbol text) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object({_PAIRS}, 'regime', (ARRAY[{_REGIME_NAMES}])[v[{len(NUMBERS) + 1}]::int + 1])
        || CASE WHEN symbol <> '' THEN jsonb_build_object('symbol', symbol) ELSE '{{}}'::jsonb END
$$;
ALTER TABLE decisions_decision
    ALTER COLUMN observation TYPE jsonb USING pg_temp.rlv3_observation_json(observation, symbol),
    ALTER COLUMN probabilities TYPE jsonb USING to_jsonb(probabilities);
DROP FUNCTION pg_temp.rlv3_observation_json(float8[], text);
"""


def _observation_values(text: str, _symbol: str) -> str:
    obs = json.loads(text)
    values = [float(obs.get(name, default)) for name, default in NUMBERS]
    values.append(float(REGIMES.index(obs.get("regime", REGIMES[0]))))
    return json.dumps(values)


def _observation_json(text: str, symbol: str) -> str:
    values = json.loads(text)
    obs = {name: value for (name, _), value in zip(NUMBERS, values)}
    obs["regime"] = REGIMES[int(values[-1])]
    if symbol:
        obs["symbol"] = symbol
    return json.dumps(obs)


def _convert_observations(schema_editor, convert) -> None:
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT id, observation, symbol FROM decisions_decision")
        for pk, obs, symbol in cursor.fetchall():
            cursor.execute("UPDATE decisions_decision SET observation = %s WHERE id = %s", [convert(obs, symbol), pk])


def _alter(apps, schema_editor, name, old, new) -> None:
    model = apps.get_model("decisions", "Decision")
    old.set_attributes_from_name(name)
    new.set_attributes_from_name(name)
    old.model = new.model = model
    schema_editor.alter_field(model, old, new)


# Elsewhere (SQLite) both columns hold JSON text before and after: the probabilities' JSON array
# stays as it is, and each observation object becomes the JSON array of its values.
def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(_TO_ARRAYS)
        return
    _convert_observations(schema_editor, _observation_values)
    _alter(apps, schema_editor, "observation", models.JSONField(), decisions.fields.ObservationField())
    _alter(apps, schema_editor, "probabilities", models.JSONField(), decisions.fields.FloatArrayField())


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(_TO_JSON)
        return
    _convert_observations(schema_editor, _observation_json)
    _alter(apps, schema_editor, "observation", decisions.fields.ObservationField(), models.JSONField())
    _alter(apps, schema_editor, "probabilities", decisions.fields.FloatArrayField(), models.JSONField())


class Migration(migrations.Migration):
    dependencies = [("decisions", "0004_decision_features_float32")]

    operations = [
        migrations.AlterField(
            model_name="decision",
            name="decision_id",
            field=models.UUIDField(
                default=decisions.ids.uuid7, editable=False, help_text="UUID version 7 (time-ordered).", unique=True
            ),
        ),
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(forward, backward)],
            state_operations=[
                migrations.AlterField(
                    model_name="decision",
                    name="observation",
                    field=decisions.fields.ObservationField(
                        editable=False, help_text="The validated observation fields the policy saw (without the symbol)."
                    ),
                ),
                migrations.AlterField(
                    model_name="decision",
                    name="probabilities",
                    field=decisions.fields.FloatArrayField(
                        editable=False, help_text="Behaviour policy's probability of each of the 6 actions."
                    ),
                ),
            ],
        ),
    ]
