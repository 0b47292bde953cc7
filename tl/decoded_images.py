"""Decoded images kept in memory that the DataLoader workers share, filled as the first epoch reads."""

from __future__ import annotations

import logging
import mmap
import multiprocessing

import numpy as np
from PIL import Image
from torchvision import datasets

log = logging.getLogger(__name__)


class DecodedImages:
    """ImageFolder's loader with memory: each image is decoded (to RGB) and scaled down once, when it is
    first read, into memory the DataLoader workers share, so epochs after the first read no file.

    Filled as the first epoch reads rather than before training starts, which cost a full decode of
    every image on every run before its first batch (`benchmarks/data_setup.py` times both): the
    first epoch reads the files, as the tutorial's loop does every epoch. The memory is an anonymous
    shared mapping made here, in the parent, so the workers it forks write to the same pages: what one
    epoch's workers store, later epochs' workers and the parent find. Up to `max_bytes` in all (pages
    are allocated as they are written); images past that are decoded, and scaled down alike, each time
    they are read, so an image's pixels never depend on whether or when it was stored."""

    def __init__(self, paths: list[str], max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._slots = {path: slot for slot, path in enumerate(paths)}
        # Row per image: offset in _pixels, width, height (0 until stored); the last: bytes used, 1 once full.
        self._table = np.frombuffer(mmap.mmap(-1, 3 * 8 * (len(paths) + 1)), dtype=np.int64).reshape(-1, 3)
        self._pixels = mmap.mmap(-1, max(max_bytes, 1))
        # Guards the table across processes. It is held only around a few integer reads and writes (never
        # while decoding or copying pixels), and `with` releases it on KeyboardInterrupt.
        self._lock = multiprocessing.Lock()

    def load(self, path: str, largest_side: int | None = None) -> Image.Image:
        """The image at `path` in RGB, scaled down to a shorter side of `largest_side` when larger: from
        memory once stored, else decoded and stored while the budget lasts."""
        slot = self._slots.get(path)
        image = None if slot is None else self._stored(slot)
        if image is None:
            image = _decoded(path, largest_side)
            if slot is not None and image.mode == "RGB":
                self._store(slot, image)
        return image

    def get(self, path: str) -> Image.Image | None:
        """The stored image, or None."""
        slot = self._slots.get(path)
        return None if slot is None else self._stored(slot)

    def __len__(self) -> int:
        with self._lock:
            return int(np.count_nonzero(self._table[:-1, 1]))

    @property
    def full(self) -> bool:
        with self._lock:
            return bool(self._table[-1, 1])

    def _stored(self, slot: int) -> Image.Image | None:
        with self._lock:
            offset, width, height = self._table[slot].tolist()
        if not width:
            return None
        # Written before its row was filled in, under the lock, and never written again.
        return Image.frombytes("RGB", (width, height), self._pixels[offset : offset + 3 * width * height])

    def _store(self, slot: int, image: Image.Image) -> None:
        pixels = image.tobytes()
        with self._lock:
            offset, full = self._table[-1, :2].tolist()
            fits = offset + len(pixels) <= min(self.max_bytes, len(self._pixels))
            if fits:
                self._table[-1, 0] = offset + len(pixels)  # the space is this process's from here on
            else:
                self._table[-1, 1] = 1
        if not fits:
            if not full:
                log.info(
                    "%d images (%.0f MiB) kept in memory; the others are decoded every time they are read",
                    len(self),
                    offset / 2**20,
                )
            return
        self._pixels[offset : offset + len(pixels)] = pixels
        with self._lock:
            self._table[slot] = (offset, image.width, image.height)


def _decoded(path: str, largest_side: int | None) -> Image.Image:
    image = datasets.folder.default_loader(path)
    if largest_side is not None and min(image.size) > largest_side:
        scale = largest_side / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    return image
