"""The PPO engine: loss terms, optimiser, network structure, determinism, env handling."""

from __future__ import annotations

import copy
import io
import math
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from torch import nn

from training.rl.buffer import RolloutBuffer
from training.rl.callbacks import FunctionCallback, ProgressBarCallback, TensorBoardCallback
from training.rl.config import PPOConfig, config_for_gym
from training.rl.device import DeviceError, resolve_device
from training.rl.gym_vec import EnvSpecError, make_gym_vec_env
from training.rl.networks import ActorCritic, FlatAdam
from training.rl.ppo import (
    TIMING_METRICS,
    UPDATE_METRICS,
    EpisodeTracker,
    Sampler,
    clipped_surrogate_loss,
    collect_rollout,
    train,
)

SMALL = PPOConfig(n_envs=2, n_steps=64, batch_size=32, n_epochs=2)


# --- the clipped surrogate ----------------------------------------------------------------------


def _surrogate_grad(ratio_value: float, advantage: float, clip: float = 0.2) -> float:
    ratio = torch.tensor([ratio_value], requires_grad=True)
    clipped_surrogate_loss(ratio, torch.tensor([advantage]), clip).backward()
    return float(ratio.grad[0])


@pytest.mark.parametrize("ratio,advantage", [(1.5, 1.0), (1.21, 2.0), (0.5, -1.0), (0.79, -3.0)])
def test_clipped_objective_has_zero_gradient_outside_the_clip_range(ratio, advantage):
    assert _surrogate_grad(ratio, advantage) == 0.0


@pytest.mark.parametrize("ratio,advantage", [(1.0, 1.0), (1.1, -2.0), (0.9, 3.0), (0.5, 1.0), (1.5, -1.0)])
def test_clipped_objective_keeps_the_gradient_inside_the_range_or_when_it_would_undo_a_move(ratio, advantage):
    # Inside [0.8, 1.2], or outside it on the side where the unclipped term is the minimum
    # (pessimistic bound), the gradient of -A*r is -A.
    assert _surrogate_grad(ratio, advantage) == pytest.approx(-advantage)


def test_clipped_objective_value_is_the_pessimistic_bound():
    ratio = torch.tensor([1.5, 0.5, 1.0])
    adv = torch.tensor([1.0, 1.0, -2.0])
    # min(r*A, clip(r)*A): 1.2*1, 0.5*1, 1.0*-2 -> mean of negatives
    assert float(clipped_surrogate_loss(ratio, adv, 0.2)) == pytest.approx(-(1.2 + 0.5 - 2.0) / 3)


# --- network and optimiser ----------------------------------------------------------------------


def _reference_towers(net: ActorCritic) -> tuple[nn.Sequential, nn.Sequential]:
    """Two plain nn.Sequential MLPs holding the same weights as the fused network."""

    def tower(index: int, head_w: torch.Tensor, head_b: torch.Tensor) -> nn.Sequential:
        layers: list[nn.Module] = []
        for i in range(net.n_hidden):
            w, b = getattr(net, f"hidden_weight_{i}")[index], getattr(net, f"hidden_bias_{i}")[index, 0]
            lin = nn.Linear(w.shape[0], w.shape[1])
            lin.weight.data, lin.bias.data = w.T.clone(), b.clone()
            layers += [lin, nn.Tanh()]
        head = nn.Linear(head_w.shape[0], head_w.shape[1])
        head.weight.data, head.bias.data = head_w.T.clone(), head_b.clone()
        return nn.Sequential(*layers, head)

    return tower(0, net.actor_weight.detach(), net.actor_bias.detach()), tower(1, net.critic_weight.detach(), net.critic_bias.detach())


def test_fused_network_equals_two_separate_mlps():
    net = ActorCritic(5, 3, (16, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # non-zero biases too
    actor, critic = _reference_towers(net)
    x = torch.randn(10, 5)
    logits, value = net(x)
    torch.testing.assert_close(logits, actor(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(value, critic(x)[:, 0], rtol=1e-5, atol=1e-6)


def test_actor_and_critic_share_no_parameters():
    net = ActorCritic(4, 2, generator=torch.Generator().manual_seed(0))
    logits, value = net(torch.randn(7, 4))
    value.sum().backward()
    assert net.actor_weight.grad is None or not net.actor_weight.grad.any()
    for i in range(net.n_hidden):
        assert not getattr(net, f"hidden_weight_{i}").grad[0].any()  # actor tower untouched
        assert getattr(net, f"hidden_weight_{i}").grad[1].any()


def test_orthogonal_init_uses_sb3_gains():
    net = ActorCritic(64, 6, generator=torch.Generator().manual_seed(1))
    w = net.hidden_weight_1[0].detach()  # (64, 64) square: W^T W = gain^2 I
    torch.testing.assert_close(w.T @ w, 2.0 * torch.eye(64), atol=1e-4, rtol=0)
    assert float(torch.linalg.matrix_norm(net.actor_weight.detach(), ord=2)) == pytest.approx(0.01, rel=1e-4)
    assert float(torch.linalg.vector_norm(net.critic_weight.detach())) == pytest.approx(1.0, rel=1e-5)
    assert not any(getattr(net, f"hidden_bias_{i}").any() for i in range(net.n_hidden))


@pytest.mark.parametrize("fused", [True, False])
def test_flat_adam_equals_torch_adam_with_grad_norm_clipping(fused):
    torch.manual_seed(0)
    ours = ActorCritic(6, 3, (16, 16), generator=torch.Generator().manual_seed(2))
    ref = copy.deepcopy(ours)
    opt = FlatAdam(ours, 1e-3, eps=1e-5)
    opt._fused = fused
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-3, eps=1e-5)
    for _ in range(15):
        x = torch.randn(32, 6) * 4
        for net in (ours, ref):
            logits, value = net(x)
            loss = (logits**2).sum() + (value**3).sum()
            if net is ours:
                opt.zero_grad()
                loss.backward()
                norm = opt.step(0.5)
            else:
                ref_opt.zero_grad()
                loss.backward()
                ref_norm = nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
                ref_opt.step()
        assert float(norm) == pytest.approx(float(ref_norm), rel=1e-5)
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# --- config, device -----------------------------------------------------------------------------


def test_config_defaults_are_the_seed_config_and_round_trip():
    c = PPOConfig()
    assert (c.learning_rate, c.gamma, c.gae_lambda, c.clip_range, c.batch_size, c.n_steps, c.n_epochs,
            c.ent_coef, c.vf_coef, c.max_grad_norm) == (3e-4, 0.99, 0.95, 0.2, 64, 2048, 10, 0.01, 0.5, 0.5)
    assert PPOConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="unknown PPOConfig keys: lr"):
        PPOConfig.from_dict({"lr": 1.0})
    with pytest.raises(ValueError, match="batch_size"):
        PPOConfig(batch_size=0)
    assert config_for_gym("CartPole-v1").n_envs == 8 and config_for_gym("Unknown-v0") == PPOConfig()


def test_linear_schedules_anneal_to_zero():
    c = PPOConfig(lr_schedule="linear", clip_schedule="linear")
    assert c.learning_rate_at(0.0) == 3e-4 and c.learning_rate_at(0.5) == pytest.approx(1.5e-4)
    assert c.learning_rate_at(1.0) == 0.0 and c.clip_range_at(0.75) == pytest.approx(0.05)
    assert PPOConfig().learning_rate_at(0.9) == 3e-4


def test_device_comes_from_the_environment_variable(monkeypatch):
    monkeypatch.setenv("RLV3_DEVICE", "cpu")
    assert resolve_device() == torch.device("cpu")
    monkeypatch.setenv("RLV3_DEVICE", "tpu")
    with pytest.raises(DeviceError, match="auto, cpu or cuda"):
        resolve_device()
    if not torch.cuda.is_available():
        monkeypatch.setenv("RLV3_DEVICE", "cuda")
        with pytest.raises(DeviceError, match="CUDA is not available"):
            resolve_device()
        monkeypatch.setenv("RLV3_DEVICE", "auto")
        assert resolve_device() == torch.device("cpu")


def test_importing_and_training_never_initialises_cuda():
    code = (
        "import torch, training.rl.ppo as p, training.rl.checkpoint, training.rl.networks;"
        "from training.rl.config import PPOConfig;"
        "p.train('CartPole-v1', PPOConfig(n_envs=1, n_steps=32, batch_size=32, n_epochs=1), 32, 0, device='cpu');"
        "assert not torch.cuda.is_initialized()"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --- rollout and training -----------------------------------------------------------------------


def test_truncated_episodes_bootstrap_from_the_final_observation_value():
    envs = SyncVectorEnv([lambda: gym.make("CartPole-v1", max_episode_steps=5) for _ in range(2)],
                         autoreset_mode=AutoresetMode.SAME_STEP)
    policy = ActorCritic(4, 2, generator=torch.Generator().manual_seed(0))
    sampler = Sampler(policy, 0, torch.device("cpu"))
    buf = RolloutBuffer(12, 2, 4)
    obs, _ = envs.reset(seed=3)
    final_obs = {}
    original_step = envs.step

    def recording_step(actions):
        out = original_step(actions)
        for i in np.flatnonzero(out[3] & ~out[2]):
            final_obs[(buf.pos, int(i))] = np.asarray(out[4]["final_obs"][i], dtype=np.float32)
        return out

    envs.step = recording_step
    collect_rollout(envs, sampler, buf, np.asarray(obs, np.float32), EpisodeTracker(2))
    assert final_obs, "the 5-step time limit must truncate episodes within 12 steps"
    for (row, env), fobs in final_obs.items():
        assert buf.truncated[row, env]
        assert buf.final_values[row, env] == pytest.approx(float(sampler.values(fobs[None])[0]), abs=1e-6)
    assert not buf.final_values[~buf.truncated].any()
    envs.close()


def _learning_curve(result) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in TIMING_METRICS} for m in result.curve]


def test_identical_seeds_give_identical_training_curves_and_weights():
    a = train("CartPole-v1", SMALL, 512, seed=7)
    b = train("CartPole-v1", SMALL, 512, seed=7)
    c = train("CartPole-v1", SMALL, 512, seed=8)
    assert _learning_curve(a) == _learning_curve(b)
    for pa, pb in zip(a.policy.parameters(), b.policy.parameters()):
        assert torch.equal(pa, pb)
    assert _learning_curve(a) != _learning_curve(c)


def test_curve_has_every_metric_and_counts_timesteps():
    result = train("CartPole-v1", SMALL, 300, seed=0)
    assert result.timesteps == 384  # ceil(300 / 128) updates of n_steps * n_envs = 128
    assert len(result.curve) == 3
    for m in result.curve:
        assert tuple(m) == UPDATE_METRICS
        assert m["epochs"] == 2 and 0.0 <= m["clip_fraction"] <= 1.0 and m["entropy"] > 0
        assert math.isfinite(m["policy_loss"]) and m["value_loss"] >= 0 and m["approx_kl"] >= 0
    assert [m["timesteps"] for m in result.curve] == [128, 256, 384]
    assert result.curve[-1]["progress"] == 1.0 and result.sps > 0


def test_linear_learning_rate_reaches_zero_on_the_last_update():
    result = train("CartPole-v1", SMALL.replace(lr_schedule="linear"), 256, seed=0)
    assert [m["learning_rate"] for m in result.curve] == pytest.approx([1.5e-4, 0.0])


def test_kl_early_stop_cuts_the_epochs():
    result = train("CartPole-v1", SMALL.replace(n_epochs=10, target_kl=1e-9, learning_rate=1e-2), 256, seed=0)
    assert all(m["epochs"] < 10 for m in result.curve)


def test_a_callback_returning_false_stops_training():
    seen = []
    result = train("CartPole-v1", SMALL, 10_000, seed=0, callbacks=[FunctionCallback(lambda m: seen.append(m) or False)])
    assert len(seen) == 1 and len(result.curve) == 1 and result.stopped_early


def test_progress_bar_and_tensorboard_callbacks(tmp_path):
    out = io.StringIO()
    train("CartPole-v1", SMALL, 256, seed=0,
          callbacks=[ProgressBarCallback(file=out), TensorBoardCallback(str(tmp_path / "tb"))])
    assert "256/256" in out.getvalue()
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_unsupported_envs_are_refused_with_a_clear_message():
    with pytest.raises(EnvSpecError, match="action space must be Discrete"):
        make_gym_vec_env("Pendulum-v1", 1)
    with pytest.raises(EnvSpecError, match="cannot make gymnasium environment"):
        make_gym_vec_env("NoSuchEnv-v9", 1)
    next_step = SyncVectorEnv([lambda: gym.make("CartPole-v1")], autoreset_mode=AutoresetMode.NEXT_STEP)
    with pytest.raises(EnvSpecError, match="SAME_STEP"):
        train(next_step, SMALL, 64, seed=0)
    next_step.close()


def test_training_continues_an_existing_policy_and_checks_its_shape():
    first = train("CartPole-v1", SMALL, 128, seed=0)
    before = [p.detach().clone() for p in first.policy.parameters()]
    again = train("CartPole-v1", SMALL, 128, seed=1, policy=first.policy)
    assert again.policy is first.policy
    assert any(not torch.equal(a, b) for a, b in zip(before, first.policy.parameters()))
    with pytest.raises(ValueError, match="obs_dim=4"):
        train("Acrobot-v1", SMALL, 128, seed=0, policy=first.policy)
