"""What pruning saves in an Optuna search: the same search with the preset's pruner and without one.

    python benchmarks/pruning.py                          # 16 trials, 6 epochs each, on `shapes` (minutes)
    python benchmarks/pruning.py --dataset glyphs --trials 16 --epochs 6
    python benchmarks/pruning.py --smoke                  # seconds: what CI runs

Each search is one whole `python run.py -m hparams_search=optuna` process on a folder made locally
(benchmarks/datasets.py), with the same sampler seed, timed from its start to its exit: first with the
preset's pruner (HyperbandPruner), then with `hydra.sweeper.pruner=null`. For each: the wall time, the trials
pruned, and the best trial's best val accuracy with the 95% interval tl logs for it (Wilson, over the
validation images). The bar of issue 26: the pruned search in at most half the time, its best inside the
unpruned best's interval. Writes benchmarks/results/pruning-<cpu>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import mlflow

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere in the checkout
sys.path.insert(0, str(ROOT / "benchmarks"))

import compare  # noqa: E402
import datasets  # noqa: E402
from time_to_accuracy import machine_name  # noqa: E402

SEARCHES = {"pruned": [], "unpruned": ["hydra.sweeper.pruner=null"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="shapes", choices=["fashion", "glyphs", "shapes"])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train", type=int, default=50, help="training images per class")
    parser.add_argument("--val", type=int, default=20, help="validation images per class")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--smoke", action="store_true", help="2 trials of 1 epoch on 3 images per class at 32 px")
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/pruning-<cpu>.json)")
    args = parser.parse_args()
    if args.smoke:
        args.trials, args.epochs, args.train, args.val, args.image_size = 2, 1, 3, 2, 32
    report = {"machine": compare.machine("cpu"), "settings": vars(args), "searches": {}}
    with tempfile.TemporaryDirectory(prefix="tl-pruning-") as scratch:
        scratch = Path(scratch)
        data = datasets.make(args.dataset, scratch / "data", args.train, args.val)
        for name, overrides in SEARCHES.items():
            print(f"{args.dataset}: {args.trials} trials, {name} ...", file=sys.stderr, flush=True)
            report["searches"][name] = search(name, overrides, data, args, scratch)
            print(f"  {report['searches'][name]}", file=sys.stderr, flush=True)
    report["bar"] = verdict(report["searches"]["pruned"], report["searches"]["unpruned"])
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"pruning-{machine_name()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["bar"], indent=2))
    print(f"written to {out}")


def search(name: str, overrides: list[str], data: Path, args: argparse.Namespace, scratch: Path) -> dict:
    """One whole search process: its wall time, trials pruned, and its best trial's accuracy and interval."""
    folder = scratch / name
    folder.mkdir()
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    command = [
        sys.executable, str(ROOT / "run.py"), "-m", "hparams_search=optuna", f"hydra.sweeper.n_trials={args.trials}",
        f"epochs={args.epochs}", "data=image_folder", f"data.root={data}", f"data.image_size={args.image_size}",
        f"tracking.uri={uri}", "trainer.progress=false", f"hydra.sweep.dir={folder / 'sweep'}", *overrides,
    ]  # fmt: skip
    # One feature cache per search, shared by its trials: each search computes the features once.
    env = {**os.environ, "TL_CACHE_DIR": str(folder / "cache")}
    wall, _ = compare.timed(command, folder / "output.log", env=env)
    client = mlflow.MlflowClient(uri)
    trials = [run for run in client.search_runs([client.get_experiment_by_name("tl").experiment_id])
              if "tl.optuna_trial" in run.data.tags]  # fmt: skip
    finished = [run for run in trials if run.data.tags.get("tl.optuna_state") != "PRUNED"]
    best = max(finished, key=lambda run: run.data.metrics["best_val_acc"])
    return {
        "wall_s": wall,
        "trials": len(trials),
        "pruned": len(trials) - len(finished),
        "best_val_acc": best.data.metrics["best_val_acc"],
        "interval": [best.data.metrics["best_val_acc_ci_low"], best.data.metrics["best_val_acc_ci_high"]],
        "best_params": {key: best.data.params[key] for key in ("lr", "strategy")},
    }


def verdict(pruned: dict, unpruned: dict) -> dict:
    """Issue 26's bar: at most half the time, and the pruned best inside the unpruned best's 95% interval."""
    low, high = unpruned["interval"]
    return {
        "time_ratio": pruned["wall_s"] / unpruned["wall_s"],
        "at_most_half_the_time": pruned["wall_s"] <= unpruned["wall_s"] / 2,
        "best_within_interval": low <= pruned["best_val_acc"] <= high,
    }


if __name__ == "__main__":
    main()
