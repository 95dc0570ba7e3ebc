"""GAE and the rollout buffer: hand-computed values, truncation vs termination, properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from training.rl.buffer import RolloutBuffer, compute_gae

GAMMA, LAM = 0.9, 0.8


def _example():
    # Two envs, four steps. Env 0 terminates at t=1; env 1 is truncated at t=2 (time limit)
    # with V(final observation) = 5.0. After the last row: V = 3.0 (env 0), 1.0 (env 1).
    rewards = np.array([[1, 1], [2, 1], [3, 1], [4, 1]], dtype=np.float32)
    values = np.array([[0.5, 0.2], [1.0, 0.4], [1.5, 0.6], [2.0, 0.8]], dtype=np.float32)
    terminated = np.zeros((4, 2), dtype=bool)
    truncated = np.zeros((4, 2), dtype=bool)
    terminated[1, 0] = True
    truncated[2, 1] = True
    final_values = np.zeros((4, 2), dtype=np.float32)
    final_values[2, 1] = 5.0
    last_values = np.array([3.0, 1.0], dtype=np.float32)
    return rewards, values, terminated, truncated, final_values, last_values


def test_gae_matches_hand_computed_example_with_termination_and_truncation():
    adv, ret = compute_gae(*_example(), GAMMA, LAM)
    # Worked by hand, gamma=0.9, lambda=0.8 (gamma*lambda = 0.72):
    # env 0: t3 delta = 4 + .9*3 - 2 = 4.7; t2 delta = 3 + .9*2 - 1.5 = 3.3 -> 3.3 + .72*4.7;
    #        t1 terminated: delta = 2 + 0 - 1 = 1.0, trace cut; t0 delta = 1 + .9*1 - .5 = 1.4 -> 1.4 + .72*1.0
    # env 1: t3 delta = 1 + .9*1 - .8 = 1.1; t2 truncated: bootstrap from V(final)=5 -> 1 + 4.5 - .6 = 4.9,
    #        trace cut; t1 delta = 1 + .54 - .4 = 1.14 -> 1.14 + .72*4.9; t0 delta = 1.16 -> 1.16 + .72*A1
    a1_env1 = 1.14 + 0.72 * 4.9
    expected = np.array([
        [1.4 + 0.72 * 1.0, 1.16 + 0.72 * a1_env1],
        [1.0, a1_env1],
        [3.3 + 0.72 * 4.7, 4.9],
        [4.7, 1.1],
    ])
    np.testing.assert_allclose(adv, expected, rtol=1e-6)
    np.testing.assert_allclose(ret, expected + _example()[1], rtol=1e-6)


def test_terminated_never_bootstraps_even_if_also_truncated():
    rewards, values, terminated, truncated, final_values, last_values = _example()
    truncated[1, 0] = True  # terminated on the very step the time limit hit
    final_values[1, 0] = 100.0
    adv, _ = compute_gae(rewards, values, terminated, truncated, final_values, last_values, GAMMA, LAM)
    assert adv[1, 0] == pytest.approx(1.0)  # 2 + 0 - 1: the final value is ignored


def test_truncation_bootstrap_changes_the_target_but_termination_does_not():
    rewards, values, terminated, truncated, final_values, last_values = _example()
    bumped = final_values.copy()
    bumped[2, 1] += 1.0
    adv_a, _ = compute_gae(rewards, values, terminated, truncated, final_values, last_values, GAMMA, LAM)
    adv_b, _ = compute_gae(rewards, values, terminated, truncated, bumped, last_values, GAMMA, LAM)
    assert adv_b[2, 1] - adv_a[2, 1] == pytest.approx(GAMMA)  # d target / d V(final) = gamma
    np.testing.assert_array_equal(adv_a[:, 0], adv_b[:, 0])


def _sb3_style_gae(rewards, values, terminated, truncated, final_values, last_values, gamma, lam):
    """Reference: SB3 folds truncation into the reward (r += gamma * V(final)) and treats
    every episode end as a done; the rest is textbook GAE."""
    rewards = rewards.astype(np.float64) + gamma * np.where(truncated & ~terminated, final_values, 0.0)
    done = terminated | truncated
    adv = np.zeros_like(rewards)
    last = np.zeros(rewards.shape[1])
    for t in reversed(range(rewards.shape[0])):
        next_v = last_values if t == rewards.shape[0] - 1 else values[t + 1]
        nonterminal = 1.0 - done[t]
        delta = rewards[t] + gamma * next_v * nonterminal - values[t]
        last = delta + gamma * lam * nonterminal * last
        adv[t] = last
    return adv


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 12).flatmap(lambda t: st.tuples(
        hnp.arrays(np.float32, (t, 3), elements=st.floats(-10, 10, width=32)),
        hnp.arrays(np.float32, (t, 3), elements=st.floats(-10, 10, width=32)),
        hnp.arrays(np.bool_, (t, 3)),
        hnp.arrays(np.bool_, (t, 3)),
        hnp.arrays(np.float32, (t, 3), elements=st.floats(-10, 10, width=32)),
        hnp.arrays(np.float32, (3,), elements=st.floats(-10, 10, width=32)),
    )),
    st.floats(0.0, 1.0), st.floats(0.0, 1.0),
)
def test_gae_equals_the_reward_folding_formulation(arrays, gamma, lam):
    rewards, values, terminated, truncated, final_values, last_values = arrays
    adv, ret = compute_gae(rewards, values, terminated, truncated, final_values, last_values, gamma, lam)
    expected = _sb3_style_gae(rewards, values, terminated, truncated, final_values, last_values, gamma, lam)
    np.testing.assert_allclose(adv, expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ret, adv + values, rtol=1e-5, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float32, (6, 2), elements=st.floats(-5, 5, width=32)), st.floats(0.0, 1.0))
def test_lambda_one_without_episode_ends_gives_discounted_returns(rewards, gamma):
    values = np.zeros_like(rewards)
    no = np.zeros(rewards.shape, dtype=bool)
    last = np.array([2.0, -1.0], dtype=np.float32)
    _, ret = compute_gae(rewards, values, no, no, np.zeros_like(rewards), last, gamma, 1.0)
    for t in range(6):
        disc = sum(gamma**k * rewards[t + k].astype(np.float64) for k in range(6 - t)) + gamma ** (6 - t) * last
        np.testing.assert_allclose(ret[t], disc, rtol=1e-5, atol=1e-4)


def test_buffer_fills_finishes_and_flattens_in_step_major_order():
    buf = RolloutBuffer(n_steps=4, n_envs=2, obs_dim=3)
    rewards, values, terminated, truncated, final_values, last_values = _example()
    for t in range(4):
        obs = np.full((2, 3), t, dtype=np.float32)
        row = buf.add(obs, np.array([t, t + 1]), np.zeros(2), values[t], rewards[t], terminated[t], truncated[t])
        assert row == t
    buf.set_final_values(2, np.array([1]), np.array([5.0]))
    with pytest.raises(IndexError):
        buf.add(obs, np.zeros(2), np.zeros(2), np.zeros(2), np.zeros(2), np.zeros(2, bool), np.zeros(2, bool))
    buf.finish(last_values, GAMMA, LAM)
    expected, _ = compute_gae(*_example(), GAMMA, LAM)
    np.testing.assert_allclose(buf.advantages, expected)
    flat = buf.flat()
    assert flat["observations"].shape == (8, 3)
    np.testing.assert_array_equal(flat["actions"], [0, 1, 1, 2, 2, 3, 3, 4])
    np.testing.assert_allclose(flat["returns"], (expected + values).reshape(-1), rtol=1e-6)


def test_finish_refuses_a_partial_rollout_and_reset_clears_final_values():
    buf = RolloutBuffer(n_steps=2, n_envs=1, obs_dim=1)
    z = np.zeros(1)
    buf.add(np.zeros((1, 1)), z, z, z, z, np.zeros(1, bool), np.ones(1, bool))
    buf.set_final_values(0, np.array([0]), np.array([9.0]))
    with pytest.raises(RuntimeError, match="1 of 2 rows"):
        buf.finish(z, GAMMA, LAM)
    buf.reset()
    assert buf.pos == 0 and not buf.final_values.any()
