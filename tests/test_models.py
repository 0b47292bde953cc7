import urllib.error

import pytest
import torch
from PIL import Image
from skimage import data as skimage_data
from timm.data import ImageNetInfo, create_transform, resolve_data_config
from torch import nn

from tl.core.errors import TLError
from tl.core.provenance import file_sha256
from tl.models.backbones import (
    Preprocess,
    efficientnet_lite0,
    efficientnet_lite0_imagenet,
    timm_model,
    torchvision_model,
)


@pytest.mark.parametrize(
    ("photo", "expected"),
    [("chelsea", {"tabby, tabby cat", "tiger cat", "Egyptian cat"}), ("coffee", {"espresso", "cup", "coffee mug"})],
)
def test_efficientnet_lite0_weights_are_imagenet_trained(photo, expected):
    network, _ = efficientnet_lite0_imagenet()
    network.eval()
    transform = create_transform(**resolve_data_config(model=network))
    image = Image.fromarray(getattr(skimage_data, photo)())
    with torch.no_grad():
        top5 = network(transform(image)[None]).topk(5).indices[0].tolist()
    names = {ImageNetInfo().index_to_description(i) for i in top5}
    assert len(names & expected) >= 2, names


def test_efficientnet_lite0_head_and_preprocess_come_from_weights():
    model = efficientnet_lite0(num_classes=7)
    assert isinstance(model.head, nn.Linear) and model.head.out_features == 7
    assert model.network(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    assert model.preprocess == Preprocess(224, 256, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert "efficientnet-lite0" in model.weights
    assert all(model.head not in list(block.modules()) for block in model.blocks)


def test_preprocess_at_size_keeps_crop_ratio():
    pre = Preprocess(224, 256, "bilinear", (0.5,) * 3, (0.5,) * 3)
    assert pre.at_size(112).resize_size == 128
    assert pre.at_size(None) is pre


def test_torchvision_model_replaces_last_linear_and_reads_weights_transforms():
    model = torchvision_model("resnet18", num_classes=3, pretrained=False)
    assert model.network.fc is model.head and model.head.out_features == 3
    assert model.preprocess == Preprocess(224, 256, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert [type(b).__name__ for b in model.blocks] == ["Conv2d", "BatchNorm2d"] + ["Sequential"] * 4
    assert model.blocks[-1] is model.network.layer4


def test_torchvision_blocks_descend_into_features_container():
    model = torchvision_model("mobilenet_v3_small", num_classes=4, pretrained=False)
    assert model.head.out_features == 4
    assert model.blocks == list(model.network.features.children())


def test_torchvision_local_weights_file_is_loaded(tmp_path):
    source = torchvision_model("resnet18", num_classes=1000, pretrained=False).network
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    model = torchvision_model("resnet18", num_classes=2, weights=str(path))
    assert torch.equal(model.network.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    assert str(path) in model.weights


def test_torchvision_offline_without_cache_names_weights_and_offline_choices(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)
    with pytest.raises(TLError) as error:
        torchvision_model("resnet18", num_classes=2)
    message = str(error.value)
    assert "resnet18-f37072fd.pth" in message
    for choice in ("model=efficientnet_lite0", "model.weights=PATH", "model.pretrained=false"):
        assert choice in message


def test_timm_offline_without_cache_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    # huggingface_hub reads the variables when it is imported, which may have happened already.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(TLError, match="model.pretrained=false"):
        timm_model("resnet10t", num_classes=2)


def test_timm_model_without_pretrained_weights():
    model = timm_model("resnet10t", num_classes=5, pretrained=False)
    assert model.head.out_features == 5
    assert model.preprocess.interpolation == "bicubic"
    # The blocks are the backbone's stages in order: none holds the head, and together with the head they
    # hold every parameter of the network, each once.
    assert len(model.blocks) >= 2 and all(model.head not in list(block.modules()) for block in model.blocks)
    in_blocks = [id(p) for block in model.blocks for p in block.parameters()]
    assert len(in_blocks) == len(set(in_blocks))
    assert set(in_blocks) | {id(p) for p in model.head.parameters()} == {id(p) for p in model.network.parameters()}


@pytest.mark.parametrize("factory", [timm_model, torchvision_model])
def test_unknown_architecture_is_a_user_error(factory):
    with pytest.raises(TLError, match="unknown"):
        factory("resnet_does_not_exist", num_classes=2, pretrained=False)


def test_missing_weights_file_is_a_user_error():
    with pytest.raises(TLError, match="no such file"):
        torchvision_model("resnet18", num_classes=2, weights="/nonexistent/weights.pth")


def test_sha256_of_shipped_weights_matches_file_name():
    # The package names the file after its digest (efficientnet-lite0-57934424.pth).
    _, path = efficientnet_lite0_imagenet()
    assert file_sha256(path).startswith("57934424")
