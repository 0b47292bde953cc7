"""Datasets, transforms and loaders: ImageFolder layouts, the shipped sample, the tutorial's zip.

Each `data` config option points at one factory here, which returns an `ImageFolderData`.
Transforms are built from the model's `Preprocess` (what its pretrained weights expect),
so nothing about sizes or normalisation is typed twice.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import sys
import zipfile
from functools import cached_property, partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler
from torchvision import datasets
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2

from tl.core.checks import check_value
from tl.core.distributed import Processes
from tl.core.errors import TLError
from tl.core.numerics import seed_worker
from tl.data import folds as tl_folds
from tl.data.download import check_sha256, download
from tl.data.images import IMAGE_CHECK, DecodedImages, image_problem, load_image
from tl.data.manifest import DatasetFingerprint, FileRecord, Manifest
from tl.data.transforms import eval_transform, train_transform
from tl.models.backbones import Preprocess

log = logging.getLogger(__name__)

FASHION_SAMPLE_ROOT = Path(__file__).parent / "datasets" / "fashion_sample"
HYMENOPTERA_URL = "https://download.pytorch.org/tutorial/hymenoptera_data.zip"
IMAGE_CACHE_BYTES = 2 * 2**30  # decoded images kept in memory, at most


class ImageFolderData:
    """A folder with `train/` and `val/`, each holding one subfolder of images per class."""

    def __init__(
        self,
        root: str | Path,
        batch_size: int,
        image_size: int | None = None,
        train_crop_scale: tuple[float, float] = (0.08, 1.0),
        num_workers: int = 0,
        on_bad_image: str = "skip",
        cache_images: bool = True,
        persistent_workers: bool = False,
        manifest_dir: str | Path | None = None,
        recheck: bool = False,
        progress: bool = True,
        folds: int | None = None,
        fold: int = 0,
        split_seed: int = 0,
    ) -> None:
        """`manifest_dir`: where what the set-up pass learned about each image (its sha256, whether it
        decodes) is kept for the next run (see `tl.data.manifest`); None keeps nothing. `recheck`: ignore
        what was kept and examine every image again. `progress`: a progress bar for a long set-up pass.
        `folds`, `fold`, `split_seed`: cross-validation over train/ and val/ together (tl/data/folds.py)."""
        check_value("data.on_bad_image", on_bad_image)
        self.root = Path(root).expanduser()
        self.batch_size = batch_size
        self.image_size = image_size
        self.train_crop_scale = tuple(train_crop_scale)
        self.num_workers = num_workers
        self.persistent_workers = persistent_workers and num_workers > 0
        self.classes = self._check_layout()
        self._samples = self._list_samples()  # split -> (path, class index), as ImageFolder lists them
        self.folds = folds
        if folds is not None:
            self._samples = tl_folds.split(self._samples, self.classes, folds, fold, split_seed)
        manifest = Manifest(self.root, manifest_dir, image_problem, IMAGE_CHECK)
        self._records = self._examine(manifest, recheck, progress)  # path relative to the root -> FileRecord
        self.bad_images = sorted((path, record.problem) for path, record in self._records.items() if record.problem)
        self._report_bad_images(on_bad_image)
        loadable = [path for samples in self._samples.values() for path, _ in samples if self._is_loadable(path)]
        shared = cache_images and self._workers_share_memory()
        self.images = DecodedImages(loadable, IMAGE_CACHE_BYTES) if shared else None

    def _check_layout(self) -> list[str]:
        if not self.root.is_dir():
            raise TLError(f"data.root={self.root} does not exist; point it at a folder holding train/ and val/")
        found = {}
        for split in ("train", "val"):
            folder = self.root / split
            if not folder.is_dir():
                raise TLError(
                    f"{folder} is missing; data.root needs train/ and val/, each with one subfolder per class"
                )
            found[split] = sorted(p.name for p in folder.iterdir() if p.is_dir())
        if found["train"] != found["val"]:
            raise TLError(
                f"train/ and val/ in {self.root} have different class folders: "
                f"train {found['train']}, val {found['val']}; give both the same classes"
            )
        if len(found["train"]) < 2:
            raise TLError(
                f"{self.root / 'train'} has {len(found['train'])} class folders; a classifier needs at least 2"
            )
        return found["train"]

    def _list_samples(self) -> dict[str, list[tuple[str, int]]]:
        class_to_idx = {name: i for i, name in enumerate(self.classes)}
        return {
            split: datasets.folder.make_dataset(self.root / split, class_to_idx, IMG_EXTENSIONS, allow_empty=True)
            for split in ("train", "val")
        }

    def _examine(self, manifest: Manifest, recheck: bool, progress: bool) -> dict[str, FileRecord]:
        """Every listed image file's size, sha256 and whether it decodes to RGB (so that an unreadable
        image is found now rather than as a crash in the middle of training): kept from an earlier run
        where the file is unchanged, found now (each new or changed file read once) otherwise."""
        paths = [self._relative(path) for samples in self._samples.values() for path, _ in samples]
        return manifest.records(paths, recheck=recheck, progress=progress)

    def _report_bad_images(self, on_bad_image: str) -> None:
        if not self.bad_images:
            return
        count = len(self.bad_images)
        if on_bad_image == "error":
            raise TLError(
                f"{count} unreadable image(s) in {self.root}: {_listing(self.bad_images, 10)}; "
                "fix or remove them, or set data.on_bad_image=skip"
            )
        log.warning(
            "skipping %d unreadable image(s) in %s: %s; data.on_bad_image=error stops instead",
            count,
            self.root,
            _listing(self.bad_images, 5),
        )

    def _relative(self, path: str | Path) -> str:
        # A string operation rather than pathlib's relative_to (6 µs a call): it runs several times for
        # every image of every run, most of a repeat run's set-up on a large folder.
        text, prefix = str(path), str(self.root) + os.sep
        if text.startswith(prefix):
            return text[len(prefix) :].replace(os.sep, "/")
        return Path(path).relative_to(self.root).as_posix()

    def _is_loadable(self, path: str) -> bool:
        """For torchvision's `is_valid_file`, which replaces its extension check: an image that was
        examined when the data was set up (so one added since is not read either) and can be read."""
        record = self._records.get(self._relative(path))
        return record is not None and record.problem is None

    @cached_property
    def _fingerprint(self) -> DatasetFingerprint:
        files, counts = [], {}
        for split, samples in self._samples.items():
            counts[split] = {name: 0 for name in self.classes}
            for path, target in samples:
                relative = self._relative(path)
                record = self._records[relative]
                if record.problem is None:
                    counts[split][self.classes[target]] += 1
                    files.append((relative, record.size, record.sha256))
        files.sort()
        digest = hashlib.sha256("".join(f"{p}\t{s}\t{h}\n" for p, s, h in files).encode()).hexdigest()
        return DatasetFingerprint(digest, counts, files, list(self.bad_images), str(self.root))

    def fingerprint(self) -> DatasetFingerprint:
        """A digest of every image the loaders read (relative path, size, content), class counts,
        and the unreadable images left out; from what the set-up pass found, so no file is read."""
        return self._fingerprint

    def preprocess(self, model_preprocess: Preprocess) -> Preprocess:
        """The model's preprocessing at this dataset's image size (when it sets one)."""
        return model_preprocess.at_size(self.image_size)

    def transforms(self, model_preprocess: Preprocess) -> tuple[v2.Compose, v2.Compose]:
        """Train (random resized crop + flip, as in the tutorial) and eval (resize + centre crop)."""
        pre = self.preprocess(model_preprocess)
        return train_transform(pre, self.train_crop_scale), eval_transform(pre)

    def train_views(self, model_preprocess: Preprocess) -> datasets.ImageFolder:
        """The training images in their validation view (no augmentation): what a feature cache holds."""
        pre = self.preprocess(model_preprocess)
        return self._split("train", eval_transform(pre), pre.resize_size, pre.interpolation)

    def _split(self, split: str, transform: v2.Compose, min_side: int, interpolation: str) -> datasets.ImageFolder:
        """`split`'s images, each read with its shorter side scaled down to `min_side` when longer."""
        dataset = datasets.ImageFolder(
            self.root / split, transform=transform, is_valid_file=self._is_loadable, allow_empty=True
        )
        if self.folds is not None:  # the fold's images, from both folders
            dataset.samples = dataset.imgs = [s for s in self._samples[split] if self._is_loadable(s[0])]
            dataset.targets = [label for _, label in dataset.samples]
        # As ImageFolder's loader does, grey, palette, RGBA and CMYK images are converted to RGB.
        read = load_image if self.images is None else self.images.load
        dataset.loader = partial(read, min_side=min_side, interpolation=interpolation)
        return dataset

    def _workers_share_memory(self) -> bool:
        # Forked workers inherit the parent's shared mapping; spawned ones would need it pickled, which it cannot be.
        return self.num_workers == 0 or _worker_start_method() == "fork"

    def _augmentation_min_side(self, input_size: int) -> int:
        """The shorter side beyond which an image can be scaled down without any crop the augmentation
        takes (smallest area, narrowest aspect ratio 3:4) being upscaled from it."""
        return math.ceil(input_size / math.sqrt(self.train_crop_scale[0] * 3 / 4))

    def loaders(
        self, model_preprocess: Preprocess, seed: int, processes: Processes | None = None, pin_memory: bool = False
    ) -> tuple[DataLoader, DataLoader]:
        """Train (shuffled, seeded) and validation loaders. Under torchrun, each process trains on its
        share of every global batch of `batch_size`; every process validates on the whole val set."""
        processes = processes or Processes()
        train_transform, val_transform = self.transforms(model_preprocess)
        pre = self.preprocess(model_preprocess)
        train_set = self._split(
            "train", train_transform, self._augmentation_min_side(pre.input_size), pre.interpolation
        )
        val_set = self._split("val", val_transform, pre.resize_size, pre.interpolation)
        for split, dataset in (("train", train_set), ("val", val_set)):
            empty = sorted(set(dataset.classes) - {dataset.classes[t] for t in dataset.targets})
            if empty:
                raise TLError(
                    f"{self.root / split}: class folder(s) {', '.join(empty)} hold no images; "
                    "add images or remove the folder"
                )
        batch_size = processes.per_process_batch(self.batch_size)
        common = {
            "batch_size": batch_size,
            "num_workers": self.num_workers,
            "worker_init_fn": seed_worker,
            "pin_memory": pin_memory,  # page-locked batches copy to a GPU asynchronously
        }
        if self.num_workers > 0:
            # The platform's own way to start workers, named: inside a joblib (loky) sweep job the
            # default context is loky's, which cannot start DataLoader workers.
            common["multiprocessing_context"] = _worker_start_method()
        generator = torch.Generator().manual_seed(seed)
        if processes.distributed:
            sampler = DistributedSampler(train_set, processes.world_size, processes.rank, shuffle=True, seed=seed)
            order = {"sampler": sampler}
        else:
            order = {"shuffle": True}
        # BatchNorm cannot train on a last batch of a single image: drop it in that case only.
        lone_last_image = math.ceil(len(train_set) / processes.world_size) % batch_size == 1
        # Workers are not persistent by default: each epoch's workers are seeded from the shuffle generator,
        # whose state a checkpoint holds, so a resumed run draws the same augmentations as an uninterrupted
        # one. Persistent workers (opt-in) save each epoch's start and give up that exactness.
        train = DataLoader(
            train_set, generator=generator, drop_last=lone_last_image, persistent_workers=self.persistent_workers,
            **order, **common,
        )  # fmt: skip
        val = DataLoader(val_set, shuffle=False, persistent_workers=self.persistent_workers, **common)
        return train, val


def _worker_start_method() -> str:
    return "fork" if sys.platform == "linux" else "spawn"


def _listing(items: list[tuple[str, str]], limit: int) -> str:
    """`a.png (truncated), b.jpg (not an image) and 3 more`"""
    shown = ", ".join(f"{path} ({reason})" for path, reason in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def image_folder(root: str, **kwargs) -> ImageFolderData:
    """Any folder in the tutorial's layout: root/{train,val}/<class>/<image>."""
    return ImageFolderData(root, **kwargs)


def fashion_sample(root: str | None = None, **kwargs) -> ImageFolderData:
    """1,400 Fashion-MNIST images shipped with tl (10 classes): the offline default (`root` None)."""
    return ImageFolderData(root or FASHION_SAMPLE_ROOT, **kwargs)


def hymenoptera(
    cache_dir: str, root: str | None = None, url: str = HYMENOPTERA_URL, sha256: str | None = None, **kwargs
) -> ImageFolderData:
    """The tutorial's ants-vs-bees data: downloaded and unpacked into `cache_dir` once (`root` None),
    or read from `root`, a folder that already holds it unpacked."""
    if root is not None:
        return ImageFolderData(root, **kwargs)
    cache = Path(cache_dir).expanduser()
    root = cache / "hymenoptera_data"
    if not (root / "train").is_dir():
        archive = download(url, cache, root)
        check_sha256(archive, sha256)
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(cache)
    return ImageFolderData(root, **kwargs)
