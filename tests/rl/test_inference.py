"""The torch-free inference runtime: parity with torch, validation, determinism, thread safety."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch

from training.rl.actions import N_ACTIONS, Action
from training.rl.checkpoint import CheckpointError, save_checkpoint
from training.rl.config import PPOConfig
from training.rl.features import FEATURE_DIM, FEATURE_SPEC_VERSION, ObservationError, observation_to_vector, validate_observation
from training.rl.inference import BatchPrediction, PolicyRuntime, Prediction
from training.rl.networks import ActorCritic


def _policy(seed: int = 0) -> ActorCritic:
    net = ActorCritic(FEATURE_DIM, N_ACTIONS, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed + 100)) * 0.3)
    return net


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    net = _policy()
    art = save_checkpoint(tmp_path_factory.mktemp("ck") / "m.pt", net, config=PPOConfig(), metrics={},
                          feature_spec_version=FEATURE_SPEC_VERSION, extra={"version": 7})
    return net, art, PolicyRuntime.load(art.runtime_path, art.runtime_sha256)


def test_importing_the_runtime_never_imports_torch():
    code = (
        "import sys, training.rl.inference as i; r = i.PolicyRuntime.untrained(0); r.predict({'rsi': 40});"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_numpy_runtime_matches_the_torch_network(trained):
    net, _, runtime = trained
    x = np.random.default_rng(0).normal(0, 1.5, (2000, FEATURE_DIM)).astype(np.float32)
    with torch.no_grad():
        logits, values = net(torch.from_numpy(x))
        probs = torch.softmax(logits, -1).numpy()
    batch = runtime.predict_batch(x)
    np.testing.assert_allclose(batch.probabilities, probs, atol=1e-5)
    np.testing.assert_allclose(batch.values, values.numpy(), atol=1e-5, rtol=1e-5)
    clear = np.sort(probs, axis=1)[:, -1] - np.sort(probs, axis=1)[:, -2] > 1e-4  # no near-ties
    np.testing.assert_array_equal(batch.actions[clear], probs.argmax(1)[clear])
    for i in range(0, 2000, 97):  # the single-vector path agrees too
        single = runtime.predict_vector(x[i])
        np.testing.assert_allclose(single.probabilities, probs[i], atol=1e-5)
        assert single.value == pytest.approx(float(values[i]), abs=1e-5)


def test_save_load_and_from_checkpoint_give_identical_outputs(trained):
    net, art, runtime = trained
    x = np.random.default_rng(1).normal(size=(300, FEATURE_DIM)).astype(np.float32)
    via_torch = PolicyRuntime.from_checkpoint(art.path, art.sha256)
    a, b = runtime.predict_batch(x), via_torch.predict_batch(x)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    np.testing.assert_array_equal(a.values, b.values)
    for name, array in runtime.arrays().items():
        np.testing.assert_array_equal(array, dict(net.named_parameters())[name].detach().numpy())


def test_runtime_records_where_it_came_from(trained):
    _, art, runtime = trained
    assert runtime.version == "7" and runtime.feature_spec_version == FEATURE_SPEC_VERSION
    assert runtime.source_path == str(art.runtime_path) and runtime.sha256 == art.runtime_sha256
    assert PolicyRuntime.untrained(0).version is None


def test_predict_from_fields_uses_the_shared_feature_function(trained):
    _, _, runtime = trained
    fields = {"price_change_1m": 0.002, "rsi": 71, "regime": "breakout", "position_side": 1, "symbol": "EURUSD"}
    p = runtime.predict(fields)
    q = runtime.predict_vector(observation_to_vector(validate_observation(fields)))
    assert p == q


def test_prediction_confidence_is_the_chosen_action_probability(trained):
    _, _, runtime = trained
    for rsi in (5, 30, 50, 70, 95):
        p = runtime.predict({"rsi": rsi, "volatility": 0.05})
        assert isinstance(p, Prediction) and isinstance(p.action, Action)
        assert p.action_code == int(p.action) and len(p.probabilities) == N_ACTIONS
        assert sum(p.probabilities) == pytest.approx(1.0, abs=1e-12)
        assert p.confidence == p.probabilities[p.action_code] == max(p.probabilities)
        assert p.to_dict()["action"] == p.action.name
        json.dumps(p.to_dict())


def test_bad_fields_are_rejected_naming_the_field():
    runtime = PolicyRuntime.untrained(0)
    with pytest.raises(ObservationError) as err:
        runtime.predict({"rsi": 140})
    assert err.value.field == "rsi"
    with pytest.raises(ObservationError):
        runtime.predict({"regime": "SIDEWAYS"})
    with pytest.raises(ValueError, match=r"shape \(64,\)"):
        runtime.predict_vector(np.zeros(63))
    with pytest.raises(ValueError, match=r"\(N, 64\)"):
        runtime.predict_batch(np.zeros((2, 65)))


def test_batch_prediction_shapes_and_dtypes():
    runtime = PolicyRuntime.untrained(3)
    batch = runtime.predict_batch(np.zeros((2500, FEATURE_DIM), np.float32))  # crosses the chunk size
    assert isinstance(batch, BatchPrediction) and len(batch) == 2500
    assert batch.actions.dtype == np.int64 and batch.actions.shape == (2500,)
    assert batch.probabilities.shape == (2500, N_ACTIONS) and batch.values.shape == (2500,)
    np.testing.assert_allclose(batch.probabilities.sum(1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(batch.confidences, batch.probabilities.max(1))
    assert len(runtime.predict_batch(np.zeros((0, FEATURE_DIM)))) == 0


def test_deterministic_by_default_and_seeded_sampling_is_reproducible(trained):
    _, _, runtime = trained
    x = np.random.default_rng(2).normal(size=(4000, FEATURE_DIM)).astype(np.float32)
    np.testing.assert_array_equal(runtime.predict_batch(x).actions, runtime.predict_batch(x).actions)
    s1 = runtime.predict_batch(x, sample=True, rng=np.random.default_rng(9)).actions
    s2 = runtime.predict_batch(x, sample=True, rng=np.random.default_rng(9)).actions
    np.testing.assert_array_equal(s1, s2)
    # Sampled action frequencies follow the probabilities (mean over rows, 4000 draws).
    probs = runtime.predict_batch(x).probabilities
    freq = np.bincount(s1, minlength=N_ACTIONS) / len(s1)
    np.testing.assert_allclose(freq, probs.mean(0), atol=0.03)
    v = x[0]
    draws = [runtime.predict_vector(v, sample=True, rng=np.random.default_rng(k)).action_code for k in range(300)]
    expected = np.asarray(runtime.predict_vector(v).probabilities)
    np.testing.assert_allclose(np.bincount(draws, minlength=N_ACTIONS) / 300, expected, atol=0.09)


def test_untrained_runtime_is_seeded_and_shaped_like_a_trained_one():
    a, b, c = PolicyRuntime.untrained(0), PolicyRuntime.untrained(0), PolicyRuntime.untrained(1)
    x = np.random.default_rng(3).normal(size=(50, FEATURE_DIM)).astype(np.float32)
    np.testing.assert_array_equal(a.predict_batch(x).probabilities, b.predict_batch(x).probabilities)
    assert not np.array_equal(a.predict_batch(x).values, c.predict_batch(x).values)
    trained_shapes = {k: tuple(v.shape) for k, v in _policy().named_parameters()}
    assert {k: v.shape for k, v in a.arrays().items()} == trained_shapes
    w = a.arrays()["hidden_weight_1"][0]
    np.testing.assert_allclose(w.T @ w, 2.0 * np.eye(64), atol=1e-4)  # orthogonal, gain sqrt(2)
    # A fresh network is near-uniform over actions (head gain 0.01), as a torch init is.
    assert np.abs(a.predict_batch(x).probabilities - 1 / N_ACTIONS).max() < 0.05


def test_concurrent_predictions_equal_sequential_ones(trained):
    _, _, runtime = trained
    x = np.random.default_rng(4).normal(size=(64, FEATURE_DIM)).astype(np.float32)
    expected = [runtime.predict_vector(v) for v in x]
    expected_batch = runtime.predict_batch(x)
    errors: list[str] = []

    def worker() -> None:
        for _ in range(30):
            if [runtime.predict_vector(v) for v in x] != expected:
                errors.append("single")
            if not np.array_equal(runtime.predict_batch(x).probabilities, expected_batch.probabilities):
                errors.append("batch")

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_runtime_file_tampering_is_refused(trained, tmp_path):
    _, art, _ = trained
    data = bytearray(art.runtime_path.read_bytes())
    data[200] ^= 0x01
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        PolicyRuntime.load(bad, art.runtime_sha256)


def _rewrite_metadata(src, dst, **changes):
    with np.load(src, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(str(arrays.pop("metadata")[()]))
    meta.update(changes)
    np.savez(dst, **arrays, metadata=np.array(json.dumps(meta)))


def test_runtime_from_another_feature_spec_or_action_enum_is_refused(trained, tmp_path):
    _, art, _ = trained
    _rewrite_metadata(art.runtime_path, tmp_path / "spec.npz", feature_spec_version="rlv3-features-0")
    with pytest.raises(CheckpointError, match="feature spec version mismatch"):
        PolicyRuntime.load(tmp_path / "spec.npz")
    _rewrite_metadata(art.runtime_path, tmp_path / "enum.npz", action_enum={"HOLD": 0, "BUY": 1})
    with pytest.raises(CheckpointError, match="action enum mismatch"):
        PolicyRuntime.load(tmp_path / "enum.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="not a policy runtime file"):
        PolicyRuntime.load(tmp_path / "junk.npz")


def test_small_and_large_batches_agree_row_by_row(trained):
    # Small batches take the block-diagonal path, large ones the per-tower chunks.
    _, _, runtime = trained
    x = np.random.default_rng(5).normal(size=(1500, FEATURE_DIM)).astype(np.float32)
    large = runtime.predict_batch(x)
    assert 10 <= runtime._small_batch < runtime._chunk_rows < 1500
    for start in range(0, 1500, 10):
        small = runtime.predict_batch(x[start : start + 10])
        np.testing.assert_allclose(small.probabilities, large.probabilities[start : start + 10], atol=1e-6)
        np.testing.assert_allclose(small.values, large.values[start : start + 10], atol=1e-5)
    one = runtime.predict_batch(x[:1])
    assert one.actions[0] == runtime.predict_vector(x[0]).action_code


def test_predictions_are_ordinary_frozen_dataclasses():
    import dataclasses

    p = PolicyRuntime.untrained(0).predict({})
    q = Prediction(action=p.action, action_code=p.action_code, confidence=p.confidence,
                   probabilities=p.probabilities, value=p.value)
    assert p == q and hash(p) == hash(q) and dataclasses.asdict(p) == dataclasses.asdict(q)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.action_code = 3  # type: ignore[misc]


def _openblas_threads() -> list[int]:
    from threadpoolctl import ThreadpoolController

    return [c.num_threads for c in ThreadpoolController().select(internal_api="openblas").lib_controllers]


def test_large_batches_split_across_threads_match_torch_and_one_thread(trained):
    # Above the parallel threshold the batch is cut across two threads: every row must be the
    # torch network's answer and bit-identical to the one-thread result.
    from training.rl import inference

    net, art, _ = trained
    runtime = PolicyRuntime.load(art.runtime_path, art.runtime_sha256)
    n = inference._PARALLEL_MIN_ROWS + 777  # an uneven split, a partial last chunk
    x = np.random.default_rng(6).normal(0, 1.5, (n, FEATURE_DIM)).astype(np.float32)
    with torch.no_grad():
        logits, values = net(torch.from_numpy(x))
    runtime.batch_threads = 2
    split = runtime.predict_batch(x)
    np.testing.assert_allclose(split.probabilities, torch.softmax(logits, -1).numpy(), atol=1e-5)
    np.testing.assert_allclose(split.values, values.numpy(), atol=1e-5, rtol=1e-5)
    runtime.batch_threads = 1
    single = runtime.predict_batch(x)
    np.testing.assert_array_equal(split.probabilities, single.probabilities)
    np.testing.assert_array_equal(split.values, single.values)
    np.testing.assert_array_equal(split.actions, single.actions)


def test_saturated_activations_are_exact_and_silent(trained):
    # Huge inputs drive every tanh to +-1: exp overflows to inf on purpose, which must give
    # tanh = 1 exactly, no NaN and no RuntimeWarning.
    import warnings

    net, _, runtime = trained
    x = np.random.default_rng(7).normal(0, 1e4, (3000, FEATURE_DIM)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batch = runtime.predict_batch(x)
    with torch.no_grad():
        logits, values = net(torch.from_numpy(x))
    assert np.isfinite(batch.probabilities).all() and np.isfinite(batch.values).all()
    np.testing.assert_allclose(batch.probabilities, torch.softmax(logits, -1).numpy(), atol=1e-5)
    np.testing.assert_allclose(batch.values, values.numpy(), atol=1e-5, rtol=1e-5)


def test_batches_leave_the_blas_thread_count_as_they_found_it(trained):
    _, _, runtime = trained
    before = _openblas_threads()
    x = np.random.default_rng(8).normal(size=(9000, FEATURE_DIM)).astype(np.float32)
    threads = [threading.Thread(target=runtime.predict_batch, args=(x,)) for _ in range(3)]
    for t in threads:
        t.start()
    runtime.predict_batch(x)
    for t in threads:
        t.join()
    assert _openblas_threads() == before


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 2600), seed=st.integers(0, 2**16))
def test_each_row_is_decided_independently_of_the_batch_it_is_in(n, seed):
    # Whatever the batch size (small path, chunked path, partial chunks), a row's decision is
    # the single-vector path's decision for it.
    runtime = _SHARED_RUNTIME
    x = np.random.default_rng(seed).normal(0, 2.0, (n, FEATURE_DIM)).astype(np.float32)
    batch = runtime.predict_batch(x)
    for i in {0, n // 2, n - 1}:
        single = runtime.predict_vector(x[i])
        np.testing.assert_allclose(batch.probabilities[i], single.probabilities, atol=2e-6)
        assert batch.values[i] == pytest.approx(single.value, abs=1e-5)
    np.testing.assert_allclose(batch.probabilities.sum(1), 1.0, atol=1e-6)


# Perturbed weights, so probabilities are far from uniform and rows differ clearly.
_SHARED_RUNTIME = PolicyRuntime(_policy(11).export_arrays(), {})
