"""rlv3_evaluate: backtest a model on a dataset split next to buy-and-hold and a random policy.

--model VERSION|champion|challenger|PATH   a registered version (number, v3) or alias, or a runtime
                                           (.npz) or checkpoint (.pt) file; default champion
--dataset NAME|PATH.csv                    eurusd_1h, googl_1d, recorded:SYMBOL or an OHLCV CSV;
                                           default: the registered model's training dataset
--split test|all                           default: test (held-out 20 %) for bundled names, all for paths
--json                                     one JSON object as the last line (CONTRACTS section 7)
--plot PATH.png                            equity curves of the model and both baselines
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Backtest a model on a dataset split next to buy-and-hold and a seeded random policy."

    def add_arguments(self, parser):
        parser.add_argument("--model", default="champion", help="VERSION, champion, challenger or a .npz/.pt path")
        parser.add_argument("--dataset", help="eurusd_1h, googl_1d, recorded:SYMBOL or a path to an OHLCV CSV")
        parser.add_argument("--split", choices=("test", "all"), help="default: test for bundled datasets, all for paths")
        parser.add_argument("--seed", type=int, default=0, help="seed of the random baseline")
        parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
        parser.add_argument("--plot", metavar="PATH.png", help="write the equity curves to this PNG")

    def handle(self, *args, **opts):
        from training.datasets import dataset_load
        from training.rl.data import DatasetError, default_split
        from training.rl.evaluate import report, run_with_baselines

        runtime, version, model_dataset = _load_model(opts["model"])
        dataset = opts["dataset"] or model_dataset
        if not dataset:
            raise CommandError("--dataset is required: the model does not record the dataset it was trained on")
        split = opts["split"] or default_split(dataset)
        try:
            data = dataset_load(dataset)
            results = run_with_baselines(lambda v: runtime.predict_vector(v).action_code, data, split, opts["seed"])
        except DatasetError as exc:
            raise CommandError(str(exc)) from None
        result = report(results, model_version=version)
        self.stdout.write(_table(result))
        if opts["plot"]:
            from training.rl.plotting import plot_equity_curves

            curves = {f"model {version}": results["policy"].equity_curve, "buy and hold": results["buy_and_hold"].equity_curve,
                      f"random (seed {opts['seed']})": results["random"].equity_curve}
            path = plot_equity_curves(curves, opts["plot"], f"{dataset} {split}: equity")
            self.stdout.write(f"equity curves written to {path}")
        if opts["json"]:
            self.stdout.write(json.dumps(result))


def _load_model(ref: str) -> tuple[Any, str, str | None]:
    """(PolicyRuntime, model_version text, training dataset or None) for a version, alias or file."""
    from training.rl.inference import CheckpointError, PolicyRuntime

    path = Path(ref)
    try:
        if path.suffix in (".npz", ".pt") or path.exists():
            if not path.is_file():
                raise CommandError(f"no such model file: {ref}")
            if path.suffix == ".pt":
                runtime = PolicyRuntime.from_checkpoint(path, require_trading=True)
            else:
                runtime = PolicyRuntime.load(path)
            recorded = runtime.metadata.get("dataset") or (runtime.metadata.get("extra") or {}).get("dataset")
            return runtime, str(runtime.version or path), recorded
        from training.selectors import ModelNotFound, model_version_resolve

        try:
            version = model_version_resolve(ref)
        except ModelNotFound as exc:
            raise CommandError(str(exc)) from None
        runtime = PolicyRuntime.load(version.runtime_path, expected_sha256=version.runtime_sha256)
        return runtime, str(version.version), version.dataset or None
    except (CheckpointError, OSError) as exc:
        raise CommandError(f"cannot load model {ref}: {exc}") from None


def _table(result: dict[str, Any]) -> str:
    rows = [("model " + str(result["model_version"]), result)] + [
        (name.replace("_", " "), metrics) for name, metrics in result["baselines"].items()
    ]
    lines = [
        f"{result['dataset']} ({result['split']} split, {result['bars']} bars)",
        f"{'policy':<22}{'return':>10}{'sharpe':>9}{'sortino':>9}{'max dd':>9}{'trades':>8}{'fees':>11}",
    ]
    for name, m in rows:
        sortino = "n/a" if m["sortino"] is None else f"{m['sortino']:.2f}"
        lines.append(
            f"{name:<22}{m['total_return']:>10.2%}{m['sharpe']:>9.2f}{sortino:>9}{m['max_drawdown']:>9.2%}"
            f"{m['n_trades']:>8}{m['fees_paid']:>11.2f}"
        )
    return "\n".join(lines)
