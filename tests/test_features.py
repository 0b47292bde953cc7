import copy
import threading
import time

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers import make_image_folder
from tl.data.folders import image_folder
from tl.models.backbones import efficientnet_lite0
from tl.training import features
from tl.training.trainer import Trainer

CPU_TRAINER = Trainer(epochs=1, device="cpu", precision="32")


def test_the_head_on_cached_features_gives_the_full_networks_logits(tmp_path):
    model = efficientnet_lite0(num_classes=3)
    data = image_folder(str(make_image_folder(tmp_path / "data")), batch_size=4, image_size=32)
    views = data.train_views(model.preprocess)
    cached = features.extract(model, views, batch_size=5, device=torch.device("cpu"))
    assert len(cached) == len(views) == 18 and cached.tensors[0].shape == (18, model.head.in_features)
    images = torch.stack([views[i][0] for i in range(len(views))])
    with torch.no_grad():
        full = model.network.eval()(images)
        from_cache = model.head(cached.tensors[0])
    torch.testing.assert_close(from_cache, full, rtol=1e-4, atol=1e-4)
    assert cached.tensors[1].tolist() == [views[i][1] for i in range(len(views))]
    assert model.network.get_classifier() is model.head  # the head is back in place


def test_cached_loaders_keep_the_image_loaders_batching_and_shuffle(tmp_path):
    model = efficientnet_lite0(num_classes=3)
    data = image_folder(str(make_image_folder(tmp_path / "data", {"train": 5, "val": 2})), batch_size=7, image_size=32)
    train_loader, val_loader = data.loaders(model.preprocess, seed=0)
    train, val = features.cached_loaders(
        model, data.train_views(model.preprocess), val_loader.dataset, train_loader, val_loader, CPU_TRAINER
    )
    assert isinstance(train.dataset, TensorDataset) and len(train) == len(train_loader) and len(val) == len(val_loader)
    assert train.generator is train_loader.generator  # its state is what a checkpoint saves
    # The batches a plain shuffled DataLoader draws from the same generator state, in the same order.
    plain_generator = torch.Generator()
    plain_generator.set_state(train_loader.generator.get_state())
    plain = DataLoader(train.dataset, batch_size=7, shuffle=True, generator=plain_generator, drop_last=True)
    for _ in range(2):  # two epochs
        ours, theirs = list(train), list(plain)
        assert len(ours) == len(theirs) == 2  # 15 images, batches of 7: the lone last image is dropped
        assert all(torch.equal(a, b) for x, y in zip(ours, theirs, strict=True) for a, b in zip(x, y, strict=True))
    assert [len(labels) for _, labels in val] == [6]
    head_model = features.head_only(model)
    assert head_model.network is model.head and head_model.head is model.head


def _cached(model, data, cache_dir, trainer=CPU_TRAINER):
    train_loader, val_loader = data.loaders(model.preprocess, seed=0)
    views = data.train_views(model.preprocess)
    sha = data.fingerprint().sha256
    return features.cached_loaders(
        model, views, val_loader.dataset, train_loader, val_loader, trainer.feature_pass(), cache_dir, sha
    )


def test_computing_the_features_leaves_torchs_random_state_as_loading_them_does(tmp_path):
    # A run that computes the features and its rerun that loads them must draw the same augmentations after.
    model = efficientnet_lite0(num_classes=3)
    data = image_folder(str(make_image_folder(tmp_path / "data")), batch_size=4, image_size=32)
    draws = []
    for _ in ("computed", "loaded"):
        torch.manual_seed(0)
        _cached(model, data, tmp_path / "features")
        draws.append(torch.rand(3))
    assert len(list((tmp_path / "features").glob("*.pt"))) == 1  # the second call loaded them
    torch.manual_seed(0)
    assert torch.equal(draws[0], draws[1]) and torch.equal(draws[0], torch.rand(3))


def test_features_on_disk_are_reused_by_the_next_run_instead_of_computed(tmp_path, monkeypatch):
    model = efficientnet_lite0(num_classes=3)
    data = image_folder(str(make_image_folder(tmp_path / "data")), batch_size=4, image_size=32)
    first_train, first_val = _cached(model, data, tmp_path / "features")
    assert len(list((tmp_path / "features").glob("*.pt"))) == 1
    monkeypatch.setattr(features, "extract", lambda *args, **kwargs: pytest.fail("features computed again"))
    second_train, second_val = _cached(model, data, tmp_path / "features")
    for first, second in ((first_train, second_train), (first_val, second_val)):
        for ours, theirs in zip(first.dataset.tensors, second.dataset.tensors, strict=True):
            assert torch.equal(ours, theirs)


def test_parallel_jobs_that_need_the_same_features_compute_them_once(tmp_path, monkeypatch):
    model = efficientnet_lite0(num_classes=3)
    data = image_folder(str(make_image_folder(tmp_path / "data")), batch_size=4, image_size=32)
    computed, compute = [], features._compute

    def slow_compute(*args, **kwargs):
        computed.append(threading.get_ident())
        time.sleep(0.5)  # long enough for the other job to reach the cache while this one computes
        return compute(*args, **kwargs)

    monkeypatch.setattr(features, "_compute", slow_compute)
    start, results = threading.Barrier(2), {}

    def job(name: str, own_model) -> None:  # each job its own model, as each process has
        start.wait()
        results[name] = _cached(own_model, data, tmp_path / "features")

    jobs = [threading.Thread(target=job, args=(name, copy.deepcopy(model))) for name in ("a", "b")]
    for thread in jobs:
        thread.start()
    for thread in jobs:
        thread.join(timeout=120)
    assert len(computed) == 1  # the other job waited, then loaded what the first computed
    for first, second in zip(results["a"], results["b"], strict=True):
        for ours, theirs in zip(first.dataset.tensors, second.dataset.tensors, strict=True):
            assert torch.equal(ours, theirs)


def test_the_cache_key_changes_with_the_weights_the_transforms_the_images_the_splits_and_the_precision(
    tmp_path,
):
    model = efficientnet_lite0(num_classes=3)
    folder = make_image_folder(tmp_path / "data")
    data = image_folder(str(folder), batch_size=4, image_size=32)

    def key(model=model, data=data, trainer=CPU_TRAINER):
        _, val_loader = data.loaders(model.preprocess, seed=0)
        views = data.train_views(model.preprocess)
        return features.cache_key(model, views, val_loader.dataset, data.fingerprint().sha256, trainer.feature_pass())

    original = key()
    assert key() == original  # a new head (another run) does not change the backbone's features
    assert key(model=efficientnet_lite0(num_classes=5)) == original
    assert key(model=efficientnet_lite0(num_classes=3, pretrained=False)) != original
    assert key(data=image_folder(str(folder), batch_size=4, image_size=48)) != original
    assert key(trainer=Trainer(epochs=1, device="cpu", precision="bf16")) != original
    folds = [image_folder(str(folder), batch_size=4, image_size=32, folds=3, fold=i) for i in range(3)]
    assert len({key(data=fold) for fold in folds} | {original}) == 4  # the same images, other splits
    (folder / "train" / "ants" / "0.png").write_bytes((folder / "train" / "bees" / "0.png").read_bytes())
    assert key(data=image_folder(str(folder), batch_size=4, image_size=32)) != original


def test_a_damaged_cache_entry_is_computed_again_and_replaced(tmp_path, caplog):
    model = efficientnet_lite0(num_classes=3)
    data = image_folder(str(make_image_folder(tmp_path / "data")), batch_size=4, image_size=32)
    expected, _ = _cached(model, data, tmp_path / "features")
    (entry,) = (tmp_path / "features").glob("*.pt")
    entry.write_bytes(entry.read_bytes()[:100])
    again, _ = _cached(model, data, tmp_path / "features")
    assert "unreadable" in caplog.text
    assert torch.equal(again.dataset.tensors[0], expected.dataset.tensors[0])
    assert torch.load(entry, weights_only=True)["train"][0].shape == expected.dataset.tensors[0].shape


def test_the_feature_pass_batch_shrinks_with_the_image_area_on_a_cpu():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert features.extract_batch_size(cpu, 224 * 224) == 8
    assert features.extract_batch_size(cpu, 112 * 112) == 32
    assert features.extract_batch_size(cpu, 32 * 32) == 64 and features.extract_batch_size(cpu, 512 * 512) == 2
    assert features.extract_batch_size(gpu, 224 * 224) == 64


def test_the_probe_is_a_deterministic_regularised_logistic_regression():
    generator = torch.Generator().manual_seed(0)
    rule = torch.randn(16, 4, generator=generator)  # four classes, linearly separable
    train_x, val_x = torch.randn(1000, 16, generator=generator), torch.randn(50, 16, generator=generator)
    train, val = (train_x, (train_x @ rule).argmax(1)), (val_x, (val_x @ rule).argmax(1))

    def probe(weight_decay: float) -> tuple[torch.nn.Linear, object]:
        torch.manual_seed(1)
        head = torch.nn.Linear(16, 4)
        return head, features.fit_probe(head, train, val, weight_decay=weight_decay, steps=100)

    head, predictions = probe(1e-3)
    assert (predictions.predicted == val[1]).float().mean() >= 0.9
    again, repeated = probe(1e-3)
    assert torch.equal(head.weight, again.weight) and torch.equal(predictions.logits, repeated.logits)
    strong, _ = probe(1.0)
    assert strong.weight.norm() < head.weight.norm() / 3  # the penalty shrinks the weights
    with torch.no_grad():
        torch.testing.assert_close(head(val[0]), predictions.logits)
