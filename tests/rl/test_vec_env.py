"""The vectorised environment: same trajectories as N scalar environments, autoreset, spaces."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

from training.rl import features as F
from training.rl.actions import N_ACTIONS
from training.rl.env import EnvConfig, TradingEnv
from training.rl.vec_env import TradingVecEnv


@pytest.mark.parametrize("n_envs", [1, 5])
def test_same_trajectories_as_n_scalar_envs_with_the_same_seeds(eurusd, googl, n_envs):
    config = EnvConfig(episode_length=60, ruin_fraction=0.98)  # short episodes: many autoresets, some ruin
    data = [eurusd, googl]
    vec = TradingVecEnv(data, n_envs, "train", config)
    scalars = [TradingEnv(data, "train", config) for _ in range(n_envs)]
    obs, _ = vec.reset(seed=123)
    expected = np.stack([env.reset(seed=123 + i)[0] for i, env in enumerate(scalars)])
    assert np.array_equal(obs, expected)
    rng = np.random.default_rng(0)
    ended = {"terminated": 0, "truncated": 0}
    for _ in range(600):
        actions = rng.integers(0, N_ACTIONS, n_envs)
        obs, rewards, terminated, truncated, infos = vec.step(actions)
        for i, env in enumerate(scalars):
            o, r, te, tr, info = env.step(int(actions[i]))
            assert (r, te, tr) == (rewards[i], terminated[i], truncated[i])
            if te or tr:
                ended["terminated" if te else "truncated"] += 1
                assert infos["_final_obs"][i]
                assert np.array_equal(infos["final_obs"][i], o)
                assert infos["final_info"]["equity"][i] == info["equity"]
                assert infos["final_info"]["n_trades"][i] == info["n_trades"]
                o, info = env.reset()  # the vector env resets in the same step
            else:
                assert not infos.get("_final_obs", np.zeros(n_envs, bool))[i]
            assert np.array_equal(obs[i], o)
            for key in ("equity", "cash", "position", "realised_pnl", "fees", "n_trades"):
                assert infos[key][i] == info[key], key
    assert ended["terminated"] > 0 and ended["truncated"] > 0, ended


def test_spaces_metadata_and_shapes(googl):
    vec = TradingVecEnv(googl, 16, "train")
    assert vec.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    assert vec.num_envs == 16
    assert vec.single_observation_space.shape == (64,) and vec.observation_space.shape == (16, 64)
    assert vec.single_action_space == gym.spaces.Discrete(N_ACTIONS)
    assert vec.action_space.shape == (16,)
    obs, infos = vec.reset(seed=0)
    assert obs.shape == (16, 64) and obs.dtype == np.float32
    obs, rewards, terminated, truncated, infos = vec.step(vec.action_space.sample())
    assert obs.shape == (16, 64) and rewards.shape == (16,) and rewards.dtype == np.float64
    assert terminated.shape == truncated.shape == (16,) and terminated.dtype == bool
    assert infos["equity"].shape == (16,) and infos["_equity"].all()
    assert vec.observation_space.contains(obs)


def test_final_info_reports_episode_return_and_length(googl):
    config = EnvConfig(episode_length=5)
    vec = TradingVecEnv(googl, 3, "train", config)
    vec.reset(seed=1)
    total = np.zeros(3)
    for step in range(5):
        _, rewards, terminated, truncated, infos = vec.step(np.array([1, 2, 0]))
        total += rewards
    assert truncated.all() and not terminated.any()
    episode = infos["final_info"]["episode"]
    assert np.array_equal(episode["l"], [5, 5, 5])
    assert np.allclose(episode["r"], total) and episode["r"][2] == 0.0  # HOLD from flat earns 0
    assert infos["n_trades"].tolist() == [0, 0, 0]  # the new episodes start flat


def test_vector_observations_equal_the_serving_vector(eurusd, googl):
    vec = TradingVecEnv([eurusd, googl], 4, "validation", EnvConfig(episode_length=50))
    obs, _ = vec.reset(seed=9)
    rng = np.random.default_rng(2)
    for _ in range(120):
        for i in range(4):
            fields = F.validate_observation(vec.observation_fields(i))
            assert np.array_equal(F.observation_to_vector(fields), obs[i])
        obs, *_ = vec.step(rng.integers(0, N_ACTIONS, 4))


@pytest.mark.parametrize("actions", [np.array([0, 6]), np.array([-1, 0]), np.array([0]), np.array([0.5, 1.0])])
def test_invalid_actions_are_rejected(googl, actions):
    vec = TradingVecEnv(googl, 2, "train")
    vec.reset(seed=0)
    with pytest.raises(ValueError, match="actions must be 2 integers"):
        vec.step(actions)


def test_infos_handed_out_never_change_afterwards(googl):
    vec = TradingVecEnv(googl, 4, "train", EnvConfig(episode_length=3))
    vec.reset(seed=2)
    kept = []
    for step in range(7):  # episodes end at steps 3 and 6: autoresets write into the state
        _, _, _, _, infos = vec.step(np.array([1, 2, 3, 5]))
        kept.append((infos, {k: v.copy() for k, v in infos.items() if isinstance(v, np.ndarray) and v.dtype != object}))
    vec.reset(seed=3)
    for infos, values in kept:
        for key, value in values.items():
            assert np.array_equal(infos[key], value), key
