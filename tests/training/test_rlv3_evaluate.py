"""manage.py rlv3_evaluate: a model file or a registered version, baselines, JSON line, PNG."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import CommandError, call_command

from training.rl.evaluate import evaluate_with_baselines
from training.rl.features import FEATURE_SPEC_VERSION

KEYS = {"dataset", "split", "bars", "total_return", "sharpe", "sortino", "max_drawdown", "n_trades", "fees_paid",
        "model_version", "baselines"}


@pytest.fixture
def checkpoint(tmp_path):
    """An (untrained, seeded) trading policy saved the way training saves one."""
    import torch

    from training.rl.actions import N_ACTIONS
    from training.rl.checkpoint import save_checkpoint
    from training.rl.networks import ActorCritic

    policy = ActorCritic(64, N_ACTIONS, generator=torch.Generator().manual_seed(3))
    return save_checkpoint(tmp_path / "policy.pt", policy, config={}, metrics={},
                           feature_spec_version=FEATURE_SPEC_VERSION, extra={"dataset": "googl_1d"})


def _run(*args) -> tuple[str, dict]:
    out = io.StringIO()
    call_command("rlv3_evaluate", *args, stdout=out)
    text = out.getvalue()
    return text, json.loads(text.strip().splitlines()[-1])


def test_evaluates_a_runtime_file_on_the_test_split_with_baselines(checkpoint, tmp_path):
    from training.rl.data import load_dataset
    from training.rl.inference import PolicyRuntime

    png = tmp_path / "curves.png"
    text, result = _run("--model", str(checkpoint.runtime_path), "--json", "--plot", str(png))
    assert set(result) == KEYS
    assert (result["dataset"], result["split"]) == ("googl_1d", "test")  # the model's dataset, held-out split
    runtime = PolicyRuntime.load(checkpoint.runtime_path)
    expected = evaluate_with_baselines(lambda v: runtime.predict_vector(v).action_code, load_dataset("googl_1d"), "test", 0)
    assert result == json.loads(json.dumps({**expected, "model_version": str(checkpoint.runtime_path)}))
    assert "buy and hold" in text and png.read_bytes()[:4] == b"\x89PNG"


def test_checkpoint_path_a_csv_dataset_and_split_all(checkpoint):
    _, result = _run("--model", str(checkpoint.path), "--dataset", "tests/rl/fixtures/dayfirst.csv", "--json")
    assert result["split"] == "all" and result["bars"] == 300 - 240 - 1
    assert result["baselines"]["buy_and_hold"]["n_trades"] == 1


def test_registered_versions_and_aliases_resolve(checkpoint, db):
    from training.services import model_version_register

    version = model_version_register(artifact=checkpoint, config={}, metrics={}, dataset="googl_1d",
                                     feature_spec_version=FEATURE_SPEC_VERSION)
    _, result = _run("--model", str(version.version), "--split", "all", "--json")
    assert result["model_version"] == str(version.version) and result["split"] == "all"


def test_clear_errors(checkpoint, tmp_path, db):
    with pytest.raises(CommandError, match="no model is champion yet"):
        _run()
    with pytest.raises(CommandError, match="no such model file"):
        _run("--model", str(tmp_path / "missing.npz"), "--dataset", "googl_1d")
    with pytest.raises(CommandError, match="no such file, and not a bundled dataset"):
        _run("--model", str(checkpoint.runtime_path), "--dataset", "nasdaq_1m")
