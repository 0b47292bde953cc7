"""Image folders made on the spot for the benchmarks: no download, the same images on every machine.

- `fashion`: the shipped Fashion-MNIST sample (greyscale clothing), cut to the given size;
- `glyphs`: the digits 0-9 drawn in the fonts matplotlib ships, turned, scaled, moved, thickened or
  thinned and blurred, on grey paper, at 28 px: small drawings, far from ImageNet's photos;
- `shapes`: ten kinds of coloured shapes on cluttered colour backgrounds at 64 px.

Each is an ImageFolder layout (train/<class>/, val/<class>/) with `train` and `val` images per class.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tl.data.folders import FASHION_SAMPLE_ROOT  # noqa: E402

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon", "arrow", "crescent")


def make(name: str, root: Path, train: int, val: int, seed: int = 0) -> Path:
    """The dataset `name` under `root`, `train` and `val` images per class."""
    makers = {"fashion": fashion, "glyphs": glyphs, "shapes": shapes}
    if name not in makers:
        raise SystemExit(f"error: no dataset {name!r}; choose from {', '.join(makers)}")
    makers[name](root, {"train": train, "val": val}, seed)
    return root


def fashion(root: Path, per_class: dict[str, int], seed: int) -> None:
    """The first images of each class of the shipped sample, as links."""
    for split, count in per_class.items():
        for source in sorted((FASHION_SAMPLE_ROOT / split).iterdir()):
            target = root / split / source.name
            target.mkdir(parents=True)
            images = sorted(source.iterdir())
            if count > len(images):
                raise SystemExit(f"error: the shipped sample has {len(images)} {split} images of {source.name}")
            for image in images[:count]:
                (target / image.name).symlink_to(image.resolve())


def glyphs(root: Path, per_class: dict[str, int], seed: int) -> None:
    """Digits in matplotlib's fonts, each one turned, scaled, moved, thickened or thinned, and blurred."""
    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    fonts = sorted(path for path in folder.glob("DejaVu*.ttf") if "Display" not in path.name)  # Display: no digits
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for digit in range(10):
            folder = root / split / str(digit)
            folder.mkdir(parents=True)
            for i in range(count):
                font = ImageFont.truetype(str(fonts[rng.integers(len(fonts))]), int(rng.integers(44, 72)))
                canvas = Image.new("L", (96, 96), 0)
                ImageDraw.Draw(canvas).text((48, 48), str(digit), fill=255, font=font, anchor="mm")
                canvas = canvas.rotate(float(rng.uniform(-30, 30)), resample=Image.Resampling.BILINEAR)
                canvas = canvas.transform(canvas.size, Image.Transform.AFFINE, _shear_and_shift(rng),
                                          resample=Image.Resampling.BILINEAR)  # fmt: skip
                stroke = int(rng.integers(-1, 3))
                if stroke > 0:
                    canvas = canvas.filter(ImageFilter.MaxFilter(2 * stroke + 1))
                elif stroke < 0:
                    canvas = canvas.filter(ImageFilter.MinFilter(3))
                small = canvas.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.0)))).resize((28, 28))
                paper = rng.normal(rng.uniform(20, 70), 12, (28, 28))
                ink = np.asarray(small, dtype=np.float64) / 255 * rng.uniform(120, 200)
                pixels = np.clip(paper + ink, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04}.png")


def _shear_and_shift(rng: np.random.Generator) -> tuple[float, ...]:
    """An affine map about the 96 px canvas's centre (PIL's output-to-input coefficients): a random
    scale, shear and shift."""
    scale, shear = rng.uniform(0.8, 1.25), rng.uniform(-0.3, 0.3)
    dx, dy = rng.uniform(-8, 8, 2)
    return (scale, shear, 48 * (1 - scale - shear) + dx, 0.0, scale, 48 * (1 - scale) + dy)


def shapes(root: Path, per_class: dict[str, int], seed: int) -> None:
    """One coloured shape on a background of random blobs of colour, at a random place, size and angle."""
    rng = np.random.default_rng(seed + 1)
    for split, count in per_class.items():
        for kind in SHAPES:
            folder = root / split / kind
            folder.mkdir(parents=True)
            for i in range(count):
                size = 64
                coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
                background = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
                noise = rng.integers(-30, 30, (size, size, 3))
                image = Image.fromarray(np.clip(np.asarray(background, np.int16) + noise, 0, 255).astype(np.uint8))
                colour = tuple(int(c) for c in rng.integers(0, 256, 3))
                radius = float(rng.uniform(12, 24))
                centre = rng.uniform(radius, size - radius, 2)
                _draw_shape(ImageDraw.Draw(image), kind, centre, radius, float(rng.uniform(0, 2 * math.pi)), colour)
                image.save(folder / f"{i:04}.png")


def _draw_shape(
    draw: ImageDraw.ImageDraw, kind: str, centre: np.ndarray, radius: float, angle: float, colour: tuple
) -> None:
    """Draw one shape of `kind` around `centre`."""
    cx, cy = centre

    def polygon(radii: list[float], turn: float = 0.0) -> list[tuple[float, float]]:
        steps = len(radii)
        return [(cx + r * math.cos(angle + turn + 2 * math.pi * k / steps),
                 cy + r * math.sin(angle + turn + 2 * math.pi * k / steps)) for k, r in enumerate(radii)]  # fmt: skip

    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if kind == "circle":
        draw.ellipse(box, fill=colour)
    elif kind == "ring":
        draw.ellipse(box, outline=colour, width=max(2, int(radius / 3)))
    elif kind == "crescent":  # a disc with an offset disc cut out of it, through a mask
        mask = Image.new("L", draw.im.size, 0)
        cut = ImageDraw.Draw(mask)
        cut.ellipse(box, fill=255)
        dx, dy = radius * 0.6 * math.cos(angle), radius * 0.6 * math.sin(angle)
        cut.ellipse((box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy), fill=0)
        draw.bitmap((0, 0), mask, fill=colour)
    elif kind == "square":
        draw.polygon(polygon([radius] * 4), fill=colour)
    elif kind == "diamond":
        draw.polygon(polygon([radius, radius * 0.55] * 2), fill=colour)
    elif kind == "triangle":
        draw.polygon(polygon([radius] * 3), fill=colour)
    elif kind == "hexagon":
        draw.polygon(polygon([radius] * 6), fill=colour)
    elif kind == "star":
        draw.polygon(polygon([radius, radius * 0.4] * 5), fill=colour)
    elif kind == "cross":
        draw.polygon(_cross(cx, cy, radius, angle), fill=colour)
    elif kind == "arrow":
        points = [(-1, -0.25), (0.2, -0.25), (0.2, -0.6), (1, 0), (0.2, 0.6), (0.2, 0.25), (-1, 0.25)]
        cos, sin = math.cos(angle), math.sin(angle)
        draw.polygon([(cx + radius * (x * cos - y * sin), cy + radius * (x * sin + y * cos)) for x, y in points],
                     fill=colour)  # fmt: skip


def _cross(cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    """A plus sign's twelve corners, turned by `angle`."""
    w = 0.3
    corners = [(w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w),
               (-w, -1)]  # fmt: skip
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + radius * (x * cos - y * sin), cy + radius * (x * sin + y * cos)) for x, y in corners]
