import functools
import hashlib
import http.server
import logging
import shutil
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import FashionMNIST

from tests.helpers import BAD_IMAGES, make_image_folder
from tl.core.errors import TLError
from tl.data.folders import FASHION_SAMPLE_ROOT, fashion_sample, hymenoptera, image_folder, image_problem
from tl.data.images import DecodedImages, load_image
from tl.models.backbones import Preprocess
from tl.models.pyfunc_model import Classifier
from tl.serving.prediction import Row, predict

PRE = Preprocess(224, 256, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def test_fashion_sample_ships_all_ten_classes_in_imagefolder_layout():
    data = fashion_sample(batch_size=8)
    expected = sorted(name.replace("/", "_").replace(" ", "_") for name in FashionMNIST.classes)
    assert data.classes == expected and "T-shirt_top" in expected and "Ankle_boot" in expected
    for split, count in (("train", 100), ("val", 40)):
        for name in expected:
            assert len(list((FASHION_SAMPLE_ROOT / split / name).glob("*.png"))) == count
    train_names = {p.name for p in (FASHION_SAMPLE_ROOT / "train").rglob("*.png")}
    val_names = {p.name for p in (FASHION_SAMPLE_ROOT / "val").rglob("*.png")}
    assert not train_names & val_names  # no image in both splits
    assert "MIT" in (FASHION_SAMPLE_ROOT / "NOTICE.md").read_text()
    size = sum(p.stat().st_size for p in FASHION_SAMPLE_ROOT.rglob("*") if p.is_file())
    assert size < 2_000_000


def test_loaders_convert_every_mode_to_rgb_at_the_requested_size(image_folder):
    data = image_folder_data(image_folder, image_size=32)
    train, val = data.loaders(PRE, seed=0)
    for loader in (train, val):
        images, labels = next(iter(loader))
        assert images.shape[1:] == (3, 32, 32) and images.dtype == torch.float32
    assert len(train.dataset) == 18 and len(val.dataset) == 9
    assert data.classes == ["ants", "bees", "wasps"]


def image_folder_data(root, batch_size=4, **kwargs):
    return image_folder(str(root), batch_size=batch_size, **kwargs)


def test_validation_transform_is_resize_then_centre_crop_from_the_weights_config(image_folder):
    _, val = image_folder_data(image_folder, image_size=112).transforms(PRE)
    names = [type(t).__name__ for t in val.transforms]
    assert names[:2] == ["Resize", "CenterCrop"]
    assert val.transforms[0].size == [128] and tuple(val.transforms[1].size) == (112, 112)
    assert val.transforms[0].interpolation.value == "bicubic"


def test_train_order_is_seeded(image_folder):
    data = image_folder_data(image_folder, image_size=32)
    first = [labels.tolist() for _, labels in data.loaders(PRE, seed=3)[0]]
    again = [labels.tolist() for _, labels in data.loaders(PRE, seed=3)[0]]
    assert first == again


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda root: shutil.rmtree(root), "does not exist"),
        (lambda root: shutil.rmtree(root / "val"), "val is missing"),
        (lambda root: shutil.rmtree(root / "val" / "bees"), "different class folders"),
        (lambda root: [shutil.rmtree(root / s / c) for s in ("train", "val") for c in ("bees", "wasps")], "at least 2"),
        (lambda root: [p.unlink() for p in (root / "train" / "bees").iterdir()], "hold no images"),
    ],
)
def test_bad_layouts_are_one_clear_error_naming_the_path(image_folder, breakage, message):
    breakage(image_folder)
    with pytest.raises(TLError, match=message) as error:
        image_folder_data(image_folder).loaders(PRE, seed=0)
    assert str(image_folder) in str(error.value) and "\n" not in str(error.value)


@pytest.fixture
def served_zip(tmp_path):
    """hymenoptera_data.zip made locally and served on a loopback port."""
    site = tmp_path / "site"
    make_image_folder(tmp_path / "zip_src" / "hymenoptera_data")
    shutil.make_archive(str(site / "hymenoptera_data"), "zip", tmp_path / "zip_src")
    handler = functools.partial(QuietHandler, directory=str(site))
    server = QuietServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hymenoptera_data.zip", site / "hymenoptera_data.zip", server
    server.shutdown()


class QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # torchvision probes the URL with a GET it closes early: a broken pipe, not a failure


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, *args):
        QuietHandler.requests.append(f"{self.command} {self.path}")


def test_hymenoptera_downloads_once_checks_sha256_and_extracts(tmp_path, served_zip):
    url, archive, _ = served_zip
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    data = hymenoptera(cache_dir=str(tmp_path / "cache"), url=url, sha256=digest, batch_size=4)
    assert data.classes == ["ants", "bees", "wasps"]
    assert data.root == tmp_path / "cache" / "hymenoptera_data"
    QuietHandler.requests.clear()
    hymenoptera(cache_dir=str(tmp_path / "cache"), url=url, sha256=digest, batch_size=4)
    assert QuietHandler.requests == []  # the second call used the cache


def test_hymenoptera_checksum_mismatch_removes_the_download(tmp_path, served_zip):
    url, _, _ = served_zip
    with pytest.raises(TLError, match="sha256"):
        hymenoptera(cache_dir=str(tmp_path / "cache"), url=url, sha256="0" * 64, batch_size=4)
    assert not list((tmp_path / "cache").glob("*.zip"))


def test_hymenoptera_offline_says_where_to_put_the_folder(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(TLError) as error:
        hymenoptera(cache_dir=str(cache), url="http://127.0.0.1:9/hymenoptera_data.zip", batch_size=4)
    assert str(cache / "hymenoptera_data" / "train") in str(error.value)
    assert not [p for p in cache.rglob("*") if p.is_file()]  # nothing half-written left behind


def test_hymenoptera_uses_a_folder_put_there_by_hand(tmp_path):
    make_image_folder(tmp_path / "cache" / "hymenoptera_data")
    data = hymenoptera(cache_dir=str(tmp_path / "cache"), url="http://127.0.0.1:9/x.zip", batch_size=4)
    assert data.classes == ["ants", "bees", "wasps"]


def test_fingerprint_tells_apart_datasets_that_differ_by_one_image(image_folder):
    before = image_folder_data(image_folder).fingerprint()
    assert before.counts == {"train": {"ants": 6, "bees": 6, "wasps": 6}, "val": {"ants": 3, "bees": 3, "wasps": 3}}
    assert before.sha256 == image_folder_data(image_folder).fingerprint().sha256  # stable
    shutil.copy(image_folder / "train" / "ants" / "0.png", image_folder / "train" / "ants" / "extra.png")
    (image_folder / "val" / "bees" / "1.png").write_bytes((image_folder / "val" / "bees" / "2.png").read_bytes())
    after = image_folder_data(image_folder).fingerprint()
    assert after.sha256 != before.sha256 and after.counts["train"]["ants"] == 7
    assert after.changes_from(before.files) == ["+ train/ants/extra.png", "~ val/bees/1.png"]


def test_a_lone_last_training_image_is_dropped_so_batchnorm_can_train(image_folder):
    shutil.copy(image_folder / "train" / "ants" / "0.png", image_folder / "train" / "ants" / "extra.png")
    train, _ = image_folder_data(image_folder, image_size=32, batch_size=6).loaders(PRE, seed=0)  # 19 images
    assert [len(labels) for _, labels in train] == [6, 6, 6]
    train, _ = image_folder_data(image_folder, image_size=32, batch_size=5).loaders(PRE, seed=0)
    assert [len(labels) for _, labels in train] == [5, 5, 5, 4]


def test_unreadable_images_are_found_up_front_and_skipped_with_one_warning(folder_with_bad_images, caplog):
    with caplog.at_level(logging.WARNING, logger="tl.data.folders"):
        data = image_folder_data(folder_with_bad_images, image_size=32)
    assert data.bad_images == BAD_IMAGES
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "skipping 4 unreadable image(s)" in warning.getMessage()
    assert "train/ants/truncated.png (truncated)" in warning.getMessage()
    assert "data.on_bad_image=error" in warning.getMessage()

    train, val = data.loaders(PRE, seed=0)
    assert len(train.dataset) == 18 and len(val.dataset) == 10  # the CMYK JPEG is in, the bad images are out
    [cmyk_index] = [i for i, (path, _) in enumerate(val.dataset.samples) if path.endswith("cmyk.jpg")]
    assert val.dataset[cmyk_index][0].shape == (3, 32, 32)
    assert list(train) and list(val)  # every image loads

    fingerprint = data.fingerprint()
    paths = {path for path, _, _ in fingerprint.files}
    assert "val/ants/cmyk.jpg" in paths and not paths & {path for path, _ in BAD_IMAGES}
    assert fingerprint.skipped == BAD_IMAGES and fingerprint.counts["val"]["ants"] == 4


def test_on_bad_image_error_stops_with_one_line_naming_every_bad_image(folder_with_bad_images):
    with pytest.raises(TLError) as error:
        image_folder_data(folder_with_bad_images, on_bad_image="error")
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"4 unreadable image(s) in {folder_with_bad_images}")
    assert all(f"{path} ({reason})" in message for path, reason in BAD_IMAGES)
    assert "data.on_bad_image=skip" in message


def test_a_long_list_of_bad_images_is_cut_short(image_folder):
    for i in range(12):
        (image_folder / "train" / "ants" / f"empty{i:02}.png").write_bytes(b"")
    with pytest.raises(TLError, match=r"empty09.png \(empty file\) and 2 more; fix or remove them"):
        image_folder_data(image_folder, on_bad_image="error")


def test_on_bad_image_only_takes_skip_or_error(image_folder):
    with pytest.raises(TLError, match="data.on_bad_image='x' is not allowed: data.on_bad_image must be skip or error"):
        image_folder_data(image_folder, on_bad_image="x")


def test_a_class_left_without_images_after_skipping_is_the_empty_class_error(image_folder):
    for path in (image_folder / "train" / "bees").iterdir():
        path.write_bytes(b"")
    data = image_folder_data(image_folder)
    with pytest.raises(TLError, match="class folder\\(s\\) bees hold no images"):
        data.loaders(PRE, seed=0)


def _batches(loader):
    torch.manual_seed(0)  # the same augmentation draws for both loaders
    return [(images.clone(), labels.clone()) for images, labels in loader]


def test_images_kept_in_memory_give_the_same_batches_as_files_read_every_epoch(image_folder, monkeypatch):
    cached = image_folder_data(image_folder, image_size=32, cache_images=True)
    uncached = image_folder_data(image_folder, image_size=32, cache_images=False)
    (cached_train, cached_val), (train, val) = cached.loaders(PRE, seed=1), uncached.loaders(PRE, seed=1)
    assert len(cached.images) == 0 and uncached.images is None  # nothing decoded before the first batch
    first = [(_batches(cached_train), _batches(cached_val)), (_batches(train), _batches(val))]
    assert len(cached.images) == 27  # the first epoch stored every image it read
    # The cached loaders read no file any more.
    monkeypatch.setattr("tl.data.images.load_image", lambda path, *args: pytest.fail(f"read {path}"))
    second = [(_batches(cached_train), _batches(cached_val))]
    monkeypatch.undo()
    second.append((_batches(train), _batches(val)))
    for ours, theirs in (first, second):
        for our_batches, their_batches in zip(ours, theirs, strict=True):
            assert len(our_batches) == len(their_batches)
            for (images, labels), (their_images, their_labels) in zip(our_batches, their_batches, strict=True):
                assert torch.equal(images, their_images) and torch.equal(labels, their_labels)


def test_images_that_workers_decode_are_kept_for_the_next_epochs_workers(image_folder, monkeypatch):
    data = image_folder_data(image_folder, image_size=32, num_workers=2)
    train, _ = data.loaders(PRE, seed=0)
    assert sum(len(labels) for _, labels in train) == 18
    assert len(data.images) == 18  # written by the workers, seen by the parent
    # Forked after this, the next epoch's workers fail if they read a file.
    monkeypatch.setattr("tl.data.images.load_image", lambda path, *args: pytest.fail(f"read {path}"))
    assert sum(len(labels) for _, labels in train) == 18


def test_large_images_are_kept_at_the_size_the_smallest_crop_needs(tmp_path):
    root = make_image_folder(tmp_path / "data", {"train": 2, "val": 1})
    Image.new("RGB", (900, 600), (200, 40, 40)).save(root / "train" / "ants" / "big.png")
    data = image_folder_data(root, image_size=32, train_crop_scale=(0.5, 1.0))
    train, _ = data.loaders(PRE, seed=0)
    list(train)
    stored = data.images.get(str(root / "train" / "ants" / "big.png"), 53, PRE.interpolation)
    # A crop of half the area at aspect 3:4 has a shorter side of sqrt(0.375) of the image's.
    assert stored.size == (80, 53) and stored.mode == "RGB"
    small = data.images.get(str(root / "train" / "ants" / "0.png"), 53, PRE.interpolation)
    assert small.size == (40, 40)  # smaller images are kept as they are


def test_images_past_the_memory_budget_are_read_from_disk_at_the_same_size(tmp_path):
    root = make_image_folder(tmp_path / "data")
    big = root / "train" / "ants" / "big.png"
    Image.new("RGB", (900, 600), (200, 40, 40)).save(big)
    data = image_folder_data(root, image_size=32, train_crop_scale=(0.5, 1.0))
    data.images.max_bytes = 2 * 40 * 40 * 3  # room for two of the 40 px RGB images; the big one needs 80 x 53
    train, _ = data.loaders(PRE, seed=0)
    assert sum(len(batch) for batch, _ in train) == 19
    assert len(data.images) == 2 and data.images.full and data.images.get(str(big), 53, PRE.interpolation) is None
    assert data.images.load(str(big), min_side=53).size == (80, 53)  # scaled down alike, though not kept
    images, _ = next(iter(train))
    assert images.shape[1:] == (3, 32, 32)
    assert sum(len(batch) for batch, _ in train) == 19


def test_persistent_workers_are_an_opt_in_that_needs_workers(image_folder):
    assert not image_folder_data(image_folder).loaders(PRE, seed=0)[0].persistent_workers
    assert not image_folder_data(image_folder, persistent_workers=True).persistent_workers  # no workers
    data = image_folder_data(image_folder, image_size=32, num_workers=1, persistent_workers=True)
    train, val = data.loaders(PRE, seed=0)
    assert train.persistent_workers and val.persistent_workers
    assert [len(labels) for _ in range(2) for _, labels in train] == [4, 4, 4, 4, 2] * 2


def gradient_photo(path, size):
    """A smooth JPEG, so that scaling methods can be compared on it."""
    x = np.linspace(0, 255, size[0])[None, :, None]
    y = np.linspace(0, 255, size[1])[:, None, None]
    pixels = np.concatenate([np.broadcast_to(x, (size[1], size[0], 1)), np.broadcast_to(y, (size[1], size[0], 1)),
                             np.broadcast_to((x + y) / 2, (size[1], size[0], 1))], axis=2)  # fmt: skip
    Image.fromarray(pixels.astype(np.uint8)).save(path, quality=95)
    return path


def test_a_jpeg_is_decoded_at_the_smallest_scale_that_keeps_the_side_needed(tmp_path, monkeypatch):
    path = str(gradient_photo(tmp_path / "photo.jpg", (800, 600)))
    decoded = []
    resize = Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize", lambda self, *a, **k: decoded.append(self.size) or resize(self, *a, **k))
    image = load_image(path, min_side=128)
    assert decoded == [(200, 150)]  # 1/4 scale: 1/8 (100 x 75) would be smaller than needed
    assert image.size == (171, 128) and image.mode == "RGB"
    assert load_image(path).size == (800, 600)  # no size asked: the whole image
    decoded.clear()
    assert load_image(path, min_side=600).size == (800, 600) and decoded == []  # at full scale, not resized
    monkeypatch.undo()
    with Image.open(path) as full:
        reference = full.convert("RGB").resize((171, 128), Image.Resampling.BILINEAR)  # from the whole image
    difference = np.abs(np.asarray(image, dtype=float) - np.asarray(reference, dtype=float))
    assert difference.mean() < 2  # the same picture: DCT scaling loses no more than resampling does


def test_a_stored_image_is_given_only_for_the_size_it_was_read_for(tmp_path):
    path = str(gradient_photo(tmp_path / "photo.jpg", (400, 300)))
    images = DecodedImages([path], max_bytes=2**20)
    small = images.load(path, min_side=100)
    assert images.get(path, 100).tobytes() == small.tobytes() and len(images) == 1
    assert images.get(path, 200) is None and images.get(path) is None and images.get(path, 100, "bicubic") is None
    assert images.load(path, min_side=200).size == (267, 200)  # read again, not scaled up from memory
    assert images.get(path, 100).size == (133, 100)  # the first one stays


def test_validation_and_prediction_read_an_image_alike(tmp_path):
    root = make_image_folder(tmp_path / "data", {"train": 2, "val": 1})
    photo = gradient_photo(root / "val" / "ants" / "photo.jpg", (400, 300))
    data = image_folder_data(root, image_size=32)
    _, val = data.loaders(PRE, seed=0)
    index = [path for path, _ in val.dataset.samples].index(str(photo))
    given = []

    class Recorder(torch.nn.Module):
        def forward(self, images):
            given.append(images)
            return torch.zeros(len(images), 2)

    predict(Classifier(Recorder(), ["ants", "bees"], data.preprocess(PRE)), [Row(str(photo))], batch_size=1)
    assert torch.equal(given[0][0], val.dataset[index][0])


@pytest.mark.parametrize("progressive", [False, True])
def test_a_truncated_or_corrupt_jpeg_is_found_by_the_check(tmp_path, progressive):
    photo = tmp_path / "photo.jpg"
    Image.open(gradient_photo(photo, (400, 300))).save(photo, quality=90, progressive=progressive)
    contents = photo.read_bytes()
    assert image_problem(contents) is None
    assert image_problem(contents[: len(contents) * 2 // 3]) == "truncated"
    assert image_problem(contents[:600] + bytes(len(contents) - 600)).startswith(("truncated", "cannot be decoded"))
