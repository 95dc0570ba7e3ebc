"""The importance-weighted clipped objective for fine-tuning from logged experiences (pure)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from training.rl.actions import N_ACTIONS, Action
from training.rl.networks import ActorCritic
from training.rl.offpolicy import (
    OffPolicyBatch,
    OffPolicyConfig,
    advantages_from_rewards,
    clipped_objective,
    finetune,
    importance_weights,
)

OBS_DIM = 8


def _policy(seed=0) -> ActorCritic:
    return ActorCritic(OBS_DIM, N_ACTIONS, (32, 32), generator=torch.Generator().manual_seed(seed))


def _probs(policy, obs) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(policy(torch.as_tensor(obs))[0], -1).numpy().astype(np.float64)


def _bandit(n=2048, seed=0, behaviour=None):
    """LONG pays when the first feature is positive, SHORT when it is negative; HOLD pays nothing."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, OBS_DIM)).astype(np.float32)
    probs = np.full((n, N_ACTIONS), 1.0 / N_ACTIONS) if behaviour is None else behaviour(obs)
    cdf = np.cumsum(probs, axis=1)
    actions = np.minimum((cdf < rng.random((n, 1)) * cdf[:, -1:]).sum(axis=1), N_ACTIONS - 1)
    direction = np.where(obs[:, 0] > 0, 1.0, -1.0)
    rewards = np.where(actions == Action.LONG, direction, np.where(actions == Action.SHORT, -direction, 0.0))
    rewards += rng.normal(scale=0.1, size=n)
    return OffPolicyBatch(obs, actions, probs, rewards)


def _good_action_prob(policy, obs) -> float:
    probs = _probs(policy, obs)
    good = np.where(obs[:, 0] > 0, int(Action.LONG), int(Action.SHORT))
    return float(probs[np.arange(len(obs)), good].mean())


def test_finetuning_on_logged_outcomes_raises_the_probability_of_the_paying_action():
    start = _policy()
    batch = _bandit(n=1024, behaviour=lambda obs: _probs(start, obs))  # the champion logged its own decisions
    before = _good_action_prob(start, batch.observations)
    result = finetune(start, batch, OffPolicyConfig(learning_rate=3e-3, epochs=8, target_kl=None), seed=1)
    after = _good_action_prob(result.policy, batch.observations)
    assert before == pytest.approx(1 / N_ACTIONS, abs=0.02)  # untrained: about uniform
    assert after > before + 0.1
    assert _good_action_prob(start, batch.observations) == before  # the input policy is untouched
    held_out = _bandit(n=512, seed=7)
    assert _good_action_prob(result.policy, held_out.observations) > before + 0.1  # it generalises


def test_the_kl_limit_stops_early_and_keeps_the_policy_near_the_start():
    start = _policy()
    batch = _bandit()
    result = finetune(start, batch, OffPolicyConfig(learning_rate=1e-2, epochs=50, target_kl=0.01))
    assert result.stopped_early and len(result.history) < 50
    # It stops at the first epoch past 1.5 * target_kl, having been below it before.
    assert all(h["approx_kl"] <= 0.015 for h in result.history[:-1])
    assert result.history[-1]["approx_kl"] > 0.015


def test_samples_outside_the_clip_range_give_no_gradient_in_the_direction_they_push():
    log_probs = torch.log(torch.tensor([0.5, 0.5, 0.2, 0.2])).requires_grad_()
    start = torch.log(torch.tensor([0.3, 0.45, 0.3, 0.21]))  # ratios 1.67, 1.11, 0.67, 0.95
    advantages = torch.tensor([1.0, 1.0, -1.0, -1.0])
    objective = clipped_objective(log_probs, start, advantages, torch.ones(4), clip_range=0.2)
    objective.backward()
    grad = log_probs.grad.numpy()
    assert grad[0] == 0.0 and grad[2] == 0.0  # ratio already beyond 1+eps (A>0) or 1-eps (A<0): clipped
    assert grad[1] > 0 and grad[3] < 0  # inside the range: pushed towards higher/lower probability


def test_importance_weights_correct_for_the_behaviour_policy_and_are_truncated():
    start = np.array([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])
    behaviour = np.array([[0.5, 0.5], [0.3, 0.7], [0.8, 0.2]])
    w = importance_weights(start, behaviour, np.array([0, 0, 0]), max_weight=2.0)
    np.testing.assert_allclose(w, [1.0, 2.0, 0.25])  # 0.9/0.3 = 3 truncated to 2


@settings(max_examples=100, deadline=None)
@given(arrays(np.float64, st.integers(2, 200), elements=st.floats(-1e6, 1e6)))
def test_advantages_are_centred_and_scaled_or_zero_when_rewards_are_equal(rewards):
    adv = advantages_from_rewards(rewards)
    if rewards.std() <= 1e-9 * max(1.0, np.abs(rewards).max()):
        assert (adv == 0).all()
    else:
        assert abs(adv.mean()) < 1e-6 and adv.std() == pytest.approx(1.0, rel=1e-6)
        assert (np.sign(adv) == np.sign(rewards - rewards.mean())).all()


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(actions=np.array([0, 9])), "actions must be in 0..5"),
        (dict(rewards=np.array([0.0, np.nan])), "must be finite"),
        (dict(behaviour_probs=np.full((2, N_ACTIONS), 0.5)), "must be a distribution"),
        (dict(rewards=np.zeros(3)), "batch shapes disagree"),
    ],
)
def test_a_malformed_batch_is_refused_with_a_clear_message(change, message):
    fields = dict(observations=np.zeros((2, OBS_DIM)), actions=np.array([0, 1]),
                  behaviour_probs=np.full((2, N_ACTIONS), 1 / N_ACTIONS), rewards=np.zeros(2))
    with pytest.raises(ValueError, match=message):
        OffPolicyBatch(**{**fields, **change})
