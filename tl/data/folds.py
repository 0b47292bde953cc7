"""Cross-validation folds for tiny datasets: `data.folds=K data.fold=i` trains on all but fold i of the
images of train/ and val/ together, and validates on fold i.

The folds are stratified (each class is dealt over the folds as evenly as it divides), disjoint, cover
every image once, and are fixed by `split_seed`: the K jobs of `-m data.fold=0,...,K-1` with one seed
see K disjoint validation sets.
"""

from __future__ import annotations

import random

from tl.core.errors import TLError

Sample = tuple[str, int]  # (path, class index), as torchvision's ImageFolder lists them


def fold_of_each(samples: list[Sample], folds: int, seed: int) -> list[int]:
    """The fold of each sample. Each class's samples, in an order fixed by `seed` (from their sorted
    paths, so the order the files were listed in does not matter), are dealt round robin, each class
    starting where the previous one stopped, so the folds' sizes differ by at most one image."""
    order = sorted(range(len(samples)), key=lambda i: samples[i])
    by_class: dict[int, list[int]] = {}
    for i in order:
        by_class.setdefault(samples[i][1], []).append(i)
    rng = random.Random(seed)
    assignment, dealt = [0] * len(samples), 0
    for label in sorted(by_class):
        members = by_class[label]
        rng.shuffle(members)
        for i in members:
            assignment[i] = dealt % folds
            dealt += 1
    return assignment


def split(
    samples: dict[str, list[Sample]], classes: list[str], folds: int, fold: int, seed: int
) -> dict[str, list[Sample]]:
    """`train` and `val` for fold `fold` of `folds`, from the images of both splits together."""
    if not 0 <= fold < folds:
        raise TLError(f"data.fold={fold} is out of range for data.folds={folds}: choose 0..{folds - 1}")
    pooled = samples["train"] + samples["val"]
    counts = [sum(1 for _, label in pooled if label == c) for c in range(len(classes))]
    too_few = [f"{name} ({count})" for name, count in zip(classes, counts, strict=True) if count < folds]
    if too_few:
        raise TLError(
            f"data.folds={folds} needs at least {folds} images of each class, for one in each fold; "
            f"{', '.join(too_few)} have fewer: lower data.folds"
        )
    assignment = fold_of_each(pooled, folds, seed)
    return {
        "train": [s for s, f in zip(pooled, assignment, strict=True) if f != fold],
        "val": [s for s, f in zip(pooled, assignment, strict=True) if f == fold],
    }
