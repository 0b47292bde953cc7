"""Images per second of the served model (`mlflow models serve`) and of `predict.py`, the same model on the
same machine, and predict.py's peak memory on folders of two sizes.

    python benchmarks/serving.py                    # 10,000 generated 500x375 JPEGs; predict.py on 2,000 and all
    python benchmarks/serving.py --images 2000 --sizes 500,2000
    python benchmarks/serving.py --data PATH        # a folder of yours (read only)

The model is EfficientNet-Lite0 (ImageNet weights, shipped with tl) with a new 2-class head at
`--image-size`, logged as a training run logs it (tl/models/logged_model.py) to a temporary store. Then:
- memory: `predict.py` (a child process, its defaults: batch 8, one batch at a time per core) on
  the first N images of the folder, for each N of `--sizes`: its wall time, its own images per second
  (its log line, from the first batch to the last: start-up and model loading excluded), and the peak
  memory of its process tree (sampled every 0.1 s: the sum of the proportional set sizes, which split
  shared pages; predict.py is one process) and the peak resident set of its largest process;
- speed: `mlflow models serve --env-manager local` on loopback, started once; then `--rounds` rounds of
  predict.py on `--served` images followed by `--clients` client threads posting the same images to the
  server, `--request` per request (base64 in a `dataframe_split`). The server's rate is over those
  requests, the clients' encoding included, as they share the machine. Each round's ratio compares two
  runs minutes apart, so that a slow spell of the shared machine hits both; the table gives the median.
  The labels the server answers are checked against predict.py's.
The JSON goes to benchmarks/results/serving-cpu-<images>.json.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import mlflow
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import compare  # noqa: E402
import data_setup  # noqa: E402

from tl.models import logged_model  # noqa: E402
from tl.models.backbones import efficientnet_lite0  # noqa: E402


def log_model(store: str, image_size: int) -> str:
    """EfficientNet-Lite0 with a new 2-class head, logged as a run logs it: its model URI."""
    model = efficientnet_lite0(num_classes=2)
    preprocess = model.preprocess.at_size(image_size)
    mlflow.set_tracking_uri(store)
    with mlflow.start_run():
        example = torch.randn(2, 3, preprocess.input_size, preprocess.input_size)
        info = logged_model.log_model(model.network, example, {"classes": ["a", "b"], "preprocess": asdict(preprocess)})
    return info.model_uri


def tree_memory(pid: int) -> tuple[int, int]:
    """Memory of `pid` and its descendants, in bytes: the sum of their proportional set sizes (shared pages,
    such as those forked DataLoader workers share with predict.py, split among the processes sharing them),
    and the largest resident set of one of them."""
    pss, rss, pending = 0, 0, [pid]
    while pending:
        current = pending.pop()
        try:
            fields = dict(
                line.split(":", 1) for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines()[1:]
            )
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (OSError, ValueError):
            continue
        pss += int(fields["Pss"].split()[0]) * 1024
        rss = max(rss, int(fields["Rss"].split()[0]) * 1024)
        pending += [int(child) for child in children]
    return pss, rss


def run_predict(model_uri: str, store: str, folder: Path, output: Path) -> dict:
    """`python predict.py` on `folder`: wall time and peak memory (sampled)."""
    command = [
        sys.executable,
        str(ROOT / "predict.py"),
        f"model_uri={model_uri}",
        f"input={folder}",
        f"output={output}",
    ]
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=folder.parent, env={**os.environ, "MLFLOW_TRACKING_URI": store},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    peak_sum = peak_one = 0
    while child.poll() is None:
        total, largest = tree_memory(child.pid)
        peak_sum, peak_one = max(peak_sum, total), max(peak_one, largest)
        time.sleep(0.1)
    wall = time.perf_counter() - started
    stderr = child.stderr.read()
    if child.returncode:
        sys.exit(f"predict.py failed: {stderr[-2000:]}")
    # predict.py's own rate, from its first batch to its last: start-up and model loading excluded.
    rate = float(re.search(r"read and predicted \d+ image\(s\) in [\d.]+ s: ([\d.]+) images/s", stderr).group(1))
    return {"images": sum(1 for _ in folder.rglob("*.jpg")), "wall_s": wall, "images_per_s": rate,
            "peak_tree_pss_mb": peak_sum / 2**20, "peak_process_rss_mb": peak_one / 2**20}  # fmt: skip


def subset(data: Path, count: int, scratch: Path) -> Path:
    """A folder of symlinks to the first `count` JPEGs of `data` (sorted), flat."""
    folder = scratch / f"first-{count}"
    folder.mkdir()
    for i, path in enumerate(sorted(data.rglob("*.jpg"))[:count]):
        (folder / f"{i:06}.jpg").symlink_to(path)
    return folder


def serve(model_uri: str, store: str, scratch: Path) -> tuple[subprocess.Popen, str]:
    """`mlflow models serve` on a free loopback port, once it answers /ping."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    bin_dir = str(Path(sys.executable).parent)
    server = subprocess.Popen(
        [str(Path(bin_dir, "mlflow")), "models", "serve", "-m", model_uri, "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=(scratch / "serve.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": store, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    while server.poll() is None:
        try:
            urllib.request.urlopen(f"{url}/ping", timeout=1)
            return server, url
        except OSError:
            time.sleep(0.3)
    sys.exit(f"mlflow models serve did not start: {(scratch / 'serve.log').read_text()[-2000:]}")


def post_all(url: str, paths: list[Path], per_request: int, clients: int) -> tuple[float, dict[str, str]]:
    """Post `paths` in requests of `per_request` from `clients` threads: seconds taken, label per file name."""
    batches = [paths[i : i + per_request] for i in range(0, len(paths), per_request)]
    labels: dict[str, str] = {}
    lock = threading.Lock()

    def post(batch: list[Path]) -> None:
        rows = [[base64.b64encode(path.read_bytes()).decode()] for path in batch]
        body = json.dumps({"dataframe_split": {"columns": ["image"], "data": rows}}).encode()
        request = urllib.request.Request(f"{url}/invocations", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as response:
            answers = json.loads(response.read())["predictions"]
        with lock:
            labels.update({path.name: answer["label"] for path, answer in zip(batch, answers, strict=True)})

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(post, batches))
    return time.perf_counter() - started, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000, help="generated JPEGs")
    parser.add_argument("--size", default="500x375", help="width x height of the generated JPEGs")
    parser.add_argument("--data", help="an existing folder of JPEGs instead (read only)")
    parser.add_argument("--sizes", default="2000,10000", help="folder sizes for predict.py's memory")
    parser.add_argument("--served", type=int, default=2000, help="images per round, for each of the two")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of predict.py then the server, in turn")
    parser.add_argument("--request", type=int, default=8, help="images per request (predict.py's batch)")
    parser.add_argument("--clients", type=int, default=2, help="client threads posting at once")
    parser.add_argument("--image-size", type=int, default=112, help="the model's input size")
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/serving-cpu-<images>.json)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]

    with tempfile.TemporaryDirectory(prefix="tl-serving-") as scratch:
        scratch = Path(scratch)
        if args.data:
            data, described = Path(args.data).resolve(), args.data
        else:
            data, described = scratch / "photos", f"{args.images} generated {args.size} JPEGs"
            width, height = (int(side) for side in args.size.split("x"))
            data_setup.make_photos(data, args.images, width, height)
        store = f"sqlite:///{scratch / 'mlflow.db'}"
        model_uri = log_model(store, args.image_size)

        memory = []
        for size in sizes:
            folder = subset(data, size, scratch)
            memory.append(run_predict(model_uri, store, folder, scratch / f"predictions-{size}.csv"))
            print(f"predict.py, {size} images: {memory[-1]}", file=sys.stderr)

        served = subset(data, args.served, scratch) if args.served not in sizes else scratch / f"first-{args.served}"
        files = sorted(served.iterdir())
        rounds = []
        server, url = serve(model_uri, store, scratch)
        try:
            post_all(url, files[: args.request * args.clients], args.request, args.clients)  # warm-up
            for _ in range(args.rounds):  # in turn, so that a slow spell of the shared machine hits both
                predicted = run_predict(model_uri, store, served, scratch / "predictions-served.csv")
                seconds, labels = post_all(url, files, args.request, args.clients)
                rounds.append({"predict_images_per_s": predicted["images_per_s"],
                               "served_images_per_s": len(files) / seconds})  # fmt: skip
                rounds[-1]["ratio"] = rounds[-1]["predict_images_per_s"] / rounds[-1]["served_images_per_s"]
                print(f"round: {rounds[-1]}", file=sys.stderr)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
        expected = {Path(row["path"]).name: row["prediction"] for row in csv.DictReader(
            (scratch / "predictions-served.csv").open())}  # fmt: skip
        disagree = sum(labels[name] != expected[name] for name in labels)

    report = {
        "machine": compare.machine("cpu"),
        "settings": {"data": described, "model": "efficientnet_lite0 (imagenet), 2-class head",
                     "image_size": args.image_size, "predict_batch_size": 8,
                     "predict_threads": os.cpu_count(), "request": args.request,
                     "clients": args.clients, "images_per_round": len(files)},
        "memory": memory,
        "rounds": rounds,
        "median_predict_images_per_s": statistics.median(r["predict_images_per_s"] for r in rounds),
        "median_served_images_per_s": statistics.median(r["served_images_per_s"] for r in rounds),
        "median_ratio": statistics.median(r["ratio"] for r in rounds),
        "served_labels_differing_from_predict": disagree,
    }  # fmt: skip
    name = Path(args.data).name if args.data else args.images
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"serving-cpu-{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"written to {out}")


def table(report: dict) -> str:
    """The figures as Markdown tables: predict.py's memory, then the rounds."""
    header = "| predict.py on | wall | images/s (predicting) | peak memory, all processes (PSS) | largest (RSS) |"
    lines = [header, "|---|---:|---:|---:|---:|"]
    for run in report["memory"]:
        lines.append(f"| {run['images']:,} images | {run['wall_s']:.1f} s | {run['images_per_s']:.0f} | "
                     f"{run['peak_tree_pss_mb']:.0f} MiB | {run['peak_process_rss_mb']:.0f} MiB |")  # fmt: skip
    lines += ["", "| round | predict.py images/s | served images/s | predict.py / served |", "|---|---:|---:|---:|"]
    for i, r in enumerate(report["rounds"], 1):
        lines.append(f"| {i} | {r['predict_images_per_s']:.0f} | {r['served_images_per_s']:.0f} | {r['ratio']:.2f} |")
    lines.append(f"| median | {report['median_predict_images_per_s']:.0f} | {report['median_served_images_per_s']:.0f} "
                 f"| {report['median_ratio']:.2f} |")  # fmt: skip
    lines.append(
        f"\nlabels of the served model differing from predict.py's: {report['served_labels_differing_from_predict']}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
