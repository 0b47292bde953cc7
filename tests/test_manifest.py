"""The manifest: what the set-up pass learned about each image, kept between runs (tl/data/manifest.py)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image
from torchvision import datasets
from torchvision.datasets.folder import IMG_EXTENSIONS

from tests.helpers import BAD_IMAGES, ROOT, compose_config, make_image_folder
from tl.core.provenance import file_sha256
from tl.data.folders import ImageFolderData
from tl.data.images import image_problem
from tl.data.manifest import VERSION, DatasetFingerprint

AN_HOUR_AGO = time.time() - 3600


def age(root: Path, when: float = AN_HOUR_AGO) -> Path:
    """Files written just now are examined again by the next run (they may still change within their
    timestamp's tick): the tests that expect records to be kept date their files back."""
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, (when, when))
    return root


def build(root: Path, manifest_dir: Path | None, **kwargs) -> ImageFolderData:
    return ImageFolderData(root, batch_size=4, manifest_dir=manifest_dir, **kwargs)


def manifest_file(manifest_dir: Path) -> Path:
    [path] = manifest_dir.glob("*.json")
    return path


def old_fingerprint(data: ImageFolderData) -> DatasetFingerprint:
    """The fingerprint as tl computed it before the manifest: every loadable file stat'ed and hashed."""
    bad = {path for path, _ in data.bad_images}
    files, counts = [], {}
    class_to_idx = {name: i for i, name in enumerate(data.classes)}
    for split in ("train", "val"):
        counts[split] = {name: 0 for name in data.classes}
        for path, target in datasets.folder.make_dataset(data.root / split, class_to_idx, IMG_EXTENSIONS):
            relative = Path(path).relative_to(data.root).as_posix()
            if relative not in bad:
                counts[split][data.classes[target]] += 1
                files.append((relative, Path(path).stat().st_size, file_sha256(Path(path))))
    files.sort()
    digest = hashlib.sha256("".join(f"{p}\t{s}\t{h}\n" for p, s, h in files).encode()).hexdigest()
    return DatasetFingerprint(digest, counts, files, list(data.bad_images), str(data.root))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return age(make_image_folder(tmp_path / "data"))


def test_the_fingerprint_is_the_one_computed_by_hashing_every_file(folder_with_bad_images, tmp_path):
    age(folder_with_bad_images)
    for manifest_dir in (None, tmp_path / "manifests", tmp_path / "manifests"):  # none, first run, repeat run
        data = build(folder_with_bad_images, manifest_dir)
        assert data.fingerprint() == old_fingerprint(data)
        assert data.fingerprint().skipped == BAD_IMAGES


def test_a_repeat_run_on_an_unchanged_folder_reads_decodes_and_hashes_nothing(folder, tmp_path, monkeypatch):
    first = build(folder, tmp_path / "manifests").fingerprint()
    calls = []
    readers = (
        "tl.data.manifest.Manifest._examine",
        "pathlib.Path.read_bytes",
        "tl.core.provenance.file_sha256",
    )  # read, hash
    for target in (*readers, "tl.data.folders.image_problem", "PIL.Image.open"):  # decode
        monkeypatch.setattr(target, lambda *args, _name=target, **kwargs: calls.append(_name))
    again = build(folder, tmp_path / "manifests")
    assert again.fingerprint() == first
    assert calls == []


def test_a_file_changed_in_place_is_hashed_again(folder, tmp_path):
    # BMP: the same size for any picture of the same dimensions.
    path = folder / "train" / "ants" / "same_size.bmp"
    Image.new("RGB", (32, 32), (200, 40, 40)).save(path)
    age(folder)
    before = build(folder, tmp_path / "manifests").fingerprint()
    size = path.stat().st_size
    Image.new("RGB", (32, 32), (40, 40, 200)).save(path)
    os.utime(path, (AN_HOUR_AGO + 60, AN_HOUR_AGO + 60))
    assert path.stat().st_size == size
    after = build(folder, tmp_path / "manifests").fingerprint()
    assert after.sha256 != before.sha256 and after.changes_from(before.files) == ["~ train/ants/same_size.bmp"]
    assert after == old_fingerprint(build(folder, None))


def test_an_edit_that_keeps_size_and_mtime_is_only_seen_with_recheck(folder, tmp_path):
    path = folder / "val" / "bees" / "same_size.bmp"
    Image.new("RGB", (32, 32), (200, 40, 40)).save(path)
    age(folder)
    before = build(folder, tmp_path / "manifests").fingerprint()
    Image.new("RGB", (32, 32), (40, 40, 200)).save(path)
    age(folder)  # the mtime put back, as git's index would not notice either
    assert build(folder, tmp_path / "manifests").fingerprint() == before
    rechecked = build(folder, tmp_path / "manifests", recheck=True).fingerprint()
    assert rechecked.changes_from(before.files) == ["~ val/bees/same_size.bmp"]
    assert build(folder, tmp_path / "manifests").fingerprint() == rechecked  # and the manifest was rewritten


def test_a_removed_and_an_added_file_are_seen(folder, tmp_path):
    before = build(folder, tmp_path / "manifests").fingerprint()
    (folder / "train" / "bees" / "0.png").unlink()
    (folder / "val" / "wasps" / "new.png").write_bytes((folder / "val" / "ants" / "1.png").read_bytes())
    after = build(folder, tmp_path / "manifests").fingerprint()
    assert after.changes_from(before.files) == ["+ val/wasps/new.png", "- train/bees/0.png"]
    assert after.counts["train"]["bees"] == 5 and after.counts["val"]["wasps"] == 4
    assert after.sha256 != before.sha256
    assert after == old_fingerprint(build(folder, None))
    assert "train/bees/0.png" not in json.loads(manifest_file(tmp_path / "manifests").read_text())["files"]


def test_bad_images_come_back_from_the_manifest_unchanged(folder_with_bad_images, tmp_path, monkeypatch):
    age(folder_with_bad_images)
    first = build(folder_with_bad_images, tmp_path / "manifests")
    assert first.bad_images == BAD_IMAGES
    monkeypatch.setattr("tl.data.folders.image_problem", lambda contents: pytest.fail("an image was checked again"))
    again = build(folder_with_bad_images, tmp_path / "manifests")
    assert again.bad_images == BAD_IMAGES and again.fingerprint() == first.fingerprint()
    with pytest.raises(Exception, match="4 unreadable image"):
        build(folder_with_bad_images, tmp_path / "manifests", on_bad_image="error")


def test_the_check_gives_the_same_answer_for_a_file_and_its_contents(folder_with_bad_images):
    for path in folder_with_bad_images.rglob("*.*"):
        assert image_problem(path) == image_problem(path.read_bytes())


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],  # cut short
        lambda text: "\x00garbage\xff",
        lambda text: "[]",
        lambda text: text.replace(f'"version":{VERSION}', f'"version":{VERSION + 1}'),
        lambda text: text.replace('"files":{', '"files":{"x.png":[1,2],'),
        lambda text: text.replace('"files":{', '"files":{"x.png":[1,2,"not a digest",null],'),
    ],
    ids=["truncated", "garbage", "not-an-object", "other-version", "short-record", "bad-record"],
)
def test_a_damaged_manifest_is_rebuilt(folder, tmp_path, damage, caplog):
    expected = build(folder, tmp_path / "manifests").fingerprint()
    path = manifest_file(tmp_path / "manifests")
    path.write_text(damage(path.read_text()))
    with caplog.at_level(logging.INFO, logger="tl.data.manifest"):
        assert build(folder, tmp_path / "manifests").fingerprint() == expected
    assert any(str(path) in record.getMessage() and "rebuilding" in record.getMessage() for record in caplog.records)
    files = json.loads(path.read_text())["files"]
    assert len(files) == 27 and "x.png" not in files


WORKER = """
import logging, sys, time
from pathlib import Path
logging.basicConfig(level=logging.INFO)  # the manifest's "checking N new or changed file(s)" line
from tl.data.folders import ImageFolderData
root, manifest_dir, ready, go = sys.argv[1:]
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.005)
print(ImageFolderData(root, batch_size=4, manifest_dir=manifest_dir).fingerprint().sha256)
"""


def test_two_processes_building_the_manifest_at_once_both_get_it_right_and_only_one_examines(tmp_path):
    folder = age(make_image_folder(tmp_path / "data", {"train": 30, "val": 10}))
    manifests, go = tmp_path / "manifests", tmp_path / "go"
    readies = [tmp_path / f"ready{i}" for i in range(2)]
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(folder), str(manifests), str(ready), str(go)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for ready in readies
    ]
    deadline = time.monotonic() + 120
    while not all(ready.exists() for ready in readies) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()  # both start building now, with no manifest yet
    results = [worker.communicate(timeout=120) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], results
    expected = old_fingerprint(build(folder, None)).sha256
    assert [out.strip() for out, _ in results] == [expected, expected]
    # One examined the files while the other waited for it, then took its records: each file read once.
    assert sorted("checking 120 new or changed file(s)" in err for _, err in results) == [False, True], results
    assert not list(manifests.glob("*.tmp"))  # no temporary file left
    assert len(json.loads(manifest_file(manifests).read_text())["files"]) == 120
    assert build(folder, manifests).fingerprint().sha256 == expected


def test_files_written_just_now_are_examined_again_next_time(tmp_path, monkeypatch):
    folder = make_image_folder(tmp_path / "data")  # written now: their mtime is within the racy window
    first = build(folder, tmp_path / "manifests").fingerprint()
    checked = []
    monkeypatch.setattr("tl.data.folders.image_problem", lambda contents: checked.append(contents) or None)
    assert build(folder, tmp_path / "manifests").fingerprint() == first
    assert len(checked) == 27


def test_the_manifest_is_kept_in_the_tl_cache_not_in_the_data_folder(folder, feature_cache_dir):
    before = sorted(folder.rglob("*"))
    cfg = compose_config(["data=image_folder", f"data.root={folder}"])
    instantiate(cfg.data)
    assert manifest_file(feature_cache_dir / "manifests")
    assert sorted(folder.rglob("*")) == before


def test_a_manifest_that_cannot_be_saved_costs_a_warning_not_the_run(folder, tmp_path, caplog):
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    with caplog.at_level(logging.WARNING, logger="tl.data.manifest"):
        data = build(folder, blocked / "manifests")
    assert data.fingerprint() == old_fingerprint(data)
    assert any("could not save" in record.getMessage() for record in caplog.records)


def test_a_file_that_cannot_be_read_is_skipped_and_tried_again_next_time(folder, tmp_path):
    (folder / "train" / "ants" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    data = build(folder, tmp_path / "manifests")
    [(path, reason)] = data.bad_images
    assert path == "train/ants/gone.png" and reason.startswith("cannot be read: [Errno 2]")
    assert "train/ants/gone.png" not in json.loads(manifest_file(tmp_path / "manifests").read_text())["files"]
    pixels = np.full((40, 40, 3), 128, dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "nowhere.png")
    age(tmp_path)
    assert build(folder, tmp_path / "manifests").bad_images == []
