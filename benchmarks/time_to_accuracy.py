"""The best model per minute: the tutorial's loop against tl's default and options, on several datasets.

    python benchmarks/time_to_accuracy.py                        # 3 datasets x 3 seeds (hours on 2 CPU cores)
    python benchmarks/time_to_accuracy.py --datasets glyphs --seeds 0 --arms tl/default,tl/frozen
    python benchmarks/time_to_accuracy.py --arm lpft3="strategy=lpft epochs=3"   # one more tl arm
    python benchmarks/time_to_accuracy.py --smoke                # seconds: what CI runs

Datasets (benchmarks/datasets.py), made in a temp folder, `--train`/`--val` images per class: `fashion`
(the shipped sample), `glyphs` (digits in many fonts, far from ImageNet) and `shapes` (coloured shapes
on clutter). Arms, each a whole process, timed from its start to its exit, one after another:
- `tutorial/finetune`, `tutorial/frozen`: the tutorial's own loop (benchmarks/tutorial_loop.py), 25
  epochs, batch 4, EfficientNet-Lite0 with the ImageNet weights tl ships;
- `tl/default`: `python run.py` given only the data (and where to log);
- `tl/frozen`: `strategy=frozen epochs=25`, the tutorial's second scenario in tl;
- any `--arm NAME="overrides"`.
Every arm sees the same images at the same size (`--image-size`). Seeds take turns (all arms of seed 0,
then of seed 1, ...) so that a slow spell of the machine does not fall on one arm. For each dataset and
arm: the mean best val accuracy with its 95% interval over the seeds (Student's t), the mean wall
time, and the bar of issue 26: at least the better tutorial scenario's mean minus 1 point, in at most a
tenth of the tutorial fine-tuning's wall time. Writes benchmarks/results/time_to_accuracy-<cpu>.json
and a figure of accuracy against wall time per dataset (.png beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import mlflow
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere in the checkout
sys.path.insert(0, str(ROOT / "benchmarks"))

import compare  # noqa: E402
import datasets  # noqa: E402

TL_ARMS = {"tl/default": [], "tl/frozen": ["strategy=frozen", "epochs=25"]}
TUTORIAL_ARMS = ("tutorial/finetune", "tutorial/frozen")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="fashion,glyphs,shapes", help="comma-separated")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated")
    parser.add_argument("--arms", help="comma-separated arm names (default: every arm)")
    parser.add_argument("--arm", action="append", default=[], metavar='NAME="KEY=VALUE ..."',
                        help="one more tl arm: run.py's overrides, e.g. lpft3=\"strategy=lpft epochs=3\"")  # fmt: skip
    parser.add_argument("--train", type=int, default=50, help="training images per class")
    parser.add_argument("--val", type=int, default=20, help="validation images per class")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--epochs", type=int, default=25, help="the tutorial's epochs (and tl/frozen's)")
    parser.add_argument("--smoke", action="store_true", help="3 images per class at 32 px, 1 epoch: a check")
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/time_to_accuracy-<cpu>.json)")
    args = parser.parse_args()
    arms = {"tutorial/finetune": None, "tutorial/frozen": None, **TL_ARMS}
    for extra in args.arm:
        name, _, overrides = extra.partition("=")
        arms[f"tl/{name}"] = overrides.split()
    if args.arms:
        arms = {name: arms[name] for name in args.arms.split(",")}
    if args.smoke:
        args.train, args.val, args.image_size, args.epochs = 3, 2, 32, 1
        arms = {name: [*(overrides or []), "epochs=1"] if overrides is not None else None
                for name, overrides in arms.items()}  # fmt: skip
    seeds = [int(seed) for seed in args.seeds.split(",")]
    names = args.datasets.split(",")

    settings = {"train_per_class": args.train, "val_per_class": args.val, "image_size": args.image_size,
                "tutorial_epochs": args.epochs, "model": "efficientnet_lite0", "batch_size_tutorial": 4,
                "arms": {name: "the tutorial's loop" if o is None else " ".join(o) or "(the default)"
                         for name, o in arms.items()}}  # fmt: skip
    runs: dict[str, dict[str, list[dict]]] = {name: {arm: [] for arm in arms} for name in names}
    with tempfile.TemporaryDirectory(prefix="tl-time-to-accuracy-") as scratch:
        scratch = Path(scratch)
        weights = compare.prepare_weights("efficientnet_lite0", "imagenet", scratch)
        uri = f"sqlite:///{scratch / 'mlflow.db'}"
        mlflow.MlflowClient(uri).search_experiments()  # the store exists before the first timed run
        for name in names:
            data = datasets.make(name, scratch / "data" / name, args.train, args.val)
            for seed in seeds:
                for arm, overrides in arms.items():
                    print(f"{name} seed {seed}: {arm} ...", file=sys.stderr, flush=True)
                    folder = scratch / "runs" / name / arm.replace("/", "-") / str(seed)
                    folder.mkdir(parents=True)
                    runs[name][arm].append(run_arm(arm, overrides, data, seed, args, weights, uri, folder))
                    print(f"  {runs[name][arm][-1]}", file=sys.stderr, flush=True)
    report = {"machine": compare.machine("cpu"), "settings": settings,
              "datasets": {name: summarise(runs[name]) for name in names}}  # fmt: skip
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"time_to_accuracy-{machine_name()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out.with_suffix(".png"))
    print(table(report))
    print(f"\nwritten to {out} and {out.with_suffix('.png')}")


def run_arm(arm: str, overrides: list[str] | None, data: Path, seed: int, args: argparse.Namespace, weights: str,
            uri: str, folder: Path) -> dict:  # fmt: skip
    """One whole process: its wall time, best val accuracy and when each epoch's validation ended."""
    if overrides is None:  # the tutorial's loop
        settings = {"model": "efficientnet_lite0", "epochs": args.epochs, "batch_size": 4, "workers": 4,
                    "device": "cpu", "image_size": args.image_size}  # fmt: skip
        command = compare.tutorial_command(arm.split("/")[1], data, settings, weights, folder / "result.json")
        command += ["--seed", str(seed)]
        wall, _ = compare.timed(command, folder / "output.log")
        record = json.loads((folder / "result.json").read_text())
        return {"seed": seed, "wall_s": wall, "best_val_acc": record["best_val_acc"]}
    command = [
        sys.executable, str(ROOT / "run.py"), "data=image_folder", f"data.root={data}",
        f"data.image_size={args.image_size}", f"seed={seed}", f"tracking.uri={uri}", "tracking.experiment=benchmark",
        "trainer.progress=false", f"hydra.run.dir={folder}", *overrides,
    ]  # fmt: skip
    # A fresh cache folder per run: features and the data manifest are computed, as on a first run.
    env = {**os.environ, "TL_CACHE_DIR": str(folder / "cache")}
    wall, _ = compare.timed(command, folder / "output.log", env=env)
    _, best = compare.tl_run_record(uri)
    return {"seed": seed, "wall_s": wall, "best_val_acc": best}


def summarise(arms: dict[str, list[dict]]) -> dict:
    """Per arm: mean best accuracy, its 95% interval over seeds, mean wall time; then the bar's verdict."""
    summary = {}
    for arm, runs in arms.items():
        accuracies = [run["best_val_acc"] for run in runs]
        mean = statistics.mean(accuracies)
        half = (stats.t.ppf(0.975, len(runs) - 1) * statistics.stdev(accuracies) / len(runs) ** 0.5
                if len(runs) > 1 else None)  # fmt: skip
        summary[arm] = {"best_val_acc": mean, "interval": [mean - half, mean + half] if half is not None else None,
                        "wall_s": statistics.mean(run["wall_s"] for run in runs), "runs": runs}  # fmt: skip
    tutorial = [summary[arm] for arm in TUTORIAL_ARMS if arm in summary]
    if len(tutorial) == 2:
        target = max(arm["best_val_acc"] for arm in tutorial) - 0.01
        time_limit = summary["tutorial/finetune"]["wall_s"] / 10
        for row in summary.values():
            row["meets_bar"] = row["best_val_acc"] >= target and row["wall_s"] <= time_limit
        summary["bar"] = {"best_val_acc_at_least": target, "wall_s_at_most": time_limit}
    return summary


def table(report: dict) -> str:
    lines = [f"{'dataset':<8} {'arm':<20} {'best val acc (95% interval)':<28} {'wall s':>7}  bar"]
    for name, arms in report["datasets"].items():
        for arm, row in arms.items():
            if arm == "bar":
                continue
            interval = "({:.3f}-{:.3f})".format(*row["interval"]) if row["interval"] else ""
            verdict = {True: "met", False: "missed"}.get(row.get("meets_bar"), "")
            accuracy = f"{row['best_val_acc']:.3f} {interval}"
            lines.append(f"{name:<8} {arm:<20} {accuracy:<28} {row['wall_s']:>7.1f}  {verdict}")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """Accuracy against wall time, one panel per dataset, one point (with its interval) per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["datasets"])
    figure, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for axis, name in zip(axes[0], names, strict=True):
        arms = {arm: row for arm, row in report["datasets"][name].items() if arm != "bar"}
        for arm, row in arms.items():
            low, high = row["interval"] or (row["best_val_acc"],) * 2
            errors = [[row["best_val_acc"] - low], [high - row["best_val_acc"]]]
            axis.errorbar(row["wall_s"], row["best_val_acc"], yerr=errors, fmt="o", capsize=3, label=arm)
        bar = report["datasets"][name].get("bar")
        if bar:
            axis.axhline(bar["best_val_acc_at_least"], color="grey", linestyle=":", linewidth=1)
            axis.axvline(bar["wall_s_at_most"], color="grey", linestyle=":", linewidth=1)
        axis.set(xscale="log", xlabel="wall time of the whole process (s)", ylabel="best val accuracy", title=name)
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def machine_name() -> str:
    """A short name for the CPU: results from different machines are kept apart."""
    cpu = compare.machine("cpu")["cpu"].lower()
    return "amd-epyc" if "epyc" in cpu else "intel-xeon" if "xeon" in cpu else "cpu"


if __name__ == "__main__":
    main()
