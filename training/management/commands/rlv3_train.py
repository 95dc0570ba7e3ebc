"""rlv3_train: train a PPO policy on a trading dataset or on any gymnasium environment.

--gym-env ID      trains with the id's tuned preset (training.rl.config.GYM_PRESETS, else the seed
                  defaults), evaluates greedily on --eval-episodes fresh episodes and writes the
                  checkpoint under RLV3_MODEL_DIR/gym/ (or --output). --json's last line holds
                  eval_mean_return, eval_episodes, timesteps, env_steps_per_s.
--dataset NAME    trains on the dataset's train split and evaluates on its validation split.
                  By default this is a recorded training run: the model is registered as a new
                  ModelVersion and goes through the promotion gate (training.services). With
                  --no-register the checkpoint is only written under RLV3_MODEL_DIR/unregistered/
                  (or --output) and nothing in the registry changes.
--ppo KEY=VALUE   overrides one PPO hyperparameter (training.rl.config.PPOConfig), repeatable;
--env KEY=VALUE   one trading-environment setting (training.rl.env.EnvConfig), datasets only.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Train a PPO policy on a trading dataset (--dataset) or a gymnasium environment (--gym-env)."

    def add_arguments(self, parser):
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--dataset", help="eurusd_1h, googl_1d, recorded:SYMBOL or a path to an OHLCV CSV")
        source.add_argument("--gym-env", help="any gymnasium id with a Discrete action and a Box observation space")
        parser.add_argument("--timesteps", type=int, default=None,
                            help="environment steps (default: 100000 for gym, the service's default for datasets)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--n-envs", type=int, default=None, help="parallel environments (default: the preset's)")
        parser.add_argument("--ppo", action="append", default=[], metavar="KEY=VALUE",
                            help="override one PPO hyperparameter (repeatable), e.g. --ppo ent_coef=0.0")
        parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                            help="dataset: override one trading-environment setting (repeatable), e.g. --env drawdown_penalty=0")
        parser.add_argument("--eval-episodes", type=int, default=20, help="gym: greedy evaluation episodes")
        parser.add_argument("--output", help="checkpoint path (.pt) for --gym-env or --no-register")
        parser.add_argument("--no-register", action="store_true", help="dataset: do not register a ModelVersion")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")
        parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    def handle(self, *args, **opts):
        if opts["timesteps"] is not None and opts["timesteps"] < 1:
            raise CommandError("--timesteps must be >= 1")
        if opts["n_envs"] is not None and opts["n_envs"] < 1:
            raise CommandError("--n-envs must be >= 1")
        opts["overrides"] = _ppo_overrides(opts["ppo"], opts["n_envs"])
        opts["env_overrides"] = _env_overrides(opts["env"])
        if opts["env_overrides"] and opts["gym_env"]:
            raise CommandError("--env applies to trading datasets, not to --gym-env")
        result = self._gym(opts) if opts["gym_env"] else self._dataset(opts)
        if opts["json"]:
            self.stdout.write(json.dumps(result, default=str))

    # -- gymnasium ----------------------------------------------------------------------------
    def _gym(self, opts: dict[str, Any]) -> dict[str, Any]:
        from training.rl.checkpoint import save_checkpoint
        from training.rl.config import config_for_gym
        from training.rl.gym_vec import EnvSpecError, evaluate_gym
        from training.rl.ppo import train

        env_id, seed = opts["gym_env"], opts["seed"]
        timesteps = opts["timesteps"] or 100_000
        config = config_for_gym(env_id, **opts["overrides"])
        try:
            result = train(env_id, config, timesteps, seed, callbacks=self._progress(opts, env_id),
                           device=settings.RLV3_DEVICE)
            # Evaluation episodes use seeds the training environments never saw.
            mean_return = evaluate_gym(result.policy, env_id, opts["eval_episodes"], seed=1_000_000 + seed)
        except EnvSpecError as exc:
            raise CommandError(str(exc)) from None
        path = Path(opts["output"] or Path(settings.RLV3_MODEL_DIR) / "gym" / f"{_slug(env_id)}-seed{seed}.pt")
        metrics = {"eval_mean_return": mean_return, "eval_episodes": opts["eval_episodes"],
                   "timesteps": result.timesteps, "env_steps_per_s": result.sps, "wall_seconds": result.wall_seconds}
        artifact = save_checkpoint(path, result.policy, config=result.config, metrics=metrics,
                                   feature_spec_version=None, extra={"env_id": env_id, "seed": seed})
        self.stdout.write(
            f"{env_id}: mean return {mean_return:.1f} over {opts['eval_episodes']} greedy episodes after "
            f"{result.timesteps:,} steps ({result.sps:,.0f} steps/s, {result.wall_seconds:.1f} s); saved {artifact.path}"
        )
        return {"env_id": env_id, "seed": seed, **metrics, "checkpoint": str(artifact.path), "sha256": artifact.sha256}

    # -- trading datasets ---------------------------------------------------------------------
    def _dataset(self, opts: dict[str, Any]) -> dict[str, Any]:
        from training.datasets import dataset_is_known

        name = opts["dataset"]
        if not dataset_is_known(name, allow_paths=True):
            raise CommandError(f"unknown dataset {name!r}: use eurusd_1h, googl_1d, recorded:SYMBOL or a .csv path")
        timesteps = opts["timesteps"] or settings.RLV3_DEFAULT_TIMESTEPS
        if opts["no_register"]:
            return self._dataset_unregistered(name, timesteps, opts)
        return self._dataset_registered(name, timesteps, opts)

    def _dataset_registered(self, name: str, timesteps: int, opts: dict[str, Any]) -> dict[str, Any]:
        from training import services
        from training.models import ModelVersion, TrainingRun

        config = {key: value for key, value in (("ppo", opts["overrides"]), ("env", opts["env_overrides"])) if value}
        try:
            run = services.training_run_create(dataset=name, timesteps=timesteps, seed=opts["seed"], config=config)
        except services.TrainingRunActive as exc:
            raise CommandError(str(exc)) from None
        progress = None if opts["no_progress"] else sys.stderr
        outcome = services.training_run_execute(run_id=run.pk, progress_file=progress)
        if outcome["status"] != "succeeded":
            raise CommandError(f"training run {run.pk} {outcome['status']}: {outcome.get('error', '')}")
        version = ModelVersion.objects.get(version=outcome["version"])
        training = (version.metrics or {}).get("training", {})
        validation = (version.metrics or {}).get("validation", {})
        self.stdout.write(
            f"training run {run.pk}: registered v{version.version} ({version.gate_decision}); validation "
            f"total return {validation.get('total_return', float('nan')):.4f}, Sharpe {validation.get('sharpe', float('nan')):.3f}"
        )
        return {
            "dataset": name, "seed": opts["seed"], "training_run": TrainingRun.objects.get(pk=run.pk).pk,
            "model_version": version.version, "registered": True, "gate": version.gate_decision,
            "timesteps": training.get("timesteps"), "env_steps_per_s": training.get("env_steps_per_s"),
            "checkpoint": version.artifact_path, "sha256": version.sha256, "validation": validation,
        }

    def _dataset_unregistered(self, name: str, timesteps: int, opts: dict[str, Any]) -> dict[str, Any]:
        from training.datasets import dataset_load
        from training.rl.checkpoint import save_checkpoint
        from training.rl.data import DatasetError
        from training.rl.env import EnvConfig
        from training.rl.evaluate import evaluate_with_baselines
        from training.rl.features import FEATURE_SPEC_VERSION
        from training.rl.inference import PolicyRuntime
        from training.rl.ppo import train
        from training.rl.vec_env import TradingVecEnv
        from training.services import ppo_config_for

        seed = opts["seed"]
        try:
            data = dataset_load(name)
        except DatasetError as exc:
            raise CommandError(str(exc)) from None
        config = ppo_config_for(timesteps=timesteps, overrides=opts["overrides"])
        env_config = EnvConfig(**opts["env_overrides"])
        envs = TradingVecEnv(data, num_envs=config.n_envs, split="train", config=env_config)
        result = train(envs, config, timesteps, seed, callbacks=self._progress(opts, name), device=settings.RLV3_DEVICE)
        path = Path(opts["output"] or Path(settings.RLV3_MODEL_DIR) / "unregistered" / f"{_slug(name)}-seed{seed}.pt")
        record = {"ppo": result.config.to_dict(), "env": env_config.to_dict(), "seed": seed, "datasets": [name],
                  "timesteps": result.timesteps}
        artifact = save_checkpoint(path, result.policy, config=record, metrics={}, feature_spec_version=FEATURE_SPEC_VERSION,
                                   extra={"dataset": name, "dataset_fingerprint": data.fingerprint()})
        # Evaluate the runtime file itself: exactly what serving would load.
        runtime = PolicyRuntime.load(artifact.runtime_path, artifact.runtime_sha256)
        validation = evaluate_with_baselines(lambda v: runtime.predict_vector(v).action_code, data, "validation", seed)
        self.stdout.write(
            f"{name}: validation total return {validation['total_return']:.4f}, Sharpe {validation['sharpe']:.3f} "
            f"(buy and hold {validation['baselines']['buy_and_hold']['total_return']:.4f}); "
            f"{result.timesteps:,} steps at {result.sps:,.0f} steps/s; saved {artifact.path} (not registered)"
        )
        return {
            "dataset": name, "seed": seed, "model_version": None, "registered": False,
            "timesteps": result.timesteps, "env_steps_per_s": result.sps, "wall_seconds": result.wall_seconds,
            "checkpoint": str(artifact.path), "sha256": artifact.sha256, "validation": validation,
        }

    def _progress(self, opts: dict[str, Any], what: str) -> list:
        from training.rl.callbacks import ProgressBarCallback

        return [] if opts["no_progress"] else [ProgressBarCallback(desc=f"training {what}", file=sys.stderr)]


def _pairs(pairs: list[str], flag: str) -> dict[str, Any]:
    """``["ent_coef=0.0", ...]`` -> a dict (values parsed as JSON when they parse, else text)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise CommandError(f"{flag} expects KEY=VALUE, got {pair!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except ValueError:
            out[key.strip()] = raw
    return out


def _env_overrides(pairs: list[str]) -> dict[str, Any]:
    """Validated EnvConfig overrides from --env pairs."""
    from training.rl.env import EnvConfig

    overrides = _pairs(pairs, "--env")
    try:
        EnvConfig(**overrides)
    except (TypeError, ValueError) as exc:
        raise CommandError(f"--env: {exc}") from None
    return overrides


def _ppo_overrides(pairs: list[str], n_envs: int | None) -> dict[str, Any]:
    """Validated PPOConfig overrides from --ppo pairs; --n-envs joins them."""
    from training.rl.config import PPOConfig

    overrides = _pairs(pairs, "--ppo")
    if n_envs:
        overrides["n_envs"] = n_envs
    try:
        PPOConfig.from_dict(overrides)
    except (TypeError, ValueError) as exc:
        raise CommandError(f"--ppo: {exc}") from None
    return overrides


def _slug(name: str) -> str:
    """A file-name-safe form of a dataset name, path or gym id."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem if name.lower().endswith(".csv") else name).strip("_") or "model"
