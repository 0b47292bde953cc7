"""Build the shipped ``fashion_sample`` dataset from Debian's Fashion-MNIST files.

    apt-get install dataset-fashion-mnist
    python -m tl.data.datasets.build_fashion_sample

Takes a seeded sample of the *official train split*: ``--train`` images a class for
``train/`` and ``--val`` further images a class for ``val/``, written as PNGs in
ImageFolder layout with folders named after ``torchvision.datasets.FashionMNIST.classes``
(``/`` and spaces turned into ``_``). The result is committed, so runs need no network.

    python -m tl.data.datasets.build_fashion_sample --unseen tests/data/fashion_unseen

writes 20 images a class from the official *test* split instead: data no run trains or validates
on, which the tests use to check `predict.py`.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.datasets import FashionMNIST

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
OUT_DIR = Path(__file__).parent / "fashion_sample"


def folder_name(class_name: str) -> str:
    """A class name as a folder name: `T-shirt/top` -> `T-shirt_top`."""
    return class_name.replace("/", "_").replace(" ", "_")


def read_idx(path: Path, header_bytes: int) -> np.ndarray:
    """The bytes of a gzipped IDX file after its header, as uint8."""
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=header_bytes)


def build(source: Path, out: Path, per_class_train: int, per_class_val: int, seed: int) -> None:
    """Write a seeded, class-balanced sample of the Fashion-MNIST training set to out/{train,val}/<class>/."""
    images = read_idx(source / "train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    labels = read_idx(source / "train-labels-idx1-ubyte.gz", 8)
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):  # NOTICE.md beside them stays
        shutil.rmtree(out / split, ignore_errors=True)
    for label, class_name in enumerate(FashionMNIST.classes):
        indices = rng.permutation(np.flatnonzero(labels == label))
        picks = {
            "train": indices[:per_class_train],
            "val": indices[per_class_train : per_class_train + per_class_val],
        }
        for split, split_indices in picks.items():
            folder = out / split / folder_name(class_name)
            folder.mkdir(parents=True)
            for index in split_indices:
                # The index in the official train split names the file, so it can be traced back.
                Image.fromarray(images[index]).save(folder / f"{index:05d}.png", optimize=True)


def build_unseen(source: Path, out: Path, per_class: int, seed: int) -> None:
    """Images from the official *test* split, which fashion_sample never contains: out/<class>/*.png."""
    images = read_idx(source / "t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    labels = read_idx(source / "t10k-labels-idx1-ubyte.gz", 8)
    rng = np.random.default_rng(seed)
    if out.exists():
        shutil.rmtree(out)
    for label, class_name in enumerate(FashionMNIST.classes):
        folder = out / folder_name(class_name)
        folder.mkdir(parents=True)
        for index in rng.permutation(np.flatnonzero(labels == label))[:per_class]:
            Image.fromarray(images[index]).save(folder / f"test{index:05d}.png", optimize=True)


def main() -> None:
    """Command line of `build`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEBIAN_DIR)
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--train", type=int, default=100, help="train images per class")
    parser.add_argument("--val", type=int, default=40, help="val images per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unseen", type=Path, help="instead, write this many test-split images a class here")
    parser.add_argument("--per-class", type=int, default=20, help="with --unseen")
    args = parser.parse_args()
    if args.unseen:
        build_unseen(args.source, args.unseen, args.per_class, args.seed)
        out = args.unseen
    else:
        build(args.source, args.out, args.train, args.val, args.seed)
        out = args.out
    print(f"wrote {sum(1 for _ in out.rglob('*.png'))} images to {out}")


if __name__ == "__main__":
    main()
