"""lr=auto: the range test suggests a rate where the loss falls fastest, and leaves the model as it was."""

from __future__ import annotations

import copy

import torch
from omegaconf import OmegaConf

from tests.helpers import compose_config
from tests.test_trainer import loaders, tiny_model
from tl.core.checks import check_config
from tl.training import lr_finder
from tl.training.strategies import Finetune


def test_the_range_test_suggests_a_rate_on_the_steepest_descent_and_restores_the_weights():
    model = tiny_model()
    before = copy.deepcopy(model.network.state_dict())
    train, _ = loaders(n=60)
    test = lr_finder.range_test(
        model, model.network, Finetune(), lambda groups: torch.optim.SGD(groups, lr=1.0, momentum=0.9), train,
        torch.device("cpu"), steps=40, start_lr=1e-5, end_lr=10.0,
    )  # fmt: skip
    assert 1e-5 <= test.suggestion <= 10.0 and len(test.lrs) == len(test.losses) >= 20
    assert test.lrs == sorted(test.lrs)  # an exponential sweep upwards
    considered = test.losses[lr_finder.SKIP_START : -lr_finder.SKIP_END]
    index = test.lrs.index(test.suggestion) - lr_finder.SKIP_START
    slopes = [b - a for a, b in zip(considered, considered[1:], strict=False)]
    assert slopes[max(index - 1, 0)] <= 0 or slopes[min(index, len(slopes) - 1)] <= 0  # the loss falls there
    after = model.network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm statistics as before
    assert test.figure().axes[0].get_xscale() == "log"


def test_lr_auto_passes_the_checks_and_resolve_sets_the_configs_lr():
    cfg = compose_config(["lr=auto"])
    check_config(cfg)
    assert lr_finder.resolve(OmegaConf.create({"lr": 0.01}), None, None, None, None, None) is None
    model = tiny_model()
    cfg = OmegaConf.create({"lr": "auto", "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 1e-3}})
    train, _ = loaders(n=60)
    test = lr_finder.resolve(cfg, model, model, Finetune(), train, torch.device("cpu"))
    assert cfg.lr == test.suggestion and isinstance(cfg.lr, float)
