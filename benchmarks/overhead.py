"""Where the time of a `python run.py` command goes, phase by phase, against the tutorial's own loop.

    python benchmarks/overhead.py                          # 1,000 generated 400x300 JPEGs, with the tutorial's run
    python benchmarks/overhead.py --images 10000 --no-tutorial-run --finetune-epochs 0
    python benchmarks/overhead.py --data PATH              # a folder of yours in the ImageFolder layout (read only)

Each run is a child process, timed from the outside (its start and exit) and from the inside (the
timestamps of its log lines). `python run.py +experiment=tutorial_frozen` with the feature cache on,
run twice: "first" with an empty TL_CACHE_DIR and a new MLflow store, "repeat" with both as the first
left them (the manifest and the features are found); the same for `tutorial_finetune` at 1 epoch.
A run's phases, each from one log line (or the process's start or exit) to the next:

    imports     process start -> "starting: config checked, libraries loaded" (run.py)
    data set-up -> "computing the backbone's features" (frozen, first run); on a repeat run -> "loaded N train
                and N val feature vectors" (it also holds the model's build and the features' load: no line
                separates them); finetune -> "MLflow run ..." (it also holds opening the store and starting the run)
    features    -> "cached N train and N val feature vectors" (frozen, first run)
    run start   -> the first epoch's start: the MLflow run started, the config and provenance logged
    epochs      -> the last "epoch k/N" line; the first epoch's start is its line's time minus its seconds
                (printed to 0.1 s)
    wrap-up     -> process exit: evaluation, checkpoint and model logged, the run ended

Against them: the tutorial's start (torchvision's ImageFolder + DataLoader to the first batch, in a
child process, imports timed apart; median of 3) and, unless --no-tutorial-run, the tutorial's whole
`frozen` run (benchmarks/tutorial_loop.py, as benchmarks/compare.py runs it). Prints a table and writes
it as JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import NamedTuple
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its neighbours, whichever way this file is loaded
import compare  # noqa: E402
import data_setup  # noqa: E402

ROOT = compare.ROOT
TUTORIAL_STARTS = 3  # the tutorial's start is short and noisy: the median of this many

# Hydra's log format: [2026-11-29 13:50:43,781][tl.data.manifest][INFO] - checking 24 new or changed file(s) in ...
LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[([^\]]+)\]\[(\w+)\] - (.*)$")
EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+) .*\| (\d+(?:\.\d+)?)s, ")
CHECKED_LINE = re.compile(r"^checked (\d+) file\(s\) in (\d+(?:\.\d+)?) s")
PHASES = ("imports", "data set-up", "features", "run start", "epochs", "wrap-up")

# The tutorial's loaders (as benchmarks/tutorial_loop.py builds them) to their first batch, in a child
# process that imports torch and torchvision before the clock starts. Code, not a file: nothing of tl
# or of this benchmark is imported in it.
TUTORIAL_START = """
import json, os, sys, time
import torch
from torchvision import datasets, transforms
imported = time.time()
a = json.loads(sys.argv[1])
started = time.perf_counter()
interpolation = transforms.InterpolationMode(a["interpolation"])
data_transforms = {
    "train": transforms.Compose([
        transforms.RandomResizedCrop(a["input_size"], interpolation=interpolation),
        transforms.RandomHorizontalFlip(), transforms.ToTensor(), transforms.Normalize(a["mean"], a["std"]),
    ]),
    "val": transforms.Compose([
        transforms.Resize(a["resize_size"], interpolation=interpolation), transforms.CenterCrop(a["input_size"]),
        transforms.ToTensor(), transforms.Normalize(a["mean"], a["std"]),
    ]),
}
image_datasets = {x: datasets.ImageFolder(os.path.join(a["data"], x), data_transforms[x]) for x in ["train", "val"]}
dataloaders = {
    x: torch.utils.data.DataLoader(image_datasets[x], batch_size=a["batch_size"], shuffle=True,
                                   num_workers=a["workers"])
    for x in ["train", "val"]
}
next(iter(dataloaders["train"]))
print(json.dumps({"imported": imported, "first_batch_s": time.perf_counter() - started}))
"""


class LogLine(NamedTuple):
    time: float  # seconds since the epoch, as time.time()
    logger: str
    message: str


def parse_log(text: str) -> list[LogLine]:
    """The lines of a run's output in Hydra's log format; the rest (warnings, MLflow's own) is skipped."""
    lines = []
    for line in text.splitlines():
        if match := LOG_LINE.match(line):
            stamp, logger, _, message = match.groups()
            lines.append(LogLine(datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp(), logger, message))
    return lines


def phases(lines: list[LogLine], started: float, exited: float) -> dict:
    """Seconds per phase (see the module docstring) of a run that started and exited at these times.

    `features_s` is None where the features were loaded (their load is in the data set-up) or not used."""

    def first(logger: str, prefix: str) -> float | None:
        return next((line.time for line in lines if line.logger == logger and line.message.startswith(prefix)), None)

    ready = first("tl", "starting:")
    epochs = [(line.time, float(m[3])) for line in lines if line.logger == "tl.training.trainer"
              and (m := EPOCH_LINE.match(line.message))]  # fmt: skip
    if ready is None or not epochs:
        missing = "the 'starting:' line (run.py)" if ready is None else "an 'epoch k/N' line"
        raise ValueError(f"the run's output has no {missing}")
    computing = first("tl.training.features", "computing the backbone's features")
    features_end = first("tl.training.features", "cached ") or first("tl.training.features", "loaded ")
    run_line = first("tl.tracking.tracker", "MLflow run ")
    epochs_start = epochs[0][0] - epochs[0][1]  # epoch 1 is logged at its end
    data_end = computing or features_end or run_line or epochs_start
    run_start = features_end or data_end
    checked = [CHECKED_LINE.match(line.message) for line in lines if line.logger == "tl.data.manifest"]
    checked = [match for match in checked if match]
    return {
        "imports_s": ready - started,
        "data_set_up_s": data_end - ready,
        "features_s": features_end - computing if computing and features_end else None,
        "run_start_s": epochs_start - run_start,
        "epochs_s": epochs[-1][0] - epochs_start,
        "wrap_up_s": exited - epochs[-1][0],
        "whole_s": exited - started,
        "features": "computed" if computing else "loaded" if features_end else None,
        "checked_files": sum(int(match[1]) for match in checked),
    }


def tl_command(strategy: str, epochs: int, data: Path, settings: dict, folder: Path) -> list[str]:
    """`python run.py` with the tutorial's recipe for `strategy`, on `data`, output in `folder`."""
    command = [
        sys.executable, str(ROOT / "run.py"), f"+experiment=tutorial_{strategy}", f"model={settings['model']}",
        "data=image_folder", f"data.root={data}", f"data.image_size={settings['image_size']}", f"epochs={epochs}",
        f"batch_size={settings['batch_size']}", f"data.num_workers={settings['workers']}",
        f"device={settings['device']}", "tracking.experiment=benchmark", "trainer.progress=false",
        f"hydra.run.dir={folder}",
    ]  # fmt: skip
    if settings["weights"] == "random":
        command.append("model.pretrained=false")
    if strategy == "frozen":  # the preset trains on augmented images as the tutorial does; tl's default caches
        command.append("strategy.cache_features=true")
    return command


def tl_runs(strategy: str, epochs: int, data: Path, settings: dict, scratch: Path) -> list[dict]:
    """A first and a repeat run of one configuration, sharing one TL_CACHE_DIR and one MLflow store."""
    home = scratch / f"tl-{strategy}"
    home.mkdir()
    # The children inherit this process's environment: the cache and the store are set there.
    where = {"TL_CACHE_DIR": str(home / "cache"), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
    runs = []
    for attempt in ("first", "repeat"):
        print(f"running tl {strategy}, {attempt} run ...", file=sys.stderr, flush=True)
        folder = home / attempt
        folder.mkdir()
        log = folder / "output.log"
        with mock.patch.dict("os.environ", where):
            started = time.time()
            wall, peak = compare.timed(tl_command(strategy, epochs, data, settings, folder), log)
        try:
            measured = phases(parse_log(log.read_text()), started, started + wall)
        except ValueError as error:
            sys.exit(f"error: {error}; its output:\n{log.read_text()[-3000:]}")
        runs.append({"run": f"tl {strategy}, {attempt}", "strategy": strategy, "attempt": attempt, "epochs": epochs,
                     **measured, "peak_mb": peak})  # fmt: skip
    return runs


def tutorial_start(data: Path, settings: dict) -> dict:
    """The tutorial's ImageFolder + DataLoader to the first batch, imports apart: medians of a few children."""
    pre = compare.preprocess(settings["model"], settings["image_size"])
    arguments = {"data": str(data), "input_size": pre.input_size, "resize_size": pre.resize_size,
                 "interpolation": pre.interpolation, "mean": list(pre.mean), "std": list(pre.std),
                 "batch_size": settings["batch_size"], "workers": settings["workers"]}  # fmt: skip
    starts = []
    for _ in range(TUTORIAL_STARTS):
        started = time.time()
        child = subprocess.run([sys.executable, "-c", TUTORIAL_START, json.dumps(arguments)], capture_output=True,
                               text=True, check=False)  # fmt: skip
        if child.returncode != 0:
            sys.exit(f"error: the tutorial's loaders failed (exit {child.returncode}):\n{child.stderr[-3000:]}")
        record = json.loads(child.stdout.splitlines()[-1])
        starts.append({"imports_s": record["imported"] - started, "data_set_up_s": record["first_batch_s"]})
    return {"run": "tutorial: ImageFolder + DataLoader to first batch",
            **{key: statistics.median(start[key] for start in starts) for key in starts[0]}}  # fmt: skip


def tutorial_run(data: Path, settings: dict, scratch: Path) -> dict:
    """The tutorial's whole `frozen` run (benchmarks/tutorial_loop.py), as benchmarks/compare.py runs it."""
    print("running the tutorial's loop, frozen ...", file=sys.stderr, flush=True)
    folder = scratch / "tutorial"
    folder.mkdir()
    weights = compare.prepare_weights(settings["model"], settings["weights"], scratch)
    command = compare.tutorial_command("frozen", data, settings, weights, folder / "result.json")
    started = time.time()
    wall, peak = compare.timed(command, folder / "output.log")
    ends = json.loads((folder / "result.json").read_text())["epoch_ends"]
    return {"run": "tutorial loop, frozen (whole run)", **tutorial_phases(ends, started, started + wall),
            "peak_mb": peak}  # fmt: skip


def tutorial_phases(epoch_ends: list[float], started: float, exited: float) -> dict:
    """The tutorial loop's epochs (it records each epoch's end: the first one's start is taken one median
    epoch before its end), what came before them (imports, data, model) and after."""
    whole = exited - started
    if len(epoch_ends) < 2:
        return {"whole_s": whole}
    epochs = (epoch_ends[-1] - epoch_ends[0]) * len(epoch_ends) / (len(epoch_ends) - 1)
    wrap_up = exited - epoch_ends[-1]
    return {"before_epochs_s": whole - epochs - wrap_up, "epochs_s": epochs, "wrap_up_s": wrap_up, "whole_s": whole}


def bars(report: dict) -> dict:
    """The figures docs/performance.md holds tl to: data set-up and wrap-up on a repeat frozen run,
    and the frozen whole command's speed-up against the tutorial loop."""
    runs = {run["run"]: run for run in report["runs"]}
    first, repeat = runs.get("tl frozen, first"), runs.get("tl frozen, repeat")
    start, loop = report["tutorial_start"], report.get("tutorial_run")
    figures = {
        "data_set_up_repeat_s": repeat["data_set_up_s"],
        "tutorial_to_first_batch_s": start["data_set_up_s"],
        "data_set_up_minus_tutorial_s": repeat["data_set_up_s"] - start["data_set_up_s"],
        "wrap_up_first_s": first["wrap_up_s"],
        "wrap_up_repeat_s": repeat["wrap_up_s"],
    }
    if loop:
        figures["speedup_first"] = loop["whole_s"] / first["whole_s"]
        figures["speedup_repeat"] = loop["whole_s"] / repeat["whole_s"]
    return figures


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def table(report: dict) -> str:
    """The runs' phases as a markdown table, with a caption naming the data, settings and machine."""
    columns = ["run", *PHASES, "whole", "speed-up vs tutorial loop"]
    rows = ["| " + " | ".join(columns) + " |", "|---" + "|---:" * (len(columns) - 1) + "|"]
    loop = report.get("tutorial_run")
    for run in report["runs"]:
        cells = [run[key] for key in ("imports_s", "data_set_up_s", "features_s", "run_start_s", "epochs_s",
                                      "wrap_up_s", "whole_s")]  # fmt: skip
        speedup = f"{loop['whole_s'] / run['whole_s']:.1f}x" if loop and run["strategy"] == "frozen" else "-"
        name = run["run"] + (f" ({run['epochs']} epoch{'s' * (run['epochs'] > 1)})" if run["epochs"] else "")
        rows.append(f"| {name} | " + " | ".join(map(seconds, cells)) + f" | {speedup} |")
    start = report["tutorial_start"]
    rows.append(f"| {start['run']} | {seconds(start['imports_s'])} | {seconds(start['data_set_up_s'])} "
                + "| - " * 5 + "| - |")  # fmt: skip
    if loop:
        before = f"{seconds(loop.get('before_epochs_s'))} (all before epoch 1)"
        rows.append(f"| {loop['run']} | {before} | - | - | - | {seconds(loop.get('epochs_s'))} "
                    f"| {seconds(loop.get('wrap_up_s'))} | {seconds(loop['whole_s'])} | 1.0x |")  # fmt: skip
    s, m = report["settings"], report["machine"]
    caption = (f"{s['data']}; {s['model']} ({s['weights']} weights), {s['image_size']} px, batch {s['batch_size']}, "
               f"{s['workers']} workers, {s['device']}; {m['cpu']} ({m.get('cpu_features') or 'no AVX'}), "
               f"{m['cores']} cores, torch {m['torch']}")  # fmt: skip
    notes = ("first: an empty TL_CACHE_DIR and a new MLflow store; repeat: both as the first run left them. "
             "A repeat frozen run's data set-up also holds the model's build and the cached features' load, a "
             "finetune run's the MLflow store's opening and the run's start (no log line separates them). Epochs "
             "to +-0.05 s (epoch 1's seconds are logged to 0.1 s).")  # fmt: skip
    return caption + "\n\n" + "\n".join(rows) + "\n\n" + notes


def bars_text(figures: dict) -> str:
    lines = [
        f"- data set-up, repeat frozen run: {figures['data_set_up_repeat_s']:.2f} s, against "
        f"{figures['tutorial_to_first_batch_s']:.2f} s for the tutorial's ImageFolder + DataLoader to its first "
        f"batch: {figures['data_set_up_minus_tutorial_s']:+.2f} s",
        f"- wrap-up: {figures['wrap_up_first_s']:.2f} s (first run), {figures['wrap_up_repeat_s']:.2f} s (repeat)",
    ]
    if "speedup_first" in figures:
        first, repeat = figures["speedup_first"], figures["speedup_repeat"]
        lines.append(f"- speed-up of the frozen whole command against the tutorial loop: {first:.1f}x (first run), "
                     f"{repeat:.1f}x (repeat)")  # fmt: skip
    return "\n".join(lines)


def prepare_data(args: argparse.Namespace, scratch: Path) -> tuple[Path, str]:
    """The folder to run on and how the caption names it: a given one, or generated photos."""
    if args.data:
        root = Path(args.data).resolve()
        return root, str(root)
    root = scratch / "photos"
    width, height = (int(side) for side in args.size.split("x"))
    started = time.perf_counter()
    data_setup.make_photos(root, args.images, width, height)
    print(f"made {args.images} {args.size} JPEGs in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return root, f"{args.images} generated {args.size} JPEGs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="generated JPEGs, 4 in 5 for training, 2 classes")
    parser.add_argument("--size", default="400x300", help="width x height of the generated JPEGs")
    parser.add_argument("--data", help="an existing folder with train/<class>/ and val/<class>/ instead")
    parser.add_argument("--epochs", type=int, default=25, help="of the frozen runs (the tutorial's 25)")
    parser.add_argument("--finetune-epochs", type=int, default=1, help="of the finetune runs; 0: none")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--model", choices=["resnet18", "efficientnet_lite0"], default="resnet18")
    parser.add_argument("--weights", choices=["imagenet", "random"], default="random",
                        help="random: timings only, offline (resnet18 needs a download for imagenet)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers (the tutorial's 4)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, or auto")
    parser.add_argument("--no-tutorial-run", action="store_true", help="skip the tutorial loop's whole run "
                        "(minutes: it runs the backbone over every image every epoch)")  # fmt: skip
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/overhead-phases-<device>-<model>-"
                        "<images>.json)")  # fmt: skip
    args = parser.parse_args()
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")

    with tempfile.TemporaryDirectory(prefix="tl-overhead-") as scratch:
        scratch = Path(scratch)
        data, described = prepare_data(args, scratch)
        train = sum(1 for path in (data / "train").rglob("*") if path.is_file())
        val = sum(1 for path in (data / "val").rglob("*") if path.is_file())
        settings = {"data": f"{described} ({train} train, {val} val)", "model": args.model, "weights": args.weights,
                    "epochs": args.epochs, "finetune_epochs": args.finetune_epochs, "image_size": args.image_size,
                    "batch_size": 4, "workers": args.workers, "device": device}  # fmt: skip
        report = {"machine": compare.machine(device), "settings": settings, "runs": []}
        report["tutorial_start"] = tutorial_start(data, settings)
        report["runs"] += tl_runs("frozen", args.epochs, data, settings, scratch)
        if args.finetune_epochs:
            report["runs"] += tl_runs("finetune", args.finetune_epochs, data, settings, scratch)
        if not args.no_tutorial_run:
            report["tutorial_run"] = tutorial_run(data, settings, scratch)
    report["bars"] = bars(report)
    name = Path(args.data).name if args.data else str(args.images)
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"overhead-phases-{device}-{args.model}-{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report) + "\n\n" + bars_text(report["bars"]))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
