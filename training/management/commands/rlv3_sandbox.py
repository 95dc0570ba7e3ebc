"""rlv3_sandbox: the seed's sandbox flow, end to end and offline.

init (dataset, environment, a fresh seeded policy) -> predict with the untrained policy ->
train briefly -> predict the same observation with the trained policy -> save a checkpoint ->
load it back (torch checkpoint and numpy runtime, sha256-verified) and predict once more,
which must give exactly the trained prediction. The observation is a real bar of the
dataset's validation split, seen from a flat account. Nothing is registered.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Sandbox: init, predict untrained, train briefly, predict trained, save, load."

    def add_arguments(self, parser):
        parser.add_argument("--dataset", default=settings.RLV3_DEFAULT_DATASET)
        parser.add_argument("--timesteps", type=int, default=16_384)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--output", help="checkpoint path (default RLV3_MODEL_DIR/sandbox/ppo_sandbox.pt)")
        parser.add_argument("--no-progress", action="store_true")
        parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    def handle(self, *args, **opts):
        import torch

        from training.datasets import dataset_load
        from training.rl.callbacks import ProgressBarCallback
        from training.rl.checkpoint import load_checkpoint, save_checkpoint
        from training.rl.data import DatasetError
        from training.rl.features import FEATURE_SPEC_VERSION
        from training.rl.inference import PolicyRuntime
        from training.rl.networks import ActorCritic
        from training.rl.ppo import train
        from training.rl.vec_env import TradingVecEnv
        from training.services import ppo_config_for

        dataset, timesteps, seed, output = opts["dataset"], opts["timesteps"], opts["seed"], opts["output"]
        if timesteps < 1:
            raise CommandError("--timesteps must be >= 1")
        # 1. init
        try:
            data = dataset_load(dataset)
        except DatasetError as exc:
            raise CommandError(str(exc)) from None
        config = ppo_config_for(timesteps=timesteps)
        envs = TradingVecEnv(data, num_envs=config.n_envs, split="train")
        policy = ActorCritic(envs.single_observation_space.shape[0], int(envs.single_action_space.n), config.hidden_sizes,
                             generator=torch.Generator().manual_seed(seed))
        fields = _validation_observation(data, seed)
        self.stdout.write(f"[init] {data.name}: {len(data.close):,} bars; policy {policy.architecture()}")
        self.stdout.write(f"[init] observation (validation split, flat account): {_brief(fields)}")

        # 2. predict untrained (the same numpy runtime serving uses)
        before = _runtime_of(policy).predict(fields)
        self.stdout.write(f"[untrained] {_describe(before)}")

        # 3. train briefly
        callbacks = [] if opts["no_progress"] else [ProgressBarCallback(desc="sandbox training", file=sys.stderr)]
        result = train(envs, config, timesteps, seed, callbacks=callbacks, device=settings.RLV3_DEVICE, policy=policy)
        last = result.curve[-1]
        self.stdout.write(f"[train] {result.timesteps:,} steps in {result.wall_seconds:.1f} s "
                          f"({result.sps:,.0f} steps/s); last update: entropy {last['entropy']:.3f}, "
                          f"episode return {last['episode_return_mean']}")

        # 4. predict trained
        after = _runtime_of(result.policy).predict(fields)
        self.stdout.write(f"[trained] {_describe(after)}")

        # 5. save
        path = Path(output or Path(settings.RLV3_MODEL_DIR) / "sandbox" / "ppo_sandbox.pt")
        artifact = save_checkpoint(path, result.policy, config=result.config, metrics={"timesteps": result.timesteps},
                                   feature_spec_version=FEATURE_SPEC_VERSION, extra={"dataset": data.name, "sandbox": True})
        self.stdout.write(f"[save] {artifact.path} (sha256 {artifact.sha256[:12]}…), runtime {artifact.runtime_path}")

        # 6. load (both files, verified) and predict again
        load_checkpoint(artifact.path, artifact.sha256)
        loaded = PolicyRuntime.load(artifact.runtime_path, artifact.runtime_sha256).predict(fields)
        if loaded != after:
            raise CommandError(f"the loaded model decided differently: {loaded} vs {after}")
        self.stdout.write(f"[load] {_describe(loaded)} (identical to the trained policy)")

        if opts["json"]:
            self.stdout.write(json.dumps({
                "dataset": data.name, "seed": seed, "timesteps": result.timesteps, "env_steps_per_s": result.sps,
                "before": before.to_dict(), "after": after.to_dict(), "loaded": loaded.to_dict(),
                "changed": before.probabilities != after.probabilities,
                "checkpoint": str(artifact.path), "sha256": artifact.sha256,
                "runtime_path": str(artifact.runtime_path), "runtime_sha256": artifact.runtime_sha256,
            }, default=str))


def _validation_observation(data: Any, seed: int) -> dict[str, Any]:
    """Observation fields of a flat account at the first bar of the validation split."""
    from training.rl.vec_env import TradingVecEnv

    env = TradingVecEnv(data, num_envs=1, split="validation")
    env.reset(seed=seed)
    return env.observation_fields(0)


def _runtime_of(policy: Any):
    from training.rl.features import FEATURE_SPEC_VERSION
    from training.rl.inference import PolicyRuntime, runtime_metadata

    meta = runtime_metadata({"architecture": policy.architecture(), "feature_spec_version": FEATURE_SPEC_VERSION})
    return PolicyRuntime(policy.export_arrays(), meta)


def _describe(p: Any) -> str:
    probs = ", ".join(f"{name} {prob:.3f}" for name, prob in zip(_names(), p.probabilities))
    return f"action {p.action.name} (confidence {p.confidence:.3f}, value {p.value:.4f}); probabilities: {probs}"


def _names() -> tuple[str, ...]:
    from training.rl.actions import ACTION_NAMES

    return ACTION_NAMES


def _brief(fields: dict[str, Any]) -> str:
    keys = ("symbol", "price_change_1m", "price_change_15m", "volatility", "rsi", "regime", "trend_strength")
    return ", ".join(f"{k}={fields[k]:.4g}" if isinstance(fields[k], float) else f"{k}={fields[k]}" for k in keys if k in fields)
