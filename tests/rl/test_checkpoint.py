"""Checkpoints: atomic save, identical outputs after load, every tampering refused."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import numpy as np
import pytest
import torch

from training.rl.actions import ACTION_ENUM_SPEC
from training.rl.checkpoint import CheckpointError, load_checkpoint, runtime_path_for, save_checkpoint
from training.rl.config import PPOConfig
from training.rl.features import FEATURE_SPEC_VERSION
from training.rl.inference import PolicyRuntime
from training.rl.networks import ActorCritic


def _trading_policy(seed: int = 0) -> ActorCritic:
    net = ActorCritic(64, 6, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for p in net.parameters():  # move off the init so outputs are not near-uniform
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed + 1)) * 0.2)
    return net


@pytest.fixture()
def saved(tmp_path):
    net = _trading_policy()
    art = save_checkpoint(tmp_path / "ck" / "model.pt", net, config=PPOConfig(), metrics={"sharpe": 1.5, "nan": float("nan")},
                          feature_spec_version=FEATURE_SPEC_VERSION, extra={"dataset": "eurusd_1h"})
    return net, art


def test_save_writes_both_files_atomically_with_their_sha256(saved, tmp_path):
    _, art = saved
    assert art.path == tmp_path / "ck" / "model.pt" and art.runtime_path == tmp_path / "ck" / "model.npz"
    assert art.runtime_path == runtime_path_for(art.path)
    assert hashlib.sha256(art.path.read_bytes()).hexdigest() == art.sha256
    assert hashlib.sha256(art.runtime_path.read_bytes()).hexdigest() == art.runtime_sha256
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["model.npz", "model.pt"]  # no temp files left


def test_save_then_load_gives_identical_outputs(saved):
    net, art = saved
    loaded = load_checkpoint(art.path, art.sha256)
    x = torch.randn(256, 64)
    with torch.no_grad():
        for a, b in zip(net(x), loaded.policy(x)):
            assert torch.equal(a, b)
    assert loaded.ppo_config() == PPOConfig()
    assert loaded.metrics == {"sharpe": 1.5, "nan": None}
    assert loaded.feature_spec_version == FEATURE_SPEC_VERSION
    assert loaded.metadata["action_enum"] == ACTION_ENUM_SPEC
    assert loaded.metadata["runtime_sha256"] == art.runtime_sha256
    assert loaded.metadata["extra"] == {"dataset": "eurusd_1h"}


def test_file_holds_only_tensors_and_primitives(saved):
    _, art = saved
    payload = torch.load(art.path, weights_only=True)  # would raise on any pickled object
    assert set(payload["state_dict"]) == {n for n, _ in _trading_policy().named_parameters()}
    with np.load(art.runtime_path, allow_pickle=False) as npz:
        meta = json.loads(str(npz["metadata"][()]))
    assert meta["feature_spec_version"] == FEATURE_SPEC_VERSION and meta["format"] == "rlv3-ppo-runtime"


def test_tampered_checkpoint_is_refused_by_sha256(saved):
    _, art = saved
    data = bytearray(art.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    art.path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_checkpoint(art.path, art.sha256)


def _rewrite(path, **changes):
    payload = torch.load(path, weights_only=True)
    payload.update(changes)
    torch.save(payload, path)


def test_checkpoint_from_another_feature_spec_is_refused_naming_it(saved):
    _, art = saved
    _rewrite(art.path, feature_spec_version="rlv3-features-0")
    with pytest.raises(CheckpointError, match="feature spec version mismatch.*'rlv3-features-0'"):
        load_checkpoint(art.path)


def test_checkpoint_with_another_action_enum_is_refused_naming_it(saved):
    _, art = saved
    _rewrite(art.path, action_enum={**ACTION_ENUM_SPEC, "HOLD": 5, "EMERGENCY_FLATTEN": 0})
    with pytest.raises(CheckpointError, match="action enum mismatch"):
        load_checkpoint(art.path)


def test_expected_feature_spec_can_be_given_explicitly(saved):
    _, art = saved
    with pytest.raises(CheckpointError, match="feature spec version mismatch"):
        load_checkpoint(art.path, feature_spec_version="rlv3-features-999")


def test_pickled_code_in_a_checkpoint_is_never_run(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "rlv3-ppo", "evil": Evil()}, path)
    with pytest.raises(CheckpointError, match="not a loadable checkpoint"):
        load_checkpoint(path)


def test_garbage_and_foreign_files_are_refused(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"some": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an RL v3 PPO checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "missing.pt")


def test_gym_checkpoint_skips_the_feature_spec_check_but_serving_refuses_it(tmp_path):
    net = ActorCritic(4, 2, generator=torch.Generator().manual_seed(0))
    art = save_checkpoint(tmp_path / "cartpole.pt", net, config=PPOConfig(), metrics={}, feature_spec_version=None)
    loaded = load_checkpoint(art.path, feature_spec_version="anything")
    assert loaded.feature_spec_version is None and loaded.metadata["action_enum"] is None
    with pytest.raises(CheckpointError, match="not a trading policy"):
        PolicyRuntime.load(art.runtime_path)
    runtime = PolicyRuntime.load(art.runtime_path, require_trading=False)
    assert runtime.predict_batch(np.zeros((3, 4), np.float32)).probabilities.shape == (3, 2)


def test_overwriting_a_checkpoint_replaces_it_whole(saved, tmp_path):
    _, first = saved
    second = save_checkpoint(first.path, _trading_policy(5), config=PPOConfig(), metrics={},
                             feature_spec_version=FEATURE_SPEC_VERSION)
    assert second.sha256 != first.sha256
    assert load_checkpoint(first.path, second.sha256).metrics == {}
    assert zipfile.is_zipfile(io.BytesIO(first.path.read_bytes()))


def test_a_failed_write_leaves_the_previous_checkpoint_and_no_temp_file(saved, monkeypatch):
    _, first = saved
    before = first.path.read_bytes()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("training.rl.checkpoint.os.replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(first.path, _trading_policy(9), config=PPOConfig(), metrics={},
                        feature_spec_version=FEATURE_SPEC_VERSION)
    assert first.path.read_bytes() == before
    assert sorted(p.name for p in first.path.parent.iterdir()) == ["model.npz", "model.pt"]
