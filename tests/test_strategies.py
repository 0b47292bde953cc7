"""Each strategy trains exactly the parameters it claims, and frozen parts do not move at all."""

import pytest
import torch

from tests.helpers import make_image_folder
from tl.data.folders import image_folder
from tl.models.backbones import efficientnet_lite0
from tl.training.strategies import Finetune, Frozen, Gradual, Partial, ProbeThenFinetune
from tl.training.trainer import Trainer

FEATURE_PASS = Trainer(epochs=1, device="cpu", precision="32", progress=False).feature_pass()


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def train_steps(model, strategy, epoch: int, optimizer, steps: int = 2) -> None:
    strategy.start_epoch(model, epoch)
    torch.manual_seed(epoch)
    for _ in range(steps):
        images, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 3, (4,))
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model.network(images), labels).backward()
        optimizer.step()


def changed(before: dict[str, torch.Tensor], model) -> set[str]:
    after = model.network.state_dict()
    return {name for name, tensor in before.items() if not torch.equal(tensor, after[name])}


def names_of(model, modules) -> set[str]:
    ids = {id(t) for m in modules for t in [*m.parameters(), *m.buffers()]}
    return {name for name, t in model.network.state_dict(keep_vars=True).items() if id(t) in ids}


@pytest.fixture
def model():
    torch.manual_seed(0)
    return efficientnet_lite0(num_classes=3)


def optimizer_for(strategy, model, lr=0.1):
    return torch.optim.SGD(strategy.param_groups(model, lr), lr=lr, momentum=0.9)


def test_frozen_keeps_backbone_weights_and_batchnorm_statistics_bit_identical(model):
    strategy = Frozen()
    before = snapshot(model.network)
    train_steps(model, strategy, 0, optimizer_for(strategy, model))
    head = names_of(model, [model.head])
    assert changed(before, model) == head  # every backbone weight and BN buffer is untouched
    assert any("running_mean" in name for name in before)  # there are BN statistics to check


def test_frozen_gives_the_optimizer_only_the_head(model):
    groups = Frozen().param_groups(model, 1e-3)
    assert [p for g in groups for p in g["params"]] == list(model.head.parameters())


def test_finetune_changes_backbone_weights(model):
    strategy = Finetune()
    before = snapshot(model.network)
    train_steps(model, strategy, 0, optimizer_for(strategy, model))
    moved = changed(before, model)
    assert "conv_stem.weight" in moved and "bn1.running_mean" in moved
    assert names_of(model, [model.head]) <= moved


def received_gradient(model) -> set[str]:
    return {name for name, p in model.network.named_parameters() if p.grad is not None}


def buffers_of(model, modules) -> set[str]:
    ids = {id(b) for m in modules for b in m.buffers()}
    return {name for name, b in model.network.named_buffers() if id(b) in ids}


@pytest.mark.parametrize("n", [1, 3])
def test_partial_trains_exactly_the_last_n_blocks_and_head(model, n):
    # Portable across CPUs: which tensors get a gradient, which the optimizer holds, and which stay
    # bit-identical are exact everywhere; whether a tiny update moves a float32 value is not.
    strategy = Partial(n=n)
    before = snapshot(model.network)
    optimizer = optimizer_for(strategy, model)
    train_steps(model, strategy, 0, optimizer)
    trained_modules = [*model.blocks[-n:], model.head]
    claimed = names_of(model, trained_modules)
    claimed_params = {name for name, p in model.network.named_parameters() if name in claimed}
    assert received_gradient(model) == claimed_params
    optimised = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert optimised == {id(p) for m in trained_modules for p in m.parameters()}
    assert {id(p) for p in model.network.parameters() if p.requires_grad} == optimised
    assert changed(before, model) <= claimed  # everything else is bit-identical
    # The trained blocks run in train mode, so their BatchNorm statistics move (by a lot: a batch's mean).
    statistics = {name for name in buffers_of(model, model.blocks[-n:]) if name.endswith("running_mean")}
    assert statistics and statistics <= changed(before, model)


def test_partial_rejects_more_blocks_than_the_backbone_has(model):
    from tl.core.errors import TLError

    with pytest.raises(TLError, match="out of range"):
        Partial(n=len(model.blocks) + 1).param_groups(model, 1e-3)


def test_gradual_trains_head_first_then_everything_with_lower_backbone_lr(model):
    strategy = Gradual(freeze_epochs=1, backbone_lr_mult=0.1)
    optimizer = optimizer_for(strategy, model, lr=0.1)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == {"backbone": pytest.approx(0.01), "head": 0.1}

    before = snapshot(model.network)
    train_steps(model, strategy, 0, optimizer)
    assert changed(before, model) == names_of(model, [model.head])

    before = snapshot(model.network)
    train_steps(model, strategy, 1, optimizer)
    moved = changed(before, model)
    assert "conv_stem.weight" in moved and "blocks.3.0.conv_pw.weight" in moved
    assert names_of(model, [model.head]) <= moved


def test_probe_then_finetune_fits_the_head_on_cached_features_then_trains_every_weight(model, tmp_path):
    data = image_folder(str(make_image_folder(tmp_path / "data")), batch_size=4, image_size=32)
    train_loader, val_loader = data.loaders(model.preprocess, seed=0)
    strategy = ProbeThenFinetune(probe_weight_decay=1e-3, probe_steps=50, backbone_lr_mult=0.1)
    before = snapshot(model.network)
    fitted, train, val = strategy.fit_inputs(model, data, train_loader, val_loader, FEATURE_PASS)
    assert fitted is model and (train, val) == (train_loader, val_loader)  # fine-tuning reads the images
    assert changed(before, model) == names_of(model, [model.head])  # the probe moved the head alone
    start = strategy.validated_start()
    assert start is not None and len(start.labels) == len(val_loader.dataset)
    with torch.no_grad():  # the probe's predictions are the handed-over model's own
        images = torch.stack([val_loader.dataset[i][0] for i in range(len(val_loader.dataset))])
        torch.testing.assert_close(model.network.eval()(images), start.logits, rtol=1e-4, atol=1e-4)

    optimizer = optimizer_for(strategy, model, lr=0.1)
    assert {g["name"]: g["lr"] for g in optimizer.param_groups} == {"backbone": pytest.approx(0.01), "head": 0.1}
    before = snapshot(model.network)
    train_steps(model, strategy, 0, optimizer)
    moved = changed(before, model)
    assert "conv_stem.weight" in moved and "blocks.3.0.conv_pw.weight" in moved
    assert names_of(model, [model.head]) <= moved


def test_probe_then_finetune_with_batchnorm_frozen_trains_weights_but_keeps_the_pretrained_statistics(model):
    strategy = ProbeThenFinetune(batchnorm_frozen=True)
    before = snapshot(model.network)
    train_steps(model, strategy, 0, optimizer_for(strategy, model))
    moved = changed(before, model)
    statistics = {name for name in before if name.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert statistics and not moved & statistics  # the running statistics are the pretrained ones
    assert "conv_stem.weight" in moved and "bn1.weight" in moved  # weights train, BatchNorm's scale too
    unfrozen = ProbeThenFinetune()
    train_steps(model, unfrozen, 0, optimizer_for(unfrozen, model))
    assert changed(before, model) & statistics  # without it, training updates them


def test_other_strategies_hand_over_an_untrained_model():
    assert all(s.validated_start() is None for s in (Finetune(), Frozen(), Partial(n=1), Gradual()))
