"""Every option of every config group composes and instantiates; presets carry the tutorial's recipe."""

import re

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from tests.helpers import CONF_DIR, ROOT, compose_config, make_image_folder
from tl.data.folders import ImageFolderData
from tl.models.backbones import TransferModel
from tl.tracking.tracker import MlflowTracker
from tl.training.schedulers import Schedule
from tl.training.strategies import Strategy
from tl.training.trainer import Trainer

# Every config group in conf/, found there: a new group or option is tested without editing this file.
# hparams_search configures Hydra's sweeper, not a part of the run (tests/test_cli.py runs it).
GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in {"hydra", "hparams_search"})
# Options that need a value no default can give (an architecture, a folder), and models kept offline.
NEEDS = {
    ("model", "torchvision"): ["model.name=mobilenet_v3_small", "model.pretrained=false"],
    ("model", "timm"): ["model.name=resnet10t", "model.pretrained=false"],
    ("model", "resnet18"): ["model.pretrained=false"],
}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_every_option_in_conf_is_in_the_readmes_options_table():
    rows = {}  # group -> the options its row of README's "Options" table names
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.split("|")[1:-1]]
        if len(cells) == 3 and re.fullmatch(r"`\w+`", cells[0]):
            rows[cells[0].strip("`")] = set(re.findall(r"`(\w+)`", cells[1]))
    assert {"model", "strategy", "data"} <= set(GROUPS)  # the discovery finds the groups
    for group in [*GROUPS, "hparams_search"]:
        assert set(options(group)) <= rows.get(group, set()), f"conf/{group}/ options missing from the README"


_default_models: dict[int, TransferModel] = {}


def built_model(group: str, option: str, cfg, num_classes: int) -> TransferModel:
    """The model option under test, built; for the other groups the default model, built once (the options
    of the other groups do not change it, and building it is most of each case's time)."""
    if group == "model":
        return instantiate(cfg.model, num_classes=num_classes)
    if num_classes not in _default_models:
        _default_models[num_classes] = instantiate(cfg.model, num_classes=num_classes)
    return _default_models[num_classes]


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in options(g)])
def test_option_composes_and_instantiates(tmp_path, group, option):
    root = make_image_folder(tmp_path / "data", {"train": 2, "val": 1})
    make_image_folder(tmp_path / "cache" / "hymenoptera_data", {"train": 2, "val": 1})
    cfg = compose_config(
        [
            f"{group}={option}",
            f"data.root={root}" if option == "image_folder" else "lr=1e-3",
            *NEEDS.get((group, option), []),
        ]
        + ([f"data.cache_dir={tmp_path / 'cache'}"] if option == "hymenoptera" else [])
    )
    data = instantiate(cfg.data)
    assert isinstance(data, ImageFolderData)
    model = built_model(group, option, cfg, len(data.classes))
    assert isinstance(model, TransferModel)
    assert model.network(torch.randn(2, 3, 64, 64)).shape == (2, len(data.classes))
    strategy = instantiate(cfg.strategy)
    assert isinstance(strategy, Strategy)  # the contract a new strategy implements (tl/training/strategies.py)
    optimizer = instantiate(cfg.optimizer)(strategy.param_groups(model, cfg.lr))
    assert isinstance(optimizer, torch.optim.Optimizer)
    schedule = instantiate(cfg.scheduler)(optimizer, epochs=cfg.epochs, steps_per_epoch=3)
    assert isinstance(schedule, Schedule)
    assert isinstance(instantiate(cfg.tracking), MlflowTracker)
    assert isinstance(instantiate(cfg.trainer), Trainer)


def test_top_level_lr_reaches_the_optimizer():
    cfg = compose_config(["lr=1e-2", "optimizer=adamw"])
    optimizer = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(1))])
    assert optimizer.param_groups[0]["lr"] == 1e-2


@pytest.mark.parametrize("strategy", ["finetune", "frozen"])
def test_tutorial_presets_carry_the_tutorials_exact_recipe(strategy):
    cfg = compose_config([f"+experiment=tutorial_{strategy}"])
    assert cfg.model.name == "resnet18" and cfg.model._target_ == "tl.models.backbones.torchvision_model"
    assert cfg.strategy._target_ == f"tl.training.strategies.{strategy.capitalize()}"
    assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.lr == 1e-3 and cfg.optimizer.momentum == 0.9
    assert (cfg.scheduler._target_, cfg.scheduler.step_size, cfg.scheduler.gamma) == (
        "tl.training.schedulers.step",
        7,
        0.1,
    )
    assert (cfg.batch_size, cfg.epochs, cfg.data.batch_size) == (4, 25, 4)
    assert cfg.data._target_ == "tl.data.folders.hymenoptera" and cfg.data.image_size is None


@pytest.mark.parametrize(("overrides", "direction"), [([], "maximize"), (["monitor=val_loss"], "minimize"),
                                                      (["monitor=val_loss", "mode=max"], "maximize")])  # fmt: skip
def test_optunas_direction_follows_monitor_and_mode(overrides, direction):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["hparams_search=optuna", *overrides], return_hydra_config=True)
    assert cfg.hydra.sweeper.direction == direction
    assert (cfg.hydra.callbacks.mlflow_sweep.monitor, cfg.trainer.monitor) == (cfg.monitor, cfg.monitor)


def test_launcher_configs_compose_without_their_clusters():
    for launcher, target in (("joblib", "JoblibLauncher"), ("submitit_slurm", "SlurmLauncher")):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
        assert cfg.hydra.launcher._target_.endswith(target)
        assert cfg.hydra.callbacks.mlflow_sweep._target_ == "tl.sweeps.parent_run.SweepParentRun"
