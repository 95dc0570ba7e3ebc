"""Torch-free inference runtime: the trained policy as numpy matrices.

A serving process (web, stream subscriber) imports this module and numpy only — never torch —
so it starts fast and stays small. It loads the ``<stem>.npz`` written next to every torch
checkpoint by `training.rl.checkpoint.save_checkpoint`: the network's float32 weights plus a
JSON metadata string (architecture, feature-spec version, action enum, config, metrics),
readable with ``allow_pickle=False``.

`PolicyRuntime` is immutable after construction and `predict*` keep no state between calls,
so one instance may serve many threads at once. Actions are the argmax of the policy by
default; pass ``sample=True`` with a seeded ``numpy.random.Generator`` to draw them instead.
``confidence`` is always the policy's probability of the chosen action (the seed took it from
the value head), and ``value`` is the critic's estimate.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from training.rl import features
from training.rl.actions import ACTION_ENUM_SPEC, ACTION_NAMES, N_ACTIONS, Action

RUNTIME_FORMAT = "rlv3-ppo-runtime"
RUNTIME_FORMAT_VERSION = 1
METADATA_KEY = "metadata"
# OpenBLAS (numpy's BLAS) runs a matrix product on one thread when M*N*K <= 262144 and on all
# cores above that. On a shared machine a multi-threaded product of these small matrices
# collapses whenever another process holds a core (measured: 5-10x slower under load, a 16 ms
# scheduler tick per product). Large batches therefore run with OpenBLAS pinned to one thread
# (threadpoolctl, for the duration of the call) and are split across our own threads instead;
# without threadpoolctl they fall back to chunks small enough to stay single-threaded.
_BLAS_SINGLE_THREAD_MNK = 262_144
# Rows per chunk of the large-batch path: the chunk's activations (rows x 128 float32, two
# buffers) stay in L2 while every layer runs over them.
_CHUNK_ROWS = 1024
# Batches up to this many rows take the block-diagonal path (fewer numpy calls); API requests
# of one or a few observations land here.
_SMALL_BATCH_ROWS = 16
# From this many rows a batch is split across `PolicyRuntime.batch_threads` threads (numpy
# releases the GIL inside BLAS and ufuncs); below it the hand-off costs more than it saves.
_PARALLEL_MIN_ROWS = 4096
_exp = math.exp
_dot = np.dot
_tanh = np.tanh


class CheckpointError(ValueError):
    """A checkpoint or runtime file is unreadable, tampered with, or built for other code."""


def file_sha256(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def read_verified(path: Path, expected_sha256: str | None, what: str) -> tuple[bytes, str]:
    """The bytes of ``path`` and their sha256, read once (so what is checked is what is
    parsed); `CheckpointError` if unreadable or the digest differs from ``expected_sha256``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read {what} {path}: {exc}") from exc
    digest = file_sha256(data)
    if expected_sha256 is not None and digest != expected_sha256.lower():
        raise CheckpointError(f"sha256 mismatch for {path}: expected {expected_sha256}, file has {digest}")
    return data, digest


def check_compatibility(metadata: Mapping[str, Any], *, feature_spec_version: str | None = None,
                        source: str = "checkpoint", require_trading: bool = False) -> None:
    """Refuse metadata recorded under a different feature spec or action enum.

    A checkpoint with ``feature_spec_version`` None was trained on a gymnasium environment,
    not on trading features: its spec and action checks are skipped, unless
    ``require_trading`` (serving), which refuses it. ``feature_spec_version`` defaults to the
    code's `features.FEATURE_SPEC_VERSION`.
    """
    expected_spec = feature_spec_version or features.FEATURE_SPEC_VERSION
    recorded_spec = metadata.get("feature_spec_version")
    if recorded_spec is None:
        if require_trading:
            raise CheckpointError(f"{source} is not a trading policy (no feature spec version; trained on a gym env?)")
        return
    if recorded_spec != expected_spec:
        raise CheckpointError(
            f"{source} feature spec version mismatch: it was trained on {recorded_spec!r}, "
            f"this code computes {expected_spec!r}"
        )
    recorded_enum = metadata.get("action_enum")
    if recorded_enum != ACTION_ENUM_SPEC:
        raise CheckpointError(
            f"{source} action enum mismatch: it was trained with {recorded_enum!r}, this code has {ACTION_ENUM_SPEC!r}"
        )
    arch = metadata.get("architecture") or {}
    if arch.get("obs_dim") != features.FEATURE_DIM or arch.get("n_actions") != N_ACTIONS:
        raise CheckpointError(
            f"{source} network shape mismatch: obs_dim={arch.get('obs_dim')} n_actions={arch.get('n_actions')}, "
            f"expected {features.FEATURE_DIM} and {N_ACTIONS}"
        )


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One decision. ``probabilities`` has one float per action code (sums to 1);
    ``confidence`` = ``probabilities[action_code]``; ``value`` is the critic's estimate."""

    action: Action
    action_code: int
    confidence: float
    probabilities: tuple[float, ...]
    value: float

    @classmethod
    def _fast(cls, action: Action, action_code: int, confidence: float, probabilities: tuple[float, ...],
              value: float) -> "Prediction":
        # The frozen dataclass __init__ sets fields one object.__setattr__ at a time; filling the
        # instance dict directly builds the identical object in half the time (hot serving path).
        p = object.__new__(cls)
        p.__dict__.update(action=action, action_code=action_code, confidence=confidence,
                          probabilities=probabilities, value=value)
        return p

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: action as its name."""
        return {
            "action": self.action.name, "action_code": self.action_code, "confidence": self.confidence,
            "probabilities": list(self.probabilities), "value": self.value,
        }


@dataclasses.dataclass(frozen=True)
class BatchPrediction:
    """Decisions for N observations: actions int64 (N,), probabilities float32 (N, n_actions),
    values float32 (N,)."""

    actions: np.ndarray
    probabilities: np.ndarray
    values: np.ndarray

    @property
    def confidences(self) -> np.ndarray:
        """Probability of each chosen action, (N,)."""
        return np.take_along_axis(self.probabilities, self.actions[:, None], axis=1)[:, 0]

    def __len__(self) -> int:
        return int(self.actions.shape[0])


class PolicyRuntime:
    """The policy network in numpy. Build with `load`, `from_checkpoint` or `untrained`.

    Attributes: ``version`` (registry version if recorded, else None), ``feature_spec_version``
    (None for gym policies), ``source_path``, ``sha256`` (of the runtime file), ``metadata``,
    ``obs_dim``, ``n_actions``, ``batch_threads`` (threads a `predict_batch` of at least
    4096 rows may use; default 2 where the machine has them, settable).
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, Any], *,
                 source_path: str | None = None, sha256: str | None = None) -> None:
        self.metadata: dict[str, Any] = dict(metadata)
        self.source_path = source_path
        self.sha256 = sha256
        version = self.metadata.get("version")
        self.version: str | None = None if version is None else str(version)
        self.feature_spec_version: str | None = self.metadata.get("feature_spec_version")
        try:
            self._build(arrays)
        except (KeyError, ValueError, IndexError) as exc:
            raise CheckpointError(f"runtime weights are malformed: {exc}") from exc

    def _build(self, arrays: Mapping[str, np.ndarray]) -> None:
        def f32(name: str) -> np.ndarray:
            return np.ascontiguousarray(arrays[name], dtype=np.float32)

        n_hidden = sum(1 for k in arrays if k.startswith("hidden_weight_"))
        if n_hidden < 1:
            raise ValueError("no hidden layers")
        stacked = [(f32(f"hidden_weight_{i}"), f32(f"hidden_bias_{i}")) for i in range(n_hidden)]
        for w, b in stacked:
            if w.ndim != 3 or w.shape[0] != 2 or b.shape != (2, 1, w.shape[2]):
                raise ValueError(f"hidden layer shapes {w.shape} / {b.shape}")
        actor_w, actor_b = f32("actor_weight"), f32("actor_bias")
        critic_w, critic_b = f32("critic_weight"), f32("critic_bias")
        self.obs_dim = int(stacked[0][0].shape[1])
        self.n_actions = int(actor_w.shape[1])
        # Single-vector path: per-call overhead dominates, so as few numpy calls as possible —
        # layer 0 side by side (obs, 2h), later layers and the head block-diagonal.
        self._w0 = np.concatenate([stacked[0][0][0], stacked[0][0][1]], axis=1)
        self._b0 = np.concatenate([stacked[0][1][0, 0], stacked[0][1][1, 0]])
        self._blocks = [(_block_diagonal(w[0], w[1]), np.concatenate([b[0, 0], b[1, 0]])) for w, b in stacked[1:]]
        self._head = _block_diagonal(actor_w, critic_w)
        self._head_b = np.concatenate([actor_b, critic_b])
        # One vector: the same matrices transposed, since matrix @ vector (gemv) on contiguous
        # rows is the cheapest numpy call for it.
        self._vector_layers = [(np.ascontiguousarray(w.T), b) for w, b in
                               [(self._w0, self._b0), *self._blocks, (self._head, self._head_b)]]
        self._arrays = {k: np.array(v, dtype=np.float32) for k, v in arrays.items()}
        # Large batches: the folded-tanh kernel (see `_BatchKernel`), chunked and threaded.
        self._kernel = _BatchKernel(stacked, actor_w, actor_b, critic_w, critic_b)
        self._small_batch = _SMALL_BATCH_ROWS
        self._chunk_rows = _CHUNK_ROWS if _blas_limiter._bind() else max(
            8, _BLAS_SINGLE_THREAD_MNK // (self.obs_dim * 2 * int(stacked[0][0].shape[2])))
        #: Threads one large `predict_batch` call may use (the caller plus a shared worker).
        self.batch_threads = min(2, os.cpu_count() or 1)
        self._local = threading.local()
        # A trading policy's codes map to Action members; a gym policy's stay plain ints.
        self._actions: tuple[Any, ...] = tuple(Action) if self.n_actions == N_ACTIONS else tuple(range(self.n_actions))

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def load(cls, runtime_path: "str | os.PathLike[str]", expected_sha256: str | None = None, *,
             feature_spec_version: str | None = None, require_trading: bool = True) -> "PolicyRuntime":
        """Load a ``.npz`` runtime file. Verifies its sha256 when given and refuses a file
        recorded under another feature spec or action enum (`CheckpointError`). With
        ``require_trading`` (default, for serving) a gym-env policy is refused too."""
        path = Path(runtime_path)
        data, digest = read_verified(path, expected_sha256, "runtime file")
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files if k != METADATA_KEY}
                metadata = json.loads(str(npz[METADATA_KEY][()]))
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path} is not a policy runtime file: {exc}") from exc
        if metadata.get("format") != RUNTIME_FORMAT:
            raise CheckpointError(f"{path} is not a policy runtime file (format {metadata.get('format')!r})")
        check_compatibility(metadata, feature_spec_version=feature_spec_version, source=str(path),
                            require_trading=require_trading)
        return cls(arrays, metadata, source_path=str(path), sha256=digest)

    @classmethod
    def from_checkpoint(cls, checkpoint_path: "str | os.PathLike[str]", expected_sha256: str | None = None, *,
                        require_trading: bool = False) -> "PolicyRuntime":
        """Build from a torch ``.pt`` checkpoint (imports torch; for tools, not for serving)."""
        from training.rl.checkpoint import load_checkpoint

        loaded = load_checkpoint(checkpoint_path, expected_sha256)
        if require_trading:
            check_compatibility(loaded.metadata, source=str(checkpoint_path), require_trading=True)
        return cls(loaded.policy.export_arrays(), runtime_metadata(loaded.metadata),
                   source_path=str(checkpoint_path), sha256=loaded.sha256)

    @classmethod
    def untrained(cls, seed: int = 0, hidden_sizes: tuple[int, ...] = (64, 64)) -> "PolicyRuntime":
        """A randomly initialised trading policy (orthogonal weights, SB3 gains) built in numpy:
        what the service answers with before any model has been trained."""
        rng = np.random.default_rng(seed)
        widths = (features.FEATURE_DIM, *hidden_sizes)
        arrays: dict[str, np.ndarray] = {}
        for i in range(len(hidden_sizes)):
            arrays[f"hidden_weight_{i}"] = np.stack([_orthogonal(rng, widths[i], widths[i + 1], math.sqrt(2)) for _ in (0, 1)])
            arrays[f"hidden_bias_{i}"] = np.zeros((2, 1, widths[i + 1]), dtype=np.float32)
        arrays["actor_weight"] = _orthogonal(rng, widths[-1], N_ACTIONS, 0.01)
        arrays["actor_bias"] = np.zeros(N_ACTIONS, dtype=np.float32)
        arrays["critic_weight"] = _orthogonal(rng, widths[-1], 1, 1.0)
        arrays["critic_bias"] = np.zeros(1, dtype=np.float32)
        metadata = runtime_metadata({
            "architecture": {"obs_dim": features.FEATURE_DIM, "n_actions": N_ACTIONS, "hidden_sizes": list(hidden_sizes)},
            "feature_spec_version": features.FEATURE_SPEC_VERSION, "action_enum": dict(ACTION_ENUM_SPEC),
            "untrained": True, "seed": seed,
        })
        return cls(arrays, metadata)

    def arrays(self) -> dict[str, np.ndarray]:
        """Copies of the weights, keyed as in the runtime file."""
        return {k: v.copy() for k, v in self._arrays.items()}

    # -- prediction ---------------------------------------------------------------------------
    def predict(self, fields: Mapping[str, Any], *, sample: bool = False,
                rng: np.random.Generator | None = None) -> Prediction:
        """Decide for one observation given as fields (CONTRACTS §4). Raises
        `features.ObservationError` naming the bad field."""
        clean = features.validate_observation(fields)
        return self.predict_vector(features.observation_to_vector(clean), sample=sample, rng=rng)

    def predict_vector(self, vector: np.ndarray, *, sample: bool = False,
                       rng: np.random.Generator | None = None) -> Prediction:
        """Decide for one feature vector (obs_dim,) (float32 preferred)."""
        x = np.asarray(vector, dtype=np.float32)
        if x.shape != (self.obs_dim,):
            raise ValueError(f"expected a feature vector of shape ({self.obs_dim},), got {x.shape}")
        h = x
        last = len(self._vector_layers) - 1
        for i, (weight_t, bias) in enumerate(self._vector_layers):
            h = _dot(weight_t, h)
            h += bias
            if i < last:
                _tanh(h, out=h)
        values = h.tolist()
        logits, value = values[: self.n_actions], values[self.n_actions]
        # Softmax of a handful of numbers in plain float64 Python: cheaper than numpy at this
        # size, and the probabilities sum to 1 to double precision.
        top = max(logits)
        exps = [_exp(v - top) for v in logits]
        scale = 1.0 / sum(exps)
        probs = tuple([e * scale for e in exps])
        if sample:
            code = int((rng or np.random.default_rng()).choice(self.n_actions, p=np.asarray(probs)))
        else:
            code = probs.index(max(probs))
        return Prediction._fast(self._actions[code], code, probs[code], probs, value)

    def predict_batch(self, vectors: np.ndarray, *, sample: bool = False,
                      rng: np.random.Generator | None = None) -> BatchPrediction:
        """Decide for N feature vectors (N, obs_dim): actions (N,), probabilities (N, n_actions),
        values (N,)."""
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.obs_dim:
            raise ValueError(f"expected feature vectors of shape (N, {self.obs_dim}), got {x.shape}")
        n = x.shape[0]
        probs = np.empty((n, self.n_actions), dtype=np.float32)
        values = np.empty(n, dtype=np.float32)
        if n <= self._small_batch:  # few rows: the block-diagonal path's fewer numpy calls win
            out = self._fused(x)
            values[:] = out[:, self.n_actions]
            _softmax_into(out[:, : self.n_actions], probs)
        elif n < _PARALLEL_MIN_ROWS or self.batch_threads < 2:
            with _blas_limiter.single_threaded():
                self._run_chunks(x, probs, values)
        else:
            # Split on a chunk boundary; the shared worker takes the tail, this thread the head.
            half = -(-((n + 1) // 2) // self._chunk_rows) * self._chunk_rows
            with _blas_limiter.single_threaded():
                tail = _worker().submit(self._run_chunks, x[half:], probs[half:], values[half:])
                self._run_chunks(x[:half], probs[:half], values[:half])
                tail.result()
        if sample:
            rng = rng or np.random.default_rng()
            cdf = np.cumsum(probs, axis=1, dtype=np.float64)
            draws = rng.random((n, 1)) * cdf[:, -1:]
            actions = np.minimum((cdf <= draws).sum(axis=1), self.n_actions - 1).astype(np.int64)
        else:
            actions = probs.argmax(axis=1).astype(np.int64)
        return BatchPrediction(actions=actions, probabilities=probs, values=values)

    def _fused(self, x: np.ndarray) -> np.ndarray:
        """Logits and value side by side, (..., n_actions + 1), in as few numpy calls as possible."""
        h = x @ self._w0
        h += self._b0
        np.tanh(h, out=h)
        for weight, bias in self._blocks:
            h = h @ weight
            h += bias
            np.tanh(h, out=h)
        out = h @ self._head
        out += self._head_b
        return out

    def _run_chunks(self, x: np.ndarray, probs_out: np.ndarray, values_out: np.ndarray) -> None:
        """Forward ``x`` (N, obs_dim) chunk by chunk into ``probs_out`` / ``values_out``, with
        this thread's work buffers."""
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = self._kernel.buffers(self._chunk_rows)
        step = self._chunk_rows
        for start in range(0, x.shape[0], step):
            stop = min(x.shape[0], start + step)
            out = self._kernel.forward(x[start:stop], buffers)
            values_out[start:stop] = out[self.n_actions]
            _softmax_columns_into(out[: self.n_actions], probs_out[start:stop])

    def __repr__(self) -> str:
        return (f"PolicyRuntime(version={self.version!r}, feature_spec_version={self.feature_spec_version!r}, "
                f"obs_dim={self.obs_dim}, n_actions={self.n_actions}, source_path={self.source_path!r})")


def runtime_metadata(checkpoint_metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata stored in a runtime file, from a checkpoint's (format fields set)."""
    meta = {k: v for k, v in checkpoint_metadata.items() if k not in ("format", "format_version")}
    meta["format"] = RUNTIME_FORMAT
    meta["format_version"] = RUNTIME_FORMAT_VERSION
    return meta


class _BatchKernel:
    """The network rewritten for throughput on chunks of rows; same function, float32.

    tanh(a) = 1 - 2 r with r = 1 / (exp(2a) + 1). numpy's float32 exp is vectorised while its
    tanh is about twice as slow, and exp overflowing to inf gives r = 0 (tanh = 1) exactly, so
    no clamp is needed. The affine ``1 - 2 r`` and the factor 2 are folded into the next
    layer's weights and biases: a hidden layer costs one product, a bias add, exp, +1 and a
    reciprocal, all in place in preallocated buffers. Both towers' first layers share one
    product (obs, 2h); deeper layers are one product per tower on column views (cheaper than a
    block-diagonal product that multiplies the zero blocks); the heads are one product giving
    the output transposed, (A+1, m), so the softmax works on contiguous rows of m values rather
    than on m rows of A values. Deviation from np.tanh: below 3e-7 per activation.
    """

    def __init__(self, stacked: list[tuple[np.ndarray, np.ndarray]], actor_w: np.ndarray, actor_b: np.ndarray,
                 critic_w: np.ndarray, critic_b: np.ndarray) -> None:
        def folded(w: np.ndarray, b: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
            # x = 1 - 2r into w (in, out): x @ w + b = r @ (-2w) + (colsum(w) + b), times ``scale``.
            w64, b64 = w.astype(np.float64), b.astype(np.float64)
            return ((-2.0 * scale) * w64).astype(np.float32), (scale * (w64.sum(axis=0) + b64)).astype(np.float32)

        w0, b0 = stacked[0]
        self.first = (2.0 * np.concatenate([w0[0], w0[1]], axis=1)).astype(np.float32)
        self.first_b = (2.0 * np.concatenate([b0[0, 0], b0[1, 0]])).astype(np.float32)
        self.widths = [int(w0.shape[2])]
        self.layers: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for w, b in stacked[1:]:
            (wa, ba), (wc, bc) = folded(w[0], b[0, 0], 2.0), folded(w[1], b[1, 0], 2.0)
            self.layers.append((wa, wc, np.concatenate([ba, bc])))
            self.widths.append(int(w.shape[2]))
        (ha, hba), (hc, hbc) = folded(actor_w, actor_b, 1.0), folded(critic_w, critic_b, 1.0)
        self.head_t = np.ascontiguousarray(_block_diagonal(ha, hc).T)
        self.head_b = np.concatenate([hba, hbc])[:, None]

    def buffers(self, rows: int) -> list[np.ndarray]:
        """Work buffers for chunks of up to ``rows`` rows: one per hidden layer, then the output."""
        return [_aligned_empty((rows, 2 * h)) for h in self.widths] + [_aligned_empty((self.head_t.shape[0], rows))]

    def forward(self, x: np.ndarray, buffers: list[np.ndarray]) -> np.ndarray:
        """Logits and value stacked, transposed: (n_actions + 1, m), for x (m, obs_dim),
        m <= rows; a view into ``buffers`` (valid until the next call)."""
        m = x.shape[0]
        r = buffers[0][:m]
        np.matmul(x, self.first, out=r)
        with np.errstate(over="ignore"):  # exp(2a) = inf for a > 44 is intended: r = 0
            _neg_sigmoid(r, self.first_b)
            for i, (wa, wc, b) in enumerate(self.layers):
                h_in, h_out = self.widths[i], self.widths[i + 1]
                nxt = buffers[i + 1][:m]
                np.matmul(r[:, :h_in], wa, out=nxt[:, :h_out])
                np.matmul(r[:, h_in:], wc, out=nxt[:, h_out:])
                _neg_sigmoid(nxt, b)
                r = nxt
        out = buffers[-1][:, :m]
        np.matmul(self.head_t, r.T, out=out)
        out += self.head_b
        return out


def _aligned_empty(shape: tuple[int, int]) -> np.ndarray:
    """Uninitialised float32 array starting on a 64-byte boundary. The SIMD loops of exp and
    BLAS round differently in their unaligned prologue, so every thread's buffers share one
    alignment to give bit-identical results whichever thread computes a row."""
    size = shape[0] * shape[1]
    raw = np.empty(size + 16, dtype=np.float32)
    offset = (-raw.ctypes.data % 64) // 4
    return raw[offset : offset + size].reshape(shape)


def _neg_sigmoid(a: np.ndarray, bias: np.ndarray) -> None:
    """In place: a <- 1 / (exp(a + bias) + 1)."""
    a += bias
    np.exp(a, out=a)
    a += 1.0
    np.reciprocal(a, out=a)


class _SingleThreadedBlas:
    """Pins numpy's OpenBLAS to one thread while any caller is inside `single_threaded`.

    With OpenBLAS's pthreads layer (numpy's wheels) the thread count is process-wide, so
    entries are counted: the first one in sets it to 1, the last one out restores it. The
    library is located with threadpoolctl and driven through its own C entry points, because
    threadpoolctl lets only one "controlling" Python thread change the limit. With any other
    BLAS, or without threadpoolctl, this does nothing (`available` is False) and callers keep
    their products below OpenBLAS's threading threshold instead.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._saved = 1
        self._get: Any = None
        self._set: Any = None
        try:
            import threadpoolctl  # noqa: F401
            self.available = True
        except ImportError:
            self.available = False

    def _bind(self) -> bool:
        """Find numpy's OpenBLAS (once); False if it is not a pthreads OpenBLAS."""
        if self._get is None and self.available:
            import ctypes

            from threadpoolctl import ThreadpoolController

            libs = [c for c in ThreadpoolController().select(internal_api="openblas").lib_controllers
                    if getattr(c, "threading_layer", None) == "pthreads"]
            for lib in libs[:1]:
                dll = ctypes.CDLL(lib.filepath)
                for prefix, suffix in ((p, s) for p in ("", "scipy_") for s in ("", "64_", "_64")):
                    if hasattr(dll, f"{prefix}openblas_set_num_threads{suffix}"):
                        self._get = getattr(dll, f"{prefix}openblas_get_num_threads{suffix}")
                        self._set = getattr(dll, f"{prefix}openblas_set_num_threads{suffix}")
                        break
            self.available = self._get is not None
        return self.available

    @contextmanager
    def single_threaded(self) -> Iterator[None]:
        if not self._bind():
            yield
            return
        with self._lock:
            if self._depth == 0:
                self._saved = int(self._get())
                if self._saved != 1:
                    self._set(1)
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0 and self._saved != 1:
                    self._set(self._saved)


_blas_limiter = _SingleThreadedBlas()
_worker_lock = threading.Lock()
_worker_pool: ThreadPoolExecutor | None = None


def _worker() -> ThreadPoolExecutor:
    """The one shared helper thread that takes half of each large batch (created on first use)."""
    global _worker_pool
    with _worker_lock:
        if _worker_pool is None:
            _worker_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlv3-inference")
        return _worker_pool


def _softmax_columns_into(logits: np.ndarray, out: np.ndarray) -> None:
    """Softmax of each column of (A, m) ``logits`` into ``out`` (m, A); ``logits`` is
    modified. Row-wise operations over m contiguous values instead of m tiny reductions."""
    top = np.maximum(logits[0], logits[1])
    for row in logits[2:]:
        np.maximum(top, row, out=top)
    logits -= top
    np.exp(logits, out=logits)
    scale = logits.sum(axis=0)
    np.reciprocal(scale, out=scale)
    logits *= scale
    out[:] = logits.T


def _softmax_into(logits: np.ndarray, out: np.ndarray) -> None:
    """Row-wise softmax of (N, A) logits into ``out``; ``logits`` is modified."""
    logits -= logits.max(axis=1, keepdims=True)
    np.exp(logits, out=out)
    out /= out.sum(axis=1, keepdims=True)


def _block_diagonal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros((a.shape[0] + b.shape[0], a.shape[1] + b.shape[1]), dtype=np.float32)
    out[: a.shape[0], : a.shape[1]] = a
    out[a.shape[0] :, a.shape[1] :] = b
    return out


def _orthogonal(rng: np.random.Generator, n_in: int, n_out: int, gain: float) -> np.ndarray:
    """(n_in, n_out) matrix with orthonormal rows or columns, times ``gain`` (as torch's init)."""
    flat = rng.standard_normal((max(n_in, n_out), min(n_in, n_out)))
    q, r = np.linalg.qr(flat)
    q *= np.sign(np.diag(r))
    if n_in < n_out:
        q = q.T
    return (gain * q).astype(np.float32)


__all__ = [
    "ACTION_NAMES", "BatchPrediction", "CheckpointError", "PolicyRuntime", "Prediction",
    "check_compatibility", "runtime_metadata",
]
