import pickle
import random

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from tl import checkpoints
from tl.checkpoints import Checkpoint
from tl.errors import TLError

RUN_ID = "0123456789abcdef0123456789abcdef"
ABOUT = {"run_id": RUN_ID, "config": "lr: 0.1\n"}  # what run.py adds to every saved state


def test_save_replaces_the_file_whole_and_leaves_no_partial_file(tmp_path):
    checkpoint = Checkpoint(tmp_path / "checkpoints" / "last.pt", ABOUT)
    checkpoint.save({"epochs_done": 1, "weights": torch.ones(3)})
    checkpoint.save({"epochs_done": 2, "weights": torch.zeros(3)})
    state = checkpoints.load(checkpoint.path)
    assert state["epochs_done"] == 2 and state["run_id"] == RUN_ID and torch.equal(state["weights"], torch.zeros(3))
    assert [p.name for p in checkpoint.path.parent.iterdir()] == ["last.pt"]
    checkpoint.remove()
    assert not checkpoint.path.exists()


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path):
    checkpoint = Checkpoint(tmp_path / "last.pt", ABOUT)
    checkpoint.save({"epochs_done": 1})
    with pytest.raises((pickle.PicklingError, AttributeError)):  # a local function cannot be pickled
        checkpoint.save({"epochs_done": 2, "not saveable": lambda: None})
    assert checkpoints.load(checkpoint.path)["epochs_done"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_rng_states_round_trip_through_a_weights_only_load(tmp_path):
    generator = torch.Generator().manual_seed(5)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    Checkpoint(tmp_path / "last.pt", ABOUT).save({"epochs_done": 1, "rng": checkpoints.rng_states(generator)})
    expected = (random.random(), np.random.rand(), torch.rand(1), torch.rand(1, generator=generator))
    random.seed(7), np.random.seed(7), torch.manual_seed(7), generator.manual_seed(7)
    checkpoints.restore_rng_states(checkpoints.load(tmp_path / "last.pt")["rng"], generator)
    assert (random.random(), np.random.rand(), torch.rand(1), torch.rand(1, generator=generator)) == expected


def test_locate_takes_a_file_a_run_folder_or_a_run_id(tmp_path):
    path = tmp_path / "run" / checkpoints.LAST
    Checkpoint(path, ABOUT).save({"epochs_done": 1})
    never = lambda run_id: pytest.fail("not a run id")  # noqa: E731
    assert checkpoints.locate(resume(path), never) == path
    assert checkpoints.locate(resume(tmp_path / "run"), never) == path
    assert checkpoints.locate(resume(RUN_ID), lambda run_id: str(tmp_path / "run")) == path
    with pytest.raises(TLError, match="not a checkpoint file, a run's output folder or an MLflow run id"):
        checkpoints.locate(resume("nonsense"), never)
    with pytest.raises(TLError, match=r"last.pt does not exist; .* finished"):
        checkpoints.locate(resume(tmp_path), never)
    with pytest.raises(TLError, match="rerun= and resume= are both set"):
        checkpoints.locate(OmegaConf.create({"resume": str(path), "rerun": RUN_ID}), never)


def resume(value) -> DictConfig:
    return OmegaConf.create({"resume": str(value), "rerun": None})


def test_load_names_a_file_that_is_not_a_checkpoint_in_one_line(tmp_path):
    (tmp_path / "last.pt").write_text("not a checkpoint")
    with pytest.raises(TLError, match="is not a readable tl checkpoint") as error:
        checkpoints.load(tmp_path / "last.pt")
    assert "\n" not in str(error.value)
    torch.save({"state_dict": {}, "classes": ["a", "b"]}, tmp_path / "best.pt")  # the MLflow artifact
    with pytest.raises(TLError, match=r"best.pt is not a training state to resume"):
        checkpoints.load(tmp_path / "best.pt")


def test_a_resume_restores_the_recorded_config_and_may_change_only_where_it_runs():
    state = {"config": OmegaConf.to_yaml({"lr": 0.1, "device": "auto", "rerun": None}), "choices": {"model": "m"}}
    config, choices = checkpoints.resumed_config("x", ["resume=x", "device=cpu"], state)
    assert (config.lr, config.device, config.resume, choices) == (0.1, "cpu", "x", {"model": "m"})
    with pytest.raises(TLError, match=r"resume: `lr=0.2` would change the run being continued"):
        checkpoints.resumed_config("x", ["resume=x", "lr=0.2"], state)
