"""How long tl's data set-up takes before the first batch, on a first and a repeat run, against the
PyTorch tutorial's ImageFolder + DataLoader.

    python benchmarks/data_setup.py                  # 2,000 photo-like 400x300 JPEGs, made in a temp folder
    python benchmarks/data_setup.py --images 10000
    python benchmarks/data_setup.py --data PATH      # a folder of yours in the ImageFolder layout (not modified)

Every arm runs in this process (imports excluded), with the files in the page cache, on the same
train transform, batch size and DataLoader workers:
- `tutorial`: ImageFolder for train/ and val/, their DataLoaders (train shuffled), the first batch;
- `tl first run`: `ImageFolderData` with an empty manifest folder, `fingerprint()`, `loaders()`,
  the first batch: every image checked (decoded) and hashed once;
- `tl repeat run`: the same with the manifest the first run left: the files are listed and stat'ed;
- `tl, no manifest`: `data.manifest_dir=null`, every image checked and hashed on every run.
Then one pass over the training loader (no model): the tutorial's decodes every image, as every epoch
of its loop does; tl's first fills its in-memory image cache and the second reads from it.
The table gives medians over `--repeat` rounds, in which the arms take turns.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tl.data.folders import ImageFolderData  # noqa: E402
from tl.models.backbones import Preprocess  # noqa: E402

PREPROCESS = Preprocess(224, 256, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def make_photos(root: Path, count: int, width: int, height: int) -> None:
    """`count` JPEGs of smooth random colour with fine noise, 4 in 5 in train/, two classes."""

    def make(i: int) -> None:
        rng = np.random.default_rng(i)
        coarse = Image.fromarray(rng.integers(0, 256, (height // 25, width // 25, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC)).astype(np.int16)
        pixels = np.clip(smooth + rng.integers(-12, 12, smooth.shape), 0, 255).astype(np.uint8)
        folder = root / ("train" if i % 5 else "val") / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i:06}.jpg", quality=90)

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(make, range(count)))
    # Dated back, as photos copied in earlier would be: a manifest keeps no record of a file written in
    # the last seconds, which may still change within its timestamp's tick (tl/data/manifest.py).
    an_hour_ago = time.time() - 3600
    for path in root.rglob("*.jpg"):
        os.utime(path, (an_hour_ago, an_hour_ago))


def train_transform() -> v2.Compose:
    return v2.Compose(
        [
            v2.RandomResizedCrop(PREPROCESS.input_size),
            v2.RandomHorizontalFlip(),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(PREPROCESS.mean, PREPROCESS.std),
        ]
    )


def tutorial(root: Path, batch_size: int, workers: int) -> dict[str, float]:
    started = time.perf_counter()
    image_datasets = {split: datasets.ImageFolder(root / split, train_transform()) for split in ("train", "val")}
    loaders = {
        split: DataLoader(image_datasets[split], batch_size=batch_size, shuffle=split == "train", num_workers=workers)
        for split in image_datasets
    }
    next(iter(loaders["train"]))
    times = {"first batch": time.perf_counter() - started}
    times["epoch 1"], times["epoch 2"] = epoch(loaders["train"]), epoch(loaders["train"])
    return times


def tl(root: Path, batch_size: int, workers: int, manifest_dir: Path | None) -> dict[str, float]:
    started = time.perf_counter()
    data = ImageFolderData(root, batch_size=batch_size, num_workers=workers, manifest_dir=manifest_dir)
    set_up = time.perf_counter()
    data.fingerprint()
    fingerprinted = time.perf_counter()
    train, _ = data.loaders(PREPROCESS, seed=0)
    next(iter(train))
    times = {"first batch": time.perf_counter() - started, "set-up": set_up - started}
    times["fingerprint"] = fingerprinted - set_up
    times["epoch 1"], times["epoch 2"] = epoch(train), epoch(train)
    return times


def epoch(loader: DataLoader) -> float:
    started = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - started


def median_times(arms: dict[str, Callable[[], dict[str, float]]], repeat: int) -> dict[str, dict[str, float]]:
    """Each arm's median times over `repeat` rounds, the arms taking turns within each round, so that
    a slow spell of a shared machine hits them alike."""
    rounds = {name: [] for name in arms}
    for _ in range(repeat):
        for name, run in arms.items():
            rounds[name].append(run())
            gc.collect()  # the previous arm's image cache is unmapped before the next one runs
    return {name: {key: statistics.median(t[key] for t in times) for key in times[0]} for name, times in rounds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", default="400x300", help="width x height of the generated JPEGs")
    parser.add_argument("--data", type=Path, help="an existing folder instead of generated images")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (data=image_folder's default)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        root = args.data
        if root is None:
            root = Path(scratch) / "photos"
            width, height = (int(side) for side in args.size.split("x"))
            started = time.perf_counter()
            make_photos(root, args.images, width, height)
            print(f"made {args.images} {args.size} JPEGs in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        files = sum(1 for path in root.rglob("*") if path.is_file())  # also brings them into the page cache
        for path in root.rglob("*"):
            if path.is_file():
                path.read_bytes()
        rounds = itertools.count()
        manifests = Path(scratch) / "manifests"
        loader = (args.batch_size, args.workers)
        arms = {
            "tutorial": lambda: tutorial(root, *loader),
            # A new manifest folder every round: each is a first run.
            "tl first run": lambda: tl(root, *loader, Path(scratch) / f"first{next(rounds)}"),
            "tl repeat run": lambda: tl(root, *loader, manifests),
            "tl, no manifest": lambda: tl(root, *loader, None),
        }
        tl(root, *loader, manifests)  # the repeat runs' manifest
        results = median_times(arms, args.repeat)

    where = root if args.data else f"generated {args.size} JPEGs"
    setting = f"batch {args.batch_size}, {args.workers} workers, {os.cpu_count()} CPUs; medians of {args.repeat}"
    print(f"\n{files} files in {where}; {setting}\n")
    print("| arm | to first batch | of which set-up pass | fingerprint | train epoch 1 | train epoch 2 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, times in results.items():
        parts = [f"{times[key]:.2f} s" if key in times else "" for key in ("set-up", "fingerprint")]
        print(f"| {name} | {times['first batch']:.2f} s | {' | '.join(parts)} | {times['epoch 1']:.2f} s | "
              f"{times['epoch 2']:.2f} s |")  # fmt: skip


if __name__ == "__main__":
    main()
