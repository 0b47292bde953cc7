import torch
from torch.utils.data import TensorDataset

from tests.conftest import make_image_folder
from tl import features
from tl.data import image_folder
from tl.models import efficientnet_lite0


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
        model, data.train_views(model.preprocess), val_loader.dataset, train_loader, val_loader, torch.device("cpu")
    )
    assert isinstance(train.dataset, TensorDataset) and len(train) == len(train_loader) and len(val) == len(val_loader)
    assert train.drop_last == train_loader.drop_last and train.generator is train_loader.generator
    head_model = features.head_only(model)
    assert head_model.network is model.head and head_model.head is model.head
