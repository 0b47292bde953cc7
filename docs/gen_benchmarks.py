"""The benchmark tables, generated at build time (mkdocs-gen-files) from benchmarks/results/*.json.

Each JSON file the benchmark scripts wrote becomes a section of `benchmark-results.md`, with the anchor
`#<file name without .json>`, so the figures in the docs are the recorded ones, never copied by hand.
The kind of result is told from the JSON's shape, not its name:
- `results` with an `arm` per row: benchmarks/compare.py, tl against the tutorial's own loop;
- `runs` and `tutorial_start`: benchmarks/overhead.py, where a run's time goes;
- `memory` and `rounds`: benchmarks/serving.py, the served model against predict.py;
- `datasets` and `settings.arms`: benchmarks/time_to_accuracy.py, the best model per minute;
- `searches` and `bar`: benchmarks/pruning.py, what pruning saves.
Anything else, or a file of a known kind missing a figure, gets a generic rendering (its scalars, and
its lists of records as tables); a file that is not JSON is named as such. Neither breaks the build.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGE = "benchmark-results.md"


def seconds(value: Any, digits: int = 2) -> str:
    """A duration in seconds, or `-` when it was not measured."""
    return "-" if value is None else f"{value:.{digits}f} s"


def row(cells: list[Any]) -> str:
    """One Markdown table row."""
    return "| " + " | ".join(str(cell).replace("|", "\\|").replace("\n", " ") for cell in cells) + " |"


def table(header: list[str], rows: list[list[Any]], numeric_from: int = 1) -> str:
    """A Markdown table; the columns from `numeric_from` on are right-aligned."""
    align = ["---" if i < numeric_from else "---:" for i in range(len(header))]
    return "\n".join([row(header), "|" + "|".join(align) + "|", *(row(cells) for cells in rows)])


def machine_line(machine: dict) -> str:
    """The machine a result was measured on, as one sentence."""
    features = machine.get("cpu_features")
    parts = [
        f"{machine.get('cpu', 'an unrecorded CPU')}"
        + (f" ({features})" if features else " (vector units not recorded)"),
        f"{machine['cores']} cores" if "cores" in machine else None,
        machine.get("gpu"),
        {True: "native bf16", False: "no native bf16"}.get(machine.get("cpu_bf16")),
        f"Python {machine['python']}" if "python" in machine else None,
        f"torch {machine['torch']}" if "torch" in machine else None,
    ]
    return "Machine: " + ", ".join(part for part in parts if part) + "."


def render_compare(report: dict) -> str:
    """benchmarks/compare.py: each arm's wall time, epoch time, speed and accuracy, with its ratios to the
    tutorial loop of its scenario; with repeats, each round's ratios too."""
    settings, results = report["settings"], report["results"]
    repeat = settings.get("repeat", 1)
    lines = [
        f"{settings['model']} ({settings['weights']} weights), {settings['data']}, {settings['image_size']} px, "
        f"batch {settings['batch_size']}, {settings['epochs']} epochs, {settings['workers']} DataLoader workers, "
        f"{settings['device']}; "
        + ("one run per row. " if repeat == 1 else f"medians of {repeat} runs per row. ")
        + machine_line(report.get("machine", {})),
        "",
    ]
    rows = []
    for r in results:
        rows.append([
            r["arm"],
            f"{r['wall_s']:.0f} s",
            seconds(r.get("epoch_s")),
            f"{r['images_per_s']:.0f}",
            f"{r['peak_mb']:.0f} MiB",
            f"{r['best_val_acc']:.4f}",
            f"{r.get('speedup_wall', 1):.1f}x",
            f"{r['epoch_time_ratio']:.2f}" if r.get("epoch_time_ratio") is not None else "-",
            f"{r.get('acc_points_vs_tutorial', 0):+.1f} pt",
        ])  # fmt: skip
    header = ["run", "wall", "epoch", "images/s", "peak memory", "best val acc", "speed-up (wall)",
              "epoch time ratio", "acc vs tutorial"]  # fmt: skip
    lines.append(table(header, rows))
    lines += [
        "",
        "*wall*: the whole command; *epoch*: the median time between two epochs' ends; *images/s*: training "
        "images per second of wall time; *peak memory*: the largest process; *speed-up* and *epoch time ratio*: "
        "against the tutorial loop of the same scenario, taken within each round and summed up by their median.",
    ]
    rounds = repeat_rounds(results)
    if rounds:
        lines += ["", "Each round's ratios to the tutorial loop (the runs of a round ran back to back):", "", rounds]
    return "\n".join(lines)


def repeat_rounds(results: list[dict]) -> str:
    """A table of each repeated arm's epoch time ratio and wall speed-up in each round, or nothing."""
    tutorials = {r["scenario"]: r for r in results if r["arm"].startswith("tutorial/")}
    count = min((len(r.get("repeats", [])) for r in results), default=0)
    if count < 2:
        return ""
    rows = []
    for r in results:
        base = tutorials.get(r["scenario"])
        if base is None or base is r:
            continue
        pairs = list(zip(base["repeats"], r["repeats"], strict=False))[:count]  # the rounds every arm ran
        epoch = [b2["epoch_s"] and b1["epoch_s"] and b2["epoch_s"] / b1["epoch_s"] for b1, b2 in pairs]
        wall = [b1["wall_s"] / b2["wall_s"] for b1, b2 in pairs]
        cells = [f"{e:.2f} / {w:.2f}x" if e else f"- / {w:.2f}x" for e, w in zip(epoch, wall, strict=True)]
        known = [e for e in epoch if e]
        median = f"{statistics.median(known):.2f} / {statistics.median(wall):.2f}x" if known else "-"
        rows.append([r["arm"], *cells, median])
    header = ["run (epoch time ratio / speed-up)", *(f"round {i}" for i in range(1, count + 1)), "median"]
    return table(header, rows) if rows else ""


def render_overhead(report: dict) -> str:
    """benchmarks/overhead.py: each run split into its phases, against the tutorial's start and loop."""
    settings, loop = report["settings"], report.get("tutorial_run")
    phases = ["imports_s", "data_set_up_s", "features_s", "run_start_s", "epochs_s", "wrap_up_s", "whole_s"]
    rows = []
    for run in report["runs"]:
        epochs = run.get("epochs")
        name = run["run"] + (f" ({epochs} epoch{'s' * (epochs != 1)})" if epochs else "")
        speedup = f"{loop['whole_s'] / run['whole_s']:.1f}x" if loop and run.get("strategy") == "frozen" else "-"
        rows.append([name, *(seconds(run.get(key)) for key in phases), speedup])
    start = report["tutorial_start"]
    rows.append([start["run"], seconds(start.get("imports_s")), seconds(start.get("data_set_up_s")), *["-"] * 6])
    if loop:
        before = f"{seconds(loop.get('before_epochs_s'))} (all before epoch 1)"
        ends = [seconds(loop.get("epochs_s")), seconds(loop.get("wrap_up_s")), seconds(loop["whole_s"])]
        rows.append([loop["run"], before, "-", "-", "-", *ends, "1.0x"])
    header = ["run", "imports", "data set-up", "features", "run start", "epochs", "wrap-up", "whole",
              "speed-up vs tutorial loop"]  # fmt: skip
    lines = [
        f"{settings['data']}; {settings['model']} ({settings['weights']} weights), {settings['image_size']} px, "
        f"batch {settings['batch_size']}, {settings['workers']} DataLoader workers, {settings['device']}. "
        + machine_line(report.get("machine", {})),
        "",
        table(header, rows),
        "",
        "*first*: an empty `TL_CACHE_DIR` and a new MLflow store; *repeat*: both as the first run left them. "
        "A repeat `frozen` run's data set-up also holds the model's build and the cached features' load, a "
        "`finetune` run's the MLflow store's opening and the run's start (no log line separates them).",
    ]
    bars = report.get("bars") or {}
    if {"data_set_up_repeat_s", "tutorial_to_first_batch_s"} <= bars.keys():
        lines += [
            "",
            f"- Data set-up of the repeat `frozen` run: {seconds(bars['data_set_up_repeat_s'])}, against "
            f"{seconds(bars['tutorial_to_first_batch_s'])} for the tutorial's `ImageFolder` + `DataLoader` "
            f"to its first batch.",
        ]
    if {"wrap_up_first_s", "wrap_up_repeat_s"} <= bars.keys():
        lines.append(
            f"- Wrap-up: {seconds(bars['wrap_up_first_s'])} (first run), {seconds(bars['wrap_up_repeat_s'])} "
            "(repeat run)."
        )
    if {"speedup_first", "speedup_repeat"} <= bars.keys():
        lines.append(
            f"- The whole `frozen` command against the tutorial loop: {bars['speedup_first']:.1f}x faster on a "
            f"first run, {bars['speedup_repeat']:.1f}x on a repeat run."
        )
    return "\n".join(lines)


def render_serving(report: dict) -> str:
    """benchmarks/serving.py: predict.py's speed and memory by folder size, then the served model's rounds."""
    settings = report.get("settings", {})
    memory = [
        [f"{run['images']:,} images", seconds(run["wall_s"], 1), f"{run['images_per_s']:.0f}",
         f"{run['peak_tree_pss_mb']:.0f} MiB", f"{run['peak_process_rss_mb']:.0f} MiB"]
        for run in report["memory"]
    ]  # fmt: skip
    rounds = [
        [str(i), f"{r['predict_images_per_s']:.0f}", f"{r['served_images_per_s']:.0f}", f"{r['ratio']:.2f}"]
        for i, r in enumerate(report["rounds"], 1)
    ]
    rounds.append(["median", f"{report['median_predict_images_per_s']:.0f}",
                   f"{report['median_served_images_per_s']:.0f}", f"{report['median_ratio']:.2f}"])  # fmt: skip
    lines = [
        f"{settings.get('data', 'images')}; {settings.get('model', 'the model')} at {settings.get('image_size')} px; "
        f"predict.py: batch {settings.get('predict_batch_size')}, {settings.get('predict_threads')} batches at once; "
        f"server: {settings.get('clients')} client threads, {settings.get('request')} images per request. "
        + machine_line(report.get("machine", {})),
        "",
        table(MEMORY_HEADER, memory),
        "",
        table(["round", "predict.py images/s", "`mlflow models serve` images/s", "predict.py / served"], rounds),
        "",
        f"Labels of the served model that differ from predict.py's: "
        f"{report.get('served_labels_differing_from_predict', 'not recorded')}.",
    ]
    return "\n".join(lines)


def render_time_to_accuracy(report: dict) -> str:
    """benchmarks/time_to_accuracy.py: per dataset and arm, the mean best accuracy, its interval and the
    wall time, and whether the arm meets issue 26's bar."""
    settings = report["settings"]
    rows = []
    for dataset, arms in report["datasets"].items():
        for arm, result in arms.items():
            if arm == "bar":
                continue
            interval = "{:.3f}-{:.3f}".format(*result["interval"]) if result.get("interval") else "-"
            verdict = {True: "met", False: "missed"}.get(result.get("meets_bar"), "-")
            overrides = settings["arms"].get(arm, "")
            rows.append([dataset, arm, overrides, f"{result['best_val_acc']:.3f}", interval,
                         f"{result['wall_s']:.0f} s", len(result["runs"]), verdict])  # fmt: skip
    header = ["dataset", "arm", "settings", "best val acc (mean)", "95% interval", "wall (mean)", "seeds", "bar"]
    return "\n".join([
        f"{settings['model']}, {settings['train_per_class']} training and {settings['val_per_class']} validation "
        f"images per class, {settings['image_size']} px; the tutorial's loop: {settings['tutorial_epochs']} epochs, "
        f"batch {settings['batch_size_tutorial']}. " + machine_line(report.get("machine", {})),
        "",
        table(header, rows, numeric_from=3),
        "",
        "*bar*: at least the better tutorial scenario's mean best accuracy less 1 point, in at most a tenth of the "
        "tutorial fine-tuning's wall time (whole processes).",
    ])  # fmt: skip


def render_pruning(report: dict) -> str:
    """benchmarks/pruning.py: the same search with and without the pruner."""
    settings, bar = report["settings"], report["bar"]
    rows = [[name, f"{s['wall_s']:.0f} s", s["trials"], s["pruned"], f"{s['best_val_acc']:.3f}",
             "{:.3f}-{:.3f}".format(*s["interval"])] for name, s in report["searches"].items()]  # fmt: skip
    return "\n".join([
        f"`{settings['dataset']}`, {settings['trials']} trials of {settings['epochs']} epochs, "
        f"{settings['image_size']} px. " + machine_line(report.get("machine", {})),
        "",
        table(["search", "wall", "trials", "pruned", "best val acc", "its 95% interval"], rows),
        "",
        f"Pruned / unpruned wall time: {bar['time_ratio']:.2f}; at most half: {bar['at_most_half_the_time']}; "
        f"the pruned best inside the unpruned best's interval: {bar['best_within_interval']}.",
    ])  # fmt: skip


def scalar(value: Any) -> str:
    """A JSON value for a table cell: floats to 4 significant digits, containers as compact JSON."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return "`" + json.dumps(value, separators=(",", ":"))[:120] + "`"
    return "-" if value is None else str(value)


def render_generic(data: Any) -> str:
    """Any JSON: its scalars (nested keys dotted) as one table, each list of records as a table of its own."""
    values: list[list[str]] = []
    records: list[tuple[str, list[dict]]] = []

    def walk(node: Any, key: str) -> None:
        if isinstance(node, dict):
            for name, child in node.items():
                walk(child, f"{key}.{name}" if key else str(name))
        elif isinstance(node, list) and node and all(isinstance(item, dict) for item in node):
            records.append((key or "(top level)", node))
        else:
            values.append([f"`{key or '(top level)'}`", scalar(node)])

    walk(data, "")
    lines = []
    if values:
        lines.append(table(["key", "value"], values, numeric_from=2))
    for key, items in records:
        columns = list(dict.fromkeys(name for item in items for name in item))
        lines += ["", f"`{key}`:", "", table(columns, [[scalar(item.get(c)) for c in columns] for item in items])]
    return "\n".join(lines) if lines else "(empty)"


KINDS: list[tuple[str, str, Callable[[dict], bool], Callable[[dict], str]]] = [
    ("compare", "tl against the tutorial's own loop (`benchmarks/compare.py`)",
     lambda d: isinstance(d.get("results"), list) and all("arm" in r for r in d["results"]), render_compare),
    ("overhead", "Where a run's time goes (`benchmarks/overhead.py`)",
     lambda d: isinstance(d.get("runs"), list) and "tutorial_start" in d, render_overhead),
    ("serving", "The served model against predict.py (`benchmarks/serving.py`)",
     lambda d: "memory" in d and "rounds" in d, render_serving),
    ("time_to_accuracy", "The best model per minute (`benchmarks/time_to_accuracy.py`)",
     lambda d: isinstance(d.get("datasets"), dict) and "arms" in d.get("settings", {}), render_time_to_accuracy),
    ("pruning", "What pruning saves (`benchmarks/pruning.py`)",
     lambda d: "searches" in d and "bar" in d, render_pruning),
]  # fmt: skip
OTHER = "Other results"
MEMORY_HEADER = ["predict.py on", "wall", "images/s (predicting)", "peak memory, all processes (PSS)",
                 "largest process (RSS)"]  # fmt: skip


def section(path: Path) -> tuple[str, str]:
    """The kind's title and the Markdown section for one results file."""
    anchor = re.sub(r"[^a-z0-9_-]+", "-", path.stem.lower()).strip("-") or "result"
    heading = f"### `{path.name}` {{#{anchor}}}\n\n"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as error:
        return OTHER, heading + f"Not readable as JSON: {error}."
    if isinstance(data, dict):
        for _, title, matches, render in KINDS:
            try:
                if matches(data):
                    return title, heading + render(data)
            except (KeyError, TypeError, ValueError, ZeroDivisionError, AttributeError):
                break  # a figure is missing or of another type: the generic rendering shows what is there
    return OTHER, heading + render_generic(data)


def page(results: Path = RESULTS) -> str:
    """The whole page: the results grouped by kind, each file a section."""
    grouped: dict[str, list[str]] = {title: [] for _, title, _, _ in KINDS}
    grouped[OTHER] = []
    for path in sorted(results.glob("*.json")):
        title, text = section(path)
        grouped[title].append(text)
    parts = [
        "# Benchmark results\n",
        "Generated from the JSON files in `benchmarks/results/` when this site is built: the benchmark scripts "
        "write them, and the tables here are rendered from them. [Speed](performance.md) says how to run each "
        "benchmark and what it measures. Each result names the machine it ran on: compare ratios within one "
        "result rather than absolute times across machines.\n",
    ]
    if not any(grouped.values()):
        parts.append("No results are recorded yet.\n")
    for title, sections in grouped.items():
        if sections:
            parts.append(f"## {title}\n")
            parts += [text + "\n" for text in sections]
    return "\n".join(parts)


if __name__ == "__main__":
    print(page())
else:  # run by mkdocs-gen-files
    import mkdocs_gen_files

    with mkdocs_gen_files.open(PAGE, "w") as file:
        file.write(page())
