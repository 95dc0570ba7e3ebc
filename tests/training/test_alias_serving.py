"""A moved champion alias is served by a running process without a restart."""

from __future__ import annotations

import pytest

from tests.conftest import token_client
from tests.training.factories import policy_version
from training.services import model_version_gate, model_version_promote

API = "/api/v1/rl/v3/"
OBSERVATION = {"symbol": "BTCUSDT", "price_change_1m": 0.002, "rsi": 61.0, "volatility": 0.03}


@pytest.mark.django_db
def test_promotion_and_rollback_are_served_by_the_running_process(tmp_path, settings, reader):
    settings.RLV3_MODEL_POLL_SECONDS = 0.0  # poll the aliases on every request
    api = token_client(reader)
    first = policy_version(tmp_path, seed=1, sharpe=0.1)
    model_version_gate(version=first)
    answer = api.post(API + "predict", OBSERVATION, format="json").json()
    assert answer["model_version"] == str(first.version)

    second = policy_version(tmp_path, seed=2, sharpe=2.0)
    model_version_gate(version=second)  # beats the champion: promoted by the gate, no refresh() called
    moved = api.post(API + "predict", OBSERVATION, format="json").json()
    assert moved["model_version"] == str(second.version)
    assert moved["probabilities"] != answer["probabilities"]  # really the other network

    model_version_promote(version=first, reason="rollback")  # e.g. from the admin, another process
    back = api.post(API + "predict", OBSERVATION, format="json").json()
    assert back["model_version"] == str(first.version)
    assert back["probabilities"] == answer["probabilities"]
