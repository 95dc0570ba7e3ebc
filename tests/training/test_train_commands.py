"""manage.py rlv3_train and rlv3_sandbox: JSON last line, artifacts, registry, clear errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from training.rl.checkpoint import load_checkpoint
from training.rl.inference import PolicyRuntime

EVAL_KEYS = {"dataset", "split", "bars", "total_return", "sharpe", "sortino", "max_drawdown", "n_trades",
             "fees_paid", "model_version", "baselines"}


def _run(name: str, *args) -> tuple[str, dict]:
    out = io.StringIO()
    call_command(name, *args, stdout=out)
    text = out.getvalue()
    return text, json.loads(text.strip().splitlines()[-1])


def test_gym_training_prints_the_contract_keys_and_saves_a_loadable_checkpoint():
    text, result = _run("rlv3_train", "--gym-env", "CartPole-v1", "--timesteps", "2048", "--seed", "3",
                        "--eval-episodes", "3", "--no-progress", "--json")
    assert {"eval_mean_return", "eval_episodes", "timesteps", "env_steps_per_s"} <= set(result)
    assert result["eval_episodes"] == 3 and result["timesteps"] >= 2048 and result["eval_mean_return"] > 0
    path = Path(result["checkpoint"])
    assert path.parent == Path(settings.RLV3_MODEL_DIR) / "gym"
    loaded = load_checkpoint(path, result["sha256"])
    assert loaded.feature_spec_version is None and loaded.metrics["eval_mean_return"] == result["eval_mean_return"]
    assert loaded.policy.obs_dim == 4 and "CartPole-v1: mean return" in text


def test_gym_env_with_unsupported_spaces_is_a_clear_error():
    with pytest.raises(CommandError, match="action space must be Discrete"):
        call_command("rlv3_train", "--gym-env", "Pendulum-v1", "--timesteps", "64", "--no-progress")
    with pytest.raises(CommandError, match="cannot make gymnasium environment"):
        call_command("rlv3_train", "--gym-env", "NoSuchEnv-v0", "--timesteps", "64", "--no-progress")


def test_unknown_dataset_and_bad_numbers_are_clear_errors():
    with pytest.raises(CommandError, match="unknown dataset 'nasdaq'"):
        call_command("rlv3_train", "--dataset", "nasdaq", "--no-register")
    with pytest.raises(CommandError, match="--timesteps must be >= 1"):
        call_command("rlv3_train", "--gym-env", "CartPole-v1", "--timesteps", "0")


@pytest.mark.django_db
def test_dataset_training_without_registering_evaluates_on_validation_only():
    from training.models import ModelVersion

    _, result = _run("rlv3_train", "--dataset", "googl_1d", "--timesteps", "2048", "--no-register", "--no-progress", "--json")
    assert result["registered"] is False and result["model_version"] is None
    assert result["validation"]["split"] == "validation" and EVAL_KEYS <= set(result["validation"])
    runtime = PolicyRuntime.load(Path(result["checkpoint"]).with_suffix(".npz"))
    assert runtime.feature_spec_version is not None
    assert Path(result["checkpoint"]).parent == Path(settings.RLV3_MODEL_DIR) / "unregistered"
    assert ModelVersion.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_dataset_training_registers_a_model_version():
    from training.models import ModelVersion

    _, result = _run("rlv3_train", "--dataset", "googl_1d", "--timesteps", "2048", "--seed", "1", "--no-progress", "--json")
    version = ModelVersion.objects.get(version=result["model_version"])
    assert result["registered"] is True and version.sha256 == result["sha256"]
    assert version.metrics["validation"]["split"] == "validation"
    assert PolicyRuntime.load(version.runtime_path, version.runtime_sha256).sha256 == version.runtime_sha256
    assert result["env_steps_per_s"] > 0 and result["timesteps"] >= 2048


def test_sandbox_shows_the_prediction_change_and_reloads_identically(tmp_path):
    text, result = _run("rlv3_sandbox", "--dataset", "googl_1d", "--timesteps", "2048", "--no-progress", "--json",
                        "--output", str(tmp_path / "sb" / "sandbox.pt"))
    for stage in ("[init]", "[untrained]", "[train]", "[trained]", "[save]", "[load]"):
        assert stage in text
    assert result["loaded"] == result["after"] and result["changed"] is True
    assert result["before"]["probabilities"] != result["after"]["probabilities"]
    assert abs(sum(result["after"]["probabilities"]) - 1) < 1e-9
    assert result["after"]["confidence"] == result["after"]["probabilities"][result["after"]["action_code"]]
    load_checkpoint(result["checkpoint"], result["sha256"])
    assert PolicyRuntime.load(result["runtime_path"], result["runtime_sha256"]).sha256 == result["runtime_sha256"]


def test_ppo_overrides_reach_the_trained_config_and_bad_ones_are_refused():
    _, result = _run("rlv3_train", "--gym-env", "CartPole-v1", "--timesteps", "512", "--eval-episodes", "1",
                     "--ppo", "ent_coef=0.05", "--ppo", "hidden_sizes=[32, 32]", "--n-envs", "2", "--no-progress", "--json")
    config = load_checkpoint(result["checkpoint"]).ppo_config()
    assert (config.ent_coef, config.hidden_sizes, config.n_envs) == (0.05, (32, 32), 2)
    with pytest.raises(CommandError, match="unknown PPOConfig keys: entropy"):
        call_command("rlv3_train", "--gym-env", "CartPole-v1", "--ppo", "entropy=0.1")
    with pytest.raises(CommandError, match="KEY=VALUE"):
        call_command("rlv3_train", "--gym-env", "CartPole-v1", "--ppo", "ent_coef")


def test_env_overrides_are_validated_and_only_for_datasets():
    with pytest.raises(CommandError, match="--env applies to trading datasets"):
        call_command("rlv3_train", "--gym-env", "CartPole-v1", "--env", "drawdown_penalty=0")
    with pytest.raises(CommandError, match="invalid EnvConfig value for fee_rate"):
        call_command("rlv3_train", "--dataset", "googl_1d", "--no-register", "--env", "fee_rate=5")
    with pytest.raises(CommandError, match="--env: .*unexpected keyword argument 'fees'"):
        call_command("rlv3_train", "--dataset", "googl_1d", "--no-register", "--env", "fees=0")
