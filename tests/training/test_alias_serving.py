"""A moved champion alias is served by a running process without a restart."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import token_client
from training.rl.actions import N_ACTIONS
from training.rl.checkpoint import save_checkpoint
from training.rl.features import FEATURE_DIM, FEATURE_SPEC_VERSION
from training.rl.networks import ActorCritic
from training.services import model_version_gate, model_version_promote, model_version_register

API = "/api/v1/rl/v3/"
OBSERVATION = {"symbol": "BTCUSDT", "price_change_1m": 0.002, "rsi": 61.0, "volatility": 0.03}


def _register(tmp_path, seed: int, sharpe: float):
    """A real (untrained, seeded) policy saved the way training saves it, with known metrics."""
    policy = ActorCritic(FEATURE_DIM, N_ACTIONS, (64, 64), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        policy.actor_bias.copy_(torch.linspace(-1, 1, N_ACTIONS) * (1 if seed % 2 else -1))  # distinct decisions
    artifact = save_checkpoint(tmp_path / f"s{seed}" / "policy.pt", policy, config={}, metrics={},
                               feature_spec_version=FEATURE_SPEC_VERSION)
    return model_version_register(artifact=artifact, config={}, metrics={"validation": {"sharpe": sharpe, "max_drawdown": 0.01}},
                                  dataset="eurusd_1h")


@pytest.mark.django_db
def test_promotion_and_rollback_are_served_by_the_running_process(tmp_path, settings, reader):
    settings.RLV3_MODEL_POLL_SECONDS = 0.0  # poll the aliases on every request
    api = token_client(reader)
    first = _register(tmp_path, seed=1, sharpe=0.1)
    model_version_gate(version=first)
    answer = api.post(API + "predict", OBSERVATION, format="json").json()
    assert answer["model_version"] == str(first.version)

    second = _register(tmp_path, seed=2, sharpe=2.0)
    model_version_gate(version=second)  # beats the champion: promoted by the gate, no refresh() called
    moved = api.post(API + "predict", OBSERVATION, format="json").json()
    assert moved["model_version"] == str(second.version)
    assert moved["probabilities"] != answer["probabilities"]  # really the other network

    model_version_promote(version=first, reason="rollback")  # e.g. from the admin, another process
    back = api.post(API + "predict", OBSERVATION, format="json").json()
    assert back["model_version"] == str(first.version)
    assert back["probabilities"] == answer["probabilities"]
