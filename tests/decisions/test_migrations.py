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
