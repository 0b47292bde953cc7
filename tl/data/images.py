"""Image files: whether one can be read as RGB (the set-up pass's check), and decoded images kept in
memory that the DataLoader workers share. Reading one at the size a model needs is `load_image`, from
tl/models/pyfunc_model.py (the logged model's own code), re-exported here."""

from __future__ import annotations

import io
import logging
import mmap
import multiprocessing
from functools import cache
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.functional import InterpolationMode, pil_modes_mapping

# Reading an image at the size needed is part of the logged model (it travels with it), so it lives there.
from tl.core.errors import first_line
from tl.models.pyfunc_model import load_image

log = logging.getLogger(__name__)

# Modes whose values go past 8 bits: converting them to RGB clips them, so the picture is lost.
HIGH_BIT_DEPTH_MODES = {"I;16": "16-bit", "I": "32-bit integer", "F": "32-bit float"}
# What a manifest's check results depend on: records made with another are checked again.
# Bump the number when `image_problem` changes what it returns.
IMAGE_CHECK = f"image_problem 1, Pillow {PIL.__version__}"


class DecodedImages:
    """ImageFolder's loader with memory: each image is read once (`load_image`), when it is first
    read, into memory the DataLoader workers share, so epochs after the first read no file.

    Filled as the first epoch reads rather than before training starts, which cost a full decode of
    every image on every run before its first batch (`benchmarks/data_setup.py` times both): the
    first epoch reads the files, as the tutorial's loop does every epoch. The memory is an anonymous
    shared mapping made here, in the parent, so the workers it forks write to the same pages: what one
    epoch's workers store, later epochs' workers and the parent find. Up to `max_bytes` in all (pages
    are allocated as they are written); images past that are read from their files each time, at the
    same size, so an image's pixels never depend on whether or when it was stored. A stored image is
    given only for the `min_side` and `interpolation` it was read with."""

    def __init__(self, paths: list[str], max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._slots = {path: slot for slot, path in enumerate(paths)}
        # Row per image: offset in _pixels, width, height (0 until stored), what it was read for (`_read_as`);
        # the last row: bytes used, 1 once full.
        self._table = np.frombuffer(mmap.mmap(-1, 4 * 8 * (len(paths) + 1)), dtype=np.int64).reshape(-1, 4)
        self._pixels = mmap.mmap(-1, max(max_bytes, 1))
        # Guards the table across processes. It is held only around a few integer reads and writes (never
        # while decoding or copying pixels), and `with` releases it on KeyboardInterrupt.
        self._lock = multiprocessing.Lock()

    def load(self, path: str, min_side: int | None = None, interpolation: str = "bilinear") -> Image.Image:
        """`load_image(path, min_side, interpolation)`: from memory once stored, else read and stored
        while the budget lasts."""
        slot = self._slots.get(path)
        read_as = _read_as(min_side, interpolation)
        image = None if slot is None else self._stored(slot, read_as)
        if image is None:
            image = load_image(path, min_side, interpolation)
            if slot is not None:
                self._store(slot, image, read_as)
        return image

    def get(self, path: str, min_side: int | None = None, interpolation: str = "bilinear") -> Image.Image | None:
        """The stored image read with these arguments, or None."""
        slot = self._slots.get(path)
        return None if slot is None else self._stored(slot, _read_as(min_side, interpolation))

    def __len__(self) -> int:
        with self._lock:
            return int(np.count_nonzero(self._table[:-1, 1]))

    @property
    def full(self) -> bool:
        """Whether the memory budget is spent: no further image is stored."""
        with self._lock:
            return bool(self._table[-1, 1])

    def _stored(self, slot: int, read_as: int) -> Image.Image | None:
        with self._lock:
            offset, width, height, stored_as = self._table[slot].tolist()
        if not width or stored_as != read_as:
            return None
        # Written before its row was filled in, under the lock, and never written again.
        return Image.frombytes("RGB", (width, height), self._pixels[offset : offset + 3 * width * height])

    def _store(self, slot: int, image: Image.Image, read_as: int) -> None:
        pixels = image.tobytes()
        with self._lock:
            if self._table[slot, 1]:  # it holds the image as read for another use, and is never rewritten
                return
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
            self._table[slot] = (offset, image.width, image.height, read_as)


def _read_as(min_side: int | None, interpolation: str) -> int:
    """`load_image`'s arguments as one integer, for the table."""
    return (min_side or 0) * 16 + pil_modes_mapping[InterpolationMode(interpolation)]


def image_problem(source: Path | bytes) -> str | None:
    """Why ImageFolder's loader could not give this file (or these contents of one) as an RGB image, or
    None when it can. Decodes the whole image once, so truncated files are found too."""
    try:
        contents = source if isinstance(source, bytes) else source.read_bytes()
        if not contents:
            return "empty file"
        with Image.open(io.BytesIO(contents)) as image:
            problem = _mode_problem(image.mode)
            if problem is None:
                # A JPEG's pixels at 1/8 scale (Pillow's `draft`): every byte of the file is still decoded, so
                # truncated or corrupt data is found alike, for about a third of the work of a full decode.
                image.draft(None, (1, 1))
                image.load()
    except UnidentifiedImageError:
        return "not an image"
    except Exception as error:  # anything that fails here would fail in the loader, mid-training
        text = first_line(error)
        return "truncated" if "truncated" in text.lower() else f"cannot be decoded: {text}"
    return problem


def _mode_problem(mode: str) -> str | None:
    depth = HIGH_BIT_DEPTH_MODES.get("I;16" if mode.startswith("I;16") else mode)  # I;16, I;16B, I;16L, I;16N
    if depth:
        return f"{depth} image (mode {mode}): save it as 8-bit RGB"
    if not _converts_to_rgb(mode):
        return f"mode {mode} cannot be converted to RGB: save it as 8-bit RGB"
    return None


@cache
def _converts_to_rgb(mode: str) -> bool:
    # Pillow is asked, with a one-pixel image, rather than keeping a list of its conversions here.
    try:
        Image.new(mode, (1, 1)).convert("RGB")
    except (ValueError, OSError):
        return False
    return True
