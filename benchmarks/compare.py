"""tl against the tutorial's own loop, on the same data, model, image size, batch size and epochs.

    python benchmarks/compare.py            # small: a few minutes on 2 CPU cores
    python benchmarks/compare.py --full     # the tutorial's 224 px and 25 epochs

Eight runs, one after another, each a child process: the tutorial's loop (benchmarks/tutorial_loop.py)
for both scenarios, then `python run.py` for `finetune` and `frozen` at fp32 (the tutorial's
arithmetic: no channels_last, files decoded every epoch), with tl's defaults, and with the fast
settings. Prints a table
of wall time, epoch time, images per second, peak memory and best validation accuracy, with each
run's ratios to the tutorial loop of its scenario, and writes it as JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere in the checkout

from tl.core.numerics import native_bf16_cpu  # noqa: E402
from tl.core.provenance import cpu_features, cpu_model  # noqa: E402
from tl.data.folders import FASHION_SAMPLE_ROOT  # noqa: E402
from tl.models.backbones import efficientnet_lite0_imagenet  # noqa: E402

SIZES = {  # epochs, image size
    "small": (3, 112),
    "full": (25, 224),  # the tutorial's
}
SCENARIOS = ("finetune", "frozen")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the tutorial's 25 epochs at 224 px")
    parser.add_argument("--data", help="a folder with train/<class>/ and val/<class>/ (default: a tutorial-sized "
                        "part of the shipped Fashion-MNIST sample, 24 train and 15 val images per class)")  # fmt: skip
    parser.add_argument("--model", choices=["resnet18", "efficientnet_lite0"], default="resnet18")
    parser.add_argument("--weights", choices=["imagenet", "random"], default="imagenet",
                        help="random: timings only (resnet18 needs a download for imagenet)")  # fmt: skip
    parser.add_argument("--epochs", type=int, help="instead of the size's")
    parser.add_argument("--image-size", type=int, help="instead of the size's")
    parser.add_argument("--batch-size", type=int, default=4, help="the tutorial's 4")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers (the tutorial's 4)")
    parser.add_argument("--device", default="auto", help="auto: cuda when there is one, else cpu")
    parser.add_argument("--repeat", type=int, default=1, help="run every arm this many times, in turn; "
                        "the table gives medians")  # fmt: skip
    parser.add_argument("--only", help="comma-separated arm names, e.g. tutorial/frozen,tl-fast/frozen")
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/<size>-<device>-<model>.json)")
    args = parser.parse_args()
    size = "full" if args.full else "small"
    epochs, image_size = SIZES[size]
    epochs, image_size = args.epochs or epochs, args.image_size or image_size
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")

    with tempfile.TemporaryDirectory(prefix="tl-benchmark-") as scratch:
        scratch = Path(scratch)
        data = Path(args.data).resolve() if args.data else tutorial_sized_sample(scratch / "data")
        tutorial_weights = prepare_weights(args.model, args.weights, scratch)
        uri = f"sqlite:///{scratch / 'mlflow.db'}"
        mlflow.MlflowClient(uri).search_experiments()  # the store exists before the first timed run
        settings = {
            "size": size, "data": str(data) if args.data else "fashion_sample, 24 train + 15 val images per class",
            "model": args.model, "weights": args.weights, "epochs": epochs, "image_size": image_size,
            "batch_size": args.batch_size, "workers": args.workers, "device": device, "repeat": args.repeat,
        }  # fmt: skip
        arms = [
            (f"{kind}/{scenario}", scenario, kind)
            for kind in ("tutorial", "tl-fp32", "tl", "tl-fast")  # tl: its defaults
            for scenario in SCENARIOS
        ]
        if args.only:
            arms = [arm for arm in arms if arm[0] in args.only.split(",")]
        train_images = sum(1 for path in (data / "train").rglob("*") if path.is_file())
        runs = {name: [] for name, _, _ in arms}
        for repeat in range(args.repeat):  # round robin: a slow spell of the machine hits every arm alike
            for name, scenario, kind in arms:
                print(f"running {name} ({repeat + 1}/{args.repeat}) ...", file=sys.stderr, flush=True)
                folder = scratch / kind / scenario / str(repeat)  # fresh: no feature cache from an earlier round
                folder.mkdir(parents=True)
                if kind == "tutorial":
                    command = tutorial_command(scenario, data, settings, tutorial_weights, folder / "result.json")
                else:
                    command = tl_command(scenario, kind, data, settings, uri, folder)
                wall, peak = timed(command, folder / "output.log")
                if kind == "tutorial":
                    record = json.loads((folder / "result.json").read_text())
                    epoch_ends, best = record["epoch_ends"], record["best_val_acc"]
                else:
                    epoch_ends, best = tl_run_record(uri)
                runs[name].append({"wall_s": wall, "epoch_s": median_epoch(epoch_ends), "peak_mb": peak,
                                   "best_val_acc": best})  # fmt: skip
        results = [
            {"arm": name, "scenario": scenario, **medians(runs[name]), "repeats": runs[name]}
            for name, scenario, _ in arms
        ]
        for result in results:
            result["images_per_s"] = train_images * epochs / result["wall_s"]
    add_ratios(results)
    report = {"machine": machine(device), "settings": settings, "results": results}
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"{size}-{device}-{args.model}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"\nwritten to {out}")


def tutorial_sized_sample(folder: Path, per_class: dict[str, int] | None = None) -> Path:
    """The shipped sample cut to the tutorial's size (ants/bees: 244 train, 153 val), as links."""
    for split, count in (per_class or {"train": 24, "val": 15}).items():
        for source in sorted((FASHION_SAMPLE_ROOT / split).iterdir()):
            target = folder / split / source.name
            target.mkdir(parents=True)
            for image in sorted(source.iterdir())[:count]:
                (target / image.name).symlink_to(image.resolve())
    return folder


def prepare_weights(model: str, weights: str, scratch: Path) -> str:
    """What the tutorial loop's --weights gets. ResNet-18's ImageNet weights are fetched (or found in
    torch.hub's cache) here, once, so that no timed run downloads."""
    if weights == "random":
        return "random"
    if model == "efficientnet_lite0":
        path = scratch / "efficientnet_lite0.pt"
        torch.save(efficientnet_lite0_imagenet()[0].state_dict(), path)  # in timm's names
        return str(path)
    from torchvision.models import ResNet18_Weights

    try:
        ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False, check_hash=True)
    except OSError as error:
        sys.exit(
            f"error: ResNet-18's ImageNet weights could not be downloaded ({error}); run once with a network, "
            "or use --model efficientnet_lite0 (ships its weights) or --weights random (timings only)"
        )
    return "imagenet"


def tutorial_command(scenario: str, data: Path, settings: dict, weights: str, result: Path) -> list[str]:
    command = [
        sys.executable, str(ROOT / "benchmarks" / "tutorial_loop.py"), "--data", str(data), "--scenario", scenario,
        "--model", settings["model"], "--weights", weights, "--epochs", str(settings["epochs"]),
        "--batch-size", str(settings["batch_size"]), "--workers", str(settings["workers"]),
        "--device", settings["device"], "--result", str(result),
    ]  # fmt: skip
    # The model's own preprocessing, as tl reads it from the weights (for ResNet-18: the tutorial's).
    pre = preprocess(settings["model"], settings["image_size"])
    command += ["--image-size", str(pre.input_size), "--resize-size", str(pre.resize_size)]
    command += ["--interpolation", pre.interpolation, "--mean", *map(str, pre.mean), "--std", *map(str, pre.std)]
    return command


def preprocess(model: str, image_size: int):
    from tl.models.backbones import efficientnet_lite0, torchvision_model

    build = efficientnet_lite0 if model == "efficientnet_lite0" else lambda **kw: torchvision_model("resnet18", **kw)
    return build(num_classes=2, pretrained=False).preprocess.at_size(image_size)


def tl_command(scenario: str, kind: str, data: Path, settings: dict, uri: str, output: Path) -> list[str]:
    command = [
        sys.executable, str(ROOT / "run.py"), f"+experiment=tutorial_{scenario}", f"model={settings['model']}",
        "data=image_folder", f"data.root={data}", f"data.image_size={settings['image_size']}",
        f"epochs={settings['epochs']}", f"batch_size={settings['batch_size']}",
        f"data.num_workers={settings['workers']}", f"device={settings['device']}", f"tracking.uri={uri}",
        "tracking.experiment=benchmark", "trainer.progress=false", f"hydra.run.dir={output}",
    ]  # fmt: skip
    if settings["weights"] == "random":
        command.append("model.pretrained=false")
    if scenario == "frozen":  # features cached, into an empty folder: the cost of computing them is counted
        command += ["strategy.cache_features=true", f"strategy.cache_dir={output / 'features'}"]
    if kind == "tl-fp32":  # the tutorial's arithmetic, so the difference is the framework's overhead
        command += ["trainer.precision=32", "trainer.channels_last=false", "data.cache_images=false"]
    elif kind == "tl-fast":
        command += [
            f"trainer.precision={fast_precision(settings['device'])}", "trainer.channels_last=true",
            "trainer.deterministic=false", "data.cache_images=true", "data.persistent_workers=true",
        ]  # fmt: skip
    return command


def fast_precision(device: str) -> str:
    """bf16 on a CPU that computes it natively (AVX512-BF16 or AMX), else fp32; on a GPU tl's automatic choice."""
    if device != "cpu":
        return "auto"
    return "bf16" if native_bf16_cpu() else "32"  # the rule tl's `auto` applies to the feature pass


def timed(command: list[str], log: Path, env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall seconds and peak resident memory (MiB, the largest process of the tree) of one child run."""
    with log.open("w") as output:
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=log.parent, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        sys.exit(f"error: {' '.join(command[1:3])}... failed (exit {child.returncode}); its output:\n"
                 + log.read_text()[-3000:])  # fmt: skip
    return wall, usage.ru_maxrss / 1024  # KiB on Linux


def tl_run_record(uri: str) -> tuple[list[float], float]:
    """The latest run's epoch end times (when each epoch's metrics were logged) and best val acc."""
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("benchmark")
    (run,) = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
    ends = [metric.timestamp / 1000 for metric in client.get_metric_history(run.info.run_id, "val_acc")]
    return sorted(ends), run.data.metrics["best_val_acc"]


def medians(runs: list[dict]) -> dict:
    """Each figure's median over the repeats (peak memory: the largest)."""
    epochs = [run["epoch_s"] for run in runs if run["epoch_s"] is not None]
    return {
        "wall_s": statistics.median(run["wall_s"] for run in runs),
        "epoch_s": statistics.median(epochs) if epochs else None,
        "peak_mb": max(run["peak_mb"] for run in runs),
        "best_val_acc": statistics.median(run["best_val_acc"] for run in runs),
    }


def median_epoch(epoch_ends: list[float]) -> float | None:
    """The median time between consecutive epoch ends: the first epoch's start-up is not in it."""
    gaps = [later - earlier for earlier, later in itertools.pairwise(epoch_ends)]
    return statistics.median(gaps) if gaps else None


def add_ratios(results: list[dict]) -> None:
    """Each run's ratios to the tutorial loop of its scenario, taken per round (runs of one round ran
    back to back, so a slow spell of the machine cancels out) and summed up by their medians."""
    baselines = {r["scenario"]: r for r in results if r["arm"].startswith("tutorial/")}
    for result in results:
        base = baselines.get(result["scenario"])
        if base is None:
            continue
        rounds = list(zip(base.get("repeats", [base]), result.get("repeats", [result]), strict=True))
        result["speedup_wall"] = statistics.median(b["wall_s"] / r["wall_s"] for b, r in rounds)
        epoch_ratios = [r["epoch_s"] / b["epoch_s"] for b, r in rounds if r["epoch_s"] and b["epoch_s"]]
        if epoch_ratios:
            result["epoch_time_ratio"] = statistics.median(epoch_ratios)
        result["acc_points_vs_tutorial"] = 100 * (result["best_val_acc"] - base["best_val_acc"])


def machine(device: str) -> dict:
    about = {"cpu": cpu_model(), "cpu_features": " ".join(cpu_features()), "cores": os.cpu_count(),
             "torch": torch.__version__, "python": platform.python_version(),
             "cpu_bf16": fast_precision("cpu") == "bf16"}  # fmt: skip
    if device.startswith("cuda"):
        about["gpu"] = torch.cuda.get_device_name()
    return about


def table(report: dict) -> str:
    columns = ["run", "wall", "epoch", "images/s", "peak memory", "best val acc", "speed-up (wall)",
               "epoch time ratio", "acc vs tutorial"]  # fmt: skip
    rows = ["| " + " | ".join(columns) + " |", "|---" + "|---:" * (len(columns) - 1) + "|"]
    for r in report["results"]:
        epoch = f"{r['epoch_s']:.2f} s" if r["epoch_s"] is not None else "-"
        ratio = f"{r['epoch_time_ratio']:.2f}" if "epoch_time_ratio" in r else "-"
        rows.append(
            f"| {r['arm']} | {r['wall_s']:.0f} s | {epoch} | {r['images_per_s']:.0f} | {r['peak_mb']:.0f} MiB "
            f"| {r['best_val_acc']:.4f} | {r.get('speedup_wall', 1):.1f}x | {ratio} "
            f"| {r.get('acc_points_vs_tutorial', 0):+.1f} pt |"
        )
    s, m = report["settings"], report["machine"]
    caption = (f"{s['model']} ({s['weights']} weights), {s['data']}, {s['image_size']} px, batch {s['batch_size']}, "
               f"{s['epochs']} epochs, {s['workers']} workers, {s['device']}, medians of {s['repeat']} run(s) "
               f"per row; {m['cpu']} ({m.get('cpu_features') or 'no AVX'}), {m['cores']} cores"
               + (f", {m['gpu']}" if "gpu" in m else "") + f", torch {m['torch']}")  # fmt: skip
    return caption + "\n\n" + "\n".join(rows)


if __name__ == "__main__":
    main()
