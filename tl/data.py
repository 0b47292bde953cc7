"""Datasets, transforms and loaders: ImageFolder layouts, the shipped sample, the tutorial's zip.

Each `data` config option points at one factory here, which returns an `ImageFolderData`.
Transforms are built from the model's `Preprocess` (what its pretrained weights expect),
so nothing about sizes or normalisation is typed twice.
"""

from __future__ import annotations

import hashlib
import logging
import random
import tempfile
import urllib.error
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.datasets.utils import download_url
from torchvision.transforms import v2

from tl.errors import TLError
from tl.models import Preprocess
from tl.provenance import file_sha256

log = logging.getLogger(__name__)

FASHION_SAMPLE_ROOT = Path(__file__).parent / "datasets" / "fashion_sample"
HYMENOPTERA_URL = "https://download.pytorch.org/tutorial/hymenoptera_data.zip"


@dataclass
class DatasetFingerprint:
    sha256: str
    counts: dict[str, dict[str, int]]  # split -> class -> images
    files: list[tuple[str, int, str]]  # (path relative to the root, bytes, sha256), sorted

    def changes_from(self, other_files: list[tuple[str, int, str]]) -> list[str]:
        """What differs from another manifest: `+ added`, `- removed`, `~ changed` paths."""
        ours = {path: digest for path, _, digest in self.files}
        theirs = {path: digest for path, _, digest in other_files}
        added = [f"+ {p}" for p in sorted(ours.keys() - theirs.keys())]
        removed = [f"- {p}" for p in sorted(theirs.keys() - ours.keys())]
        changed = [f"~ {p}" for p in sorted(ours.keys() & theirs.keys()) if ours[p] != theirs[p]]
        return added + removed + changed


class ImageFolderData:
    """A folder with `train/` and `val/`, each holding one subfolder of images per class."""

    def __init__(
        self,
        root: str | Path,
        batch_size: int,
        image_size: int | None = None,
        train_crop_scale: tuple[float, float] = (0.08, 1.0),
        num_workers: int = 0,
    ) -> None:
        self.root = Path(root).expanduser()
        self.batch_size = batch_size
        self.image_size = image_size
        self.train_crop_scale = tuple(train_crop_scale)
        self.num_workers = num_workers
        self.classes = self._check_layout()

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

    def fingerprint(self) -> DatasetFingerprint:
        """A digest of every image the loaders read (relative path, size, content), and class counts."""
        files, counts = [], {}
        class_to_idx = {name: i for i, name in enumerate(self.classes)}
        for split in ("train", "val"):
            samples = datasets.folder.make_dataset(self.root / split, class_to_idx, IMG_EXTENSIONS, allow_empty=True)
            counts[split] = {name: 0 for name in self.classes}
            for path, target in samples:
                counts[split][self.classes[target]] += 1
                relative = Path(path).relative_to(self.root).as_posix()
                files.append((relative, Path(path).stat().st_size, file_sha256(Path(path))))
        files.sort()
        digest = hashlib.sha256("".join(f"{p}\t{s}\t{h}\n" for p, s, h in files).encode()).hexdigest()
        return DatasetFingerprint(digest, counts, files)

    def preprocess(self, model_preprocess: Preprocess) -> Preprocess:
        """The model's preprocessing at this dataset's image size (when it sets one)."""
        return model_preprocess.at_size(self.image_size)

    def transforms(self, model_preprocess: Preprocess) -> tuple[v2.Compose, v2.Compose]:
        """Train (random resized crop + flip, as in the tutorial) and eval (resize + centre crop)."""
        pre = self.preprocess(model_preprocess)
        train = v2.Compose(
            [
                v2.RandomResizedCrop(
                    pre.input_size, scale=self.train_crop_scale, interpolation=v2.InterpolationMode(pre.interpolation)
                ),
                v2.RandomHorizontalFlip(),
                *_to_normalised_tensor(pre),
            ]
        )
        return train, eval_transform(pre)

    def loaders(self, model_preprocess: Preprocess, seed: int) -> tuple[DataLoader, DataLoader]:
        train_transform, val_transform = self.transforms(model_preprocess)
        # ImageFolder's loader converts grey, palette and RGBA images to RGB.
        train_set = datasets.ImageFolder(self.root / "train", transform=train_transform, allow_empty=True)
        val_set = datasets.ImageFolder(self.root / "val", transform=val_transform, allow_empty=True)
        for split, dataset in (("train", train_set), ("val", val_set)):
            empty = sorted(set(dataset.classes) - {dataset.classes[t] for t in dataset.targets})
            if empty:
                raise TLError(
                    f"{self.root / split}: class folder(s) {', '.join(empty)} hold no images; "
                    "add images or remove the folder"
                )
        common = {"batch_size": self.batch_size, "num_workers": self.num_workers, "worker_init_fn": _seed_worker}
        common["persistent_workers"] = self.num_workers > 0
        # BatchNorm cannot train on a last batch of a single image: drop it in that case only.
        lone_last_image = len(train_set) % self.batch_size == 1
        generator = torch.Generator().manual_seed(seed)
        train = DataLoader(train_set, shuffle=True, generator=generator, drop_last=lone_last_image, **common)
        val = DataLoader(val_set, shuffle=False, **common)
        return train, val


def eval_transform(preprocess: Preprocess) -> v2.Compose:
    """Resize and centre crop as the weights expect: for validation and for prediction."""
    interpolation = v2.InterpolationMode(preprocess.interpolation)
    return v2.Compose(
        [
            v2.Resize(preprocess.resize_size, interpolation=interpolation),
            v2.CenterCrop(preprocess.input_size),
            *_to_normalised_tensor(preprocess),
        ]
    )


def _to_normalised_tensor(preprocess: Preprocess) -> list:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(preprocess.mean, preprocess.std)]


def image_folder(root: str, **kwargs) -> ImageFolderData:
    """Any folder in the tutorial's layout: root/{train,val}/<class>/<image>."""
    return ImageFolderData(root, **kwargs)


def fashion_sample(**kwargs) -> ImageFolderData:
    """1,400 Fashion-MNIST images shipped with tl (10 classes): the offline default."""
    return ImageFolderData(FASHION_SAMPLE_ROOT, **kwargs)


def hymenoptera(cache_dir: str, url: str = HYMENOPTERA_URL, sha256: str | None = None, **kwargs) -> ImageFolderData:
    """The tutorial's ants-vs-bees data: downloaded and unpacked into `cache_dir` once."""
    cache = Path(cache_dir).expanduser()
    root = cache / "hymenoptera_data"
    if not (root / "train").is_dir():
        archive = _download(url, cache, root)
        _check_sha256(archive, sha256)
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(cache)
    return ImageFolderData(root, **kwargs)


def _download(url: str, cache: Path, root: Path) -> Path:
    archive = cache / Path(url).name
    if archive.is_file() and zipfile.is_zipfile(archive):
        return archive
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as partial:
        try:
            download_url(url, partial, filename=archive.name)
        except (urllib.error.URLError, OSError) as error:
            raise TLError(
                f"could not download {url} ({error}); offline, unzip hymenoptera_data.zip so that "
                f"{root}/train and {root}/val exist, or use data=image_folder data.root=PATH"
            ) from error
        # Moved into place only when complete, so an interrupted download is never mistaken for the data.
        Path(partial, archive.name).replace(archive)
    return archive


def _check_sha256(archive: Path, expected: str | None) -> None:
    digest = file_sha256(archive)
    if expected is None:
        log.info("%s has sha256 %s; set data.sha256 to that value to have it checked", archive, digest)
    elif digest != expected.lower():
        archive.unlink()
        raise TLError(
            f"{archive} has sha256 {digest}, expected {expected}; the download was removed, run again to retry"
        )
    if not zipfile.is_zipfile(archive):
        archive.unlink()
        raise TLError(f"{archive} is not a zip archive; the download was removed, run again to retry")


def _seed_worker(worker_id: int) -> None:
    # DataLoader seeds torch in each worker; numpy and random follow from it.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
