"""Data migrations, run both ways on the real database with rows in the table."""

from __future__ import annotations

import json

import numpy as np
import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = ("decisions", "0003_experience_lookup_indexes")
FEATURES = ("decisions", "0004_decision_features_float32")
# Values float32 keeps, rounds (0.1, 123456.789), takes as subnormal (1e-40), and the extremes.
VALUES = [0.5, -1.25, 0.1, 123456.789, 1e-40, -3.4028234663852886e38, 0.0]


def _migrate(target) -> MigrationExecutor:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate([target])
    return executor


@pytest.mark.django_db(transaction=True)
def test_features_become_float32_bytes_and_come_back_as_the_same_numbers():
    expected = np.asarray(VALUES, dtype=np.float32).tolist()
    try:
        executor = _migrate(BEFORE)
        old = executor.loader.project_state([BEFORE]).apps.get_model("decisions", "Decision")
        old.objects.create(
            symbol="X", observation={"rsi": 5}, features=VALUES, action=1, probabilities=[1, 0, 0, 0, 0, 0],
            confidence=1.0, value=0.0, model_version="1", shadow_mode=True, source="api",
        )
        old.objects.create(
            symbol="Y", observation={}, features=[], action=0, probabilities=[1, 0, 0, 0, 0, 0],
            confidence=1.0, value=0.0, model_version="1", shadow_mode=True, source="api",
        )

        _migrate(FEATURES)
        from decisions.models import Decision

        assert dict(Decision.objects.values_list("symbol", "features")) == {"X": expected, "Y": []}
        with connection.cursor() as cursor:
            cursor.execute("SELECT features FROM decisions_decision WHERE symbol = 'X'")
            assert bytes(cursor.fetchone()[0]) == np.asarray(VALUES, dtype=">f4").tobytes()

        _migrate(BEFORE)
        with connection.cursor() as cursor:
            cursor.execute("SELECT symbol, features FROM decisions_decision ORDER BY symbol")
            back = {symbol: (json.loads(value) if isinstance(value, str) else value) for symbol, value in cursor.fetchall()}
        # PostgreSQL writes a whole number without a fraction (0, -340282346638528860000000000000000000000):
        # the same number, read as a float.
        assert {symbol: [float(x) for x in value] for symbol, value in back.items()} == {"X": expected, "Y": []}
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())


ARRAYS = ("decisions", "0005_decision_float_arrays")


@pytest.mark.django_db(transaction=True)
def test_observations_and_probabilities_become_float8_arrays_and_come_back():
    from training.rl.features import OBSERVATION_DEFAULTS

    full = {**OBSERVATION_DEFAULTS, "rsi": 12.5, "macd": -0.1, "regime": "BREAKOUT", "balance": 1e15, "symbol": "BTCUSDT"}
    probabilities = [0.1, 0.2, 0.3, 0.15, 0.05, 0.2]
    try:
        executor = _migrate(FEATURES)
        old = executor.loader.project_state([FEATURES]).apps.get_model("decisions", "Decision")
        for symbol, observation in [("BTCUSDT", full), ("", {"rsi": 70, "regime": "MEAN_REVERSION"}), ("Z", {})]:
            old.objects.create(
                symbol=symbol, observation=observation, features=[0.5] * 64, action=1, probabilities=probabilities,
                confidence=0.2, value=0.0, model_version="1", shadow_mode=True, source="api",
            )

        _migrate(ARRAYS)
        from decisions.models import Decision

        stored = dict(Decision.objects.values_list("symbol", "observation"))
        assert stored["BTCUSDT"] == {k: v for k, v in full.items() if k != "symbol"}  # the symbol is its own column
        assert stored[""] == {**OBSERVATION_DEFAULTS, "rsi": 70.0, "regime": "MEAN_REVERSION"}  # defaults filled in
        assert stored["Z"] == OBSERVATION_DEFAULTS
        assert list(Decision.objects.values_list("probabilities", flat=True)) == [probabilities] * 3
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT observation[5], observation[37], array_length(observation, 1), probabilities[3]"
                               " FROM decisions_decision WHERE symbol = 'BTCUSDT'")
                assert cursor.fetchone() == (12.5, 2.0, 37, 0.3)  # rsi, BREAKOUT's index, 36 numbers and the regime

        _migrate(FEATURES)
        with connection.cursor() as cursor:
            cursor.execute("SELECT symbol, observation, probabilities FROM decisions_decision")
            back = {s: tuple(json.loads(v) if isinstance(v, str) else v for v in (o, p)) for s, o, p in cursor.fetchall()}
        assert back["BTCUSDT"] == (full, probabilities)  # numbers compare as numbers: 50 == 50.0
        assert back[""] == ({**OBSERVATION_DEFAULTS, "rsi": 70.0, "regime": "MEAN_REVERSION"}, probabilities)
        assert back["Z"] == ({**OBSERVATION_DEFAULTS, "symbol": "Z"}, probabilities)
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())


ASCENDING = ("decisions", "0006_decision_indexes_ascending")
UUID_KEY = ("decisions", "0007_decision_id_primary_key")


def _decision_columns() -> list[str]:
    with connection.cursor() as cursor:
        return [c.name for c in connection.introspection.get_table_description(cursor, "decisions_decision")]


@pytest.mark.django_db(transaction=True)
def test_decision_id_becomes_the_key_and_every_experience_keeps_its_decision_both_ways():
    try:
        executor = _migrate(ASCENDING)
        apps = executor.loader.project_state([ASCENDING]).apps
        old, old_experience = apps.get_model("decisions", "Decision"), apps.get_model("decisions", "Experience")
        made = [
            old.objects.create(
                symbol=f"S{i}", observation=[0.5] * 37, features=b"\0" * 256, action=i % 6, probabilities=[1, 0, 0, 0, 0, 0],
                confidence=1.0, value=0.0, model_version="1", shadow_mode=True, source="api",
            )
            for i in range(5)
        ]
        # Paired out of order, so a pairing by position (rather than by key) would show.
        for i, decision in enumerate(reversed(made[1:])):
            old_experience.objects.create(
                decision=decision, symbol=decision.symbol, observation={}, action=decision.action,
                behaviour_probabilities=[1, 0, 0, 0, 0, 0], model_version="1", reward=0.0, pnl=float(i), roi=0.0,
                stream_entry_id=f"1-{i}",
            )
        pairs = {e.stream_entry_id: (e.decision.decision_id, e.decision.symbol) for e in old_experience.objects.all()}

        _migrate(UUID_KEY)
        from decisions.models import Decision, Experience

        assert "id" not in _decision_columns() and Decision._meta.pk.name == "decision_id"
        assert {e.stream_entry_id: (e.decision_id, e.decision.symbol) for e in Experience.objects.all()} == pairs
        assert not Decision.objects.filter(symbol="S0", experience__isnull=False).exists()  # S0 was never paired
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'decisions_decision' AND indexdef LIKE '%%(decision_id)%%'")
                assert [row[0].split(" ON ")[0] for row in cursor.fetchall()] == [
                    "CREATE UNIQUE INDEX decisions_decision_decision_id_cdf7bc5e_pk"  # one index on the key, not two
                ]

        executor = _migrate(ASCENDING)
        apps = executor.loader.project_state([ASCENDING]).apps
        old, old_experience = apps.get_model("decisions", "Decision"), apps.get_model("decisions", "Experience")
        assert "id" in _decision_columns()
        assert sorted(old.objects.values_list("id", flat=True)) == [1, 2, 3, 4, 5]  # numbered again
        assert {e.stream_entry_id: (e.decision.decision_id, e.decision.symbol) for e in old_experience.objects.all()} == pairs
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
