from collections import Counter

import pytest

from tests.helpers import make_image_folder
from tl.core.errors import TLError
from tl.data import folds
from tl.data.folders import ImageFolderData

CLASSES = ["a", "b", "c"]


def samples(counts: dict[int, int]) -> dict[str, list[tuple[str, int]]]:
    listed = [(f"/d/{label}/{i:03d}.png", label) for label, n in counts.items() for i in range(n)]
    return {"train": listed[::2], "val": listed[1::2]}


def test_the_folds_are_disjoint_cover_every_image_once_and_are_stratified():
    listed = samples({0: 11, 1: 7, 2: 5})
    everything = sorted(listed["train"] + listed["val"])
    vals = [folds.split(listed, CLASSES, 5, fold, seed=0)["val"] for fold in range(5)]
    assert sorted(s for val in vals for s in val) == everything  # each image in exactly one validation fold
    for fold, val in enumerate(vals):
        train = folds.split(listed, CLASSES, 5, fold, seed=0)["train"]
        assert sorted(train + val) == everything and not set(train) & set(val)
    for label, n in {0: 11, 1: 7, 2: 5}.items():
        per_fold = [Counter(lbl for _, lbl in val)[label] for val in vals]
        assert max(per_fold) - min(per_fold) <= 1 and sum(per_fold) == n  # stratified
    sizes = [len(val) for val in vals]
    assert max(sizes) - min(sizes) <= 1


def test_the_folds_are_fixed_by_the_seed_not_by_the_listing_order():
    listed = samples({0: 8, 1: 8, 2: 8})
    reordered = {"train": listed["val"][::-1], "val": listed["train"][::-1]}

    def validation(split_samples, seed):
        return sorted(folds.split(split_samples, CLASSES, 4, 1, seed=seed)["val"])

    assert validation(listed, 3) == validation(reordered, 3)
    assert validation(listed, 3) != validation(listed, 4)


def test_an_impossible_fold_is_one_line():
    with pytest.raises(TLError, match=r"data.fold=5 is out of range for data.folds=5: choose 0..4"):
        folds.split(samples({0: 9, 1: 9}), CLASSES, 5, 5, seed=0)
    with pytest.raises(TLError, match=r"data.folds=5 needs at least 5 images of each class.*b \(4\)"):
        folds.split(samples({0: 9, 1: 4}), CLASSES, 5, 0, seed=0)


def test_a_fold_is_what_the_loaders_read(tmp_path):
    root = make_image_folder(tmp_path / "d", {"train": 4, "val": 2})  # 3 classes x 6 images
    seen = []
    for fold in range(3):
        data = ImageFolderData(root, batch_size=4, image_size=32, folds=3, fold=fold, split_seed=0)
        train, val = data.loaders(data_preprocess(), seed=0)
        val_paths = [path for path, _ in val.dataset.samples]
        train_paths = [path for path, _ in train.dataset.samples]
        assert len(val_paths) == 6 and len(train_paths) == 12 and not set(val_paths) & set(train_paths)
        assert data.fingerprint().counts["val"] == {"ants": 2, "bees": 2, "wasps": 2}
        seen += val_paths
    assert sorted(seen) == sorted(str(p) for p in root.rglob("*.png"))


def data_preprocess():
    from tl.models.backbones import Preprocess

    return Preprocess(32, 32, "bilinear", (0.5,) * 3, (0.5,) * 3)
