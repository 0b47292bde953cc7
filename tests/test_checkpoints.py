import pickle
import random

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tl.core.errors import Interrupted, TLError
from tl.training import checkpoints
from tl.training.checkpoints import Checkpoint, TrainingState

RUN_ID = "0123456789abcdef0123456789abcdef"
ABOUT = {"run_id": RUN_ID, "config": "lr: 0.1\n", "choices": {"model": "m"}}  # what run.py adds to every state


def state(epochs_done: int, weights: torch.Tensor | None = None, **changes) -> TrainingState:
    weights = {"w": torch.ones(3) if weights is None else weights}
    fields = dict(optimizer={}, scheduler={}, grad_scaler={}, rng={}, history=[], best_epoch=0, best_logits=None)
    fields.update(changes)
    return TrainingState(epochs_done, weights, best_network=weights, best_labels=None, **fields)


def test_save_replaces_the_file_whole_and_leaves_no_partial_file(tmp_path):
    checkpoint = Checkpoint(tmp_path / "checkpoints" / "last.pt", ABOUT)
    checkpoint.save(state(1, torch.ones(3)))
    checkpoint.save(state(2, torch.zeros(3)))
    saved = checkpoints.load(checkpoint.path)
    assert (saved.epochs_done, saved.run_id, saved.choices) == (2, RUN_ID, {"model": "m"})
    assert torch.equal(saved.network["w"], torch.zeros(3))
    assert [p.name for p in checkpoint.path.parent.iterdir()] == ["last.pt"]
    checkpoint.remove()
    assert not checkpoint.path.exists()


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path):
    checkpoint = Checkpoint(tmp_path / "last.pt", ABOUT)
    checkpoint.save(state(1))
    with pytest.raises((pickle.PicklingError, AttributeError)):  # a local function cannot be pickled
        checkpoint.save(state(2, history=[{"not saveable": lambda: None}]))
    assert checkpoints.load(checkpoint.path).epochs_done == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_rng_states_round_trip_through_a_weights_only_load(tmp_path):
    generator = torch.Generator().manual_seed(5)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    Checkpoint(tmp_path / "last.pt", ABOUT).save(state(1, rng=checkpoints.rng_states(generator)))
    expected = (random.random(), np.random.rand(), torch.rand(1), torch.rand(1, generator=generator))
    random.seed(7), np.random.seed(7), torch.manual_seed(7), generator.manual_seed(7)
    checkpoints.restore_rng_states(checkpoints.load(tmp_path / "last.pt").rng, generator)
    assert (random.random(), np.random.rand(), torch.rand(1), torch.rand(1, generator=generator)) == expected


def test_locate_takes_a_file_a_run_folder_or_a_run_id(tmp_path):
    path = tmp_path / "run" / checkpoints.LAST
    Checkpoint(path, ABOUT).save(state(1))
    never = lambda run_id: pytest.fail("not a run id")  # noqa: E731
    assert checkpoints.locate(str(path), never) == path
    assert checkpoints.locate(str(tmp_path / "run"), never) == path
    assert checkpoints.locate(RUN_ID, lambda run_id: str(tmp_path / "run")) == path
    with pytest.raises(TLError, match="not a checkpoint file, a run's output folder or an MLflow run id"):
        checkpoints.locate("nonsense", never)
    with pytest.raises(TLError, match=r"last.pt does not exist; .* finished"):
        checkpoints.locate(str(tmp_path), never)


def test_load_names_a_file_that_is_not_a_checkpoint_in_one_line(tmp_path):
    (tmp_path / "last.pt").write_text("not a checkpoint")
    with pytest.raises(TLError, match="is not a readable tl checkpoint") as error:
        checkpoints.load(tmp_path / "last.pt")
    assert "\n" not in str(error.value)
    torch.save({"state_dict": {}, "classes": ["a", "b"]}, tmp_path / "best.pt")  # the MLflow artifact
    with pytest.raises(TLError, match=r"best.pt is not a training state to resume"):
        checkpoints.load(tmp_path / "best.pt")
    torch.save({"config": "", "run_id": RUN_ID, "epochs_done": 1, "best": {}}, tmp_path / "old.pt")  # tl before 2026-11
    with pytest.raises(TLError, match=r"old.pt was written by an earlier version of tl"):
        checkpoints.load(tmp_path / "old.pt")


def test_only_the_writer_process_saves_and_removes(tmp_path):
    path = tmp_path / "last.pt"
    Checkpoint(path, ABOUT, writer=False).save(state(1))
    assert not path.exists()
    Checkpoint(path, ABOUT).save(state(1))
    Checkpoint(path, ABOUT, writer=False).remove()
    assert path.is_file()


def test_around_a_training_the_checkpoint_goes_when_it_ends_and_says_how_to_resume_on_ctrl_c(tmp_path):
    nothing_yet = pytest.raises(Interrupted, match="before the first epoch finished; there is nothing to resume")
    with nothing_yet, Checkpoint(tmp_path / "last.pt", ABOUT):
        raise KeyboardInterrupt
    how_to_resume = pytest.raises(Interrupted, match=rf"continue with `python run.py resume={tmp_path / 'last.pt'}`")
    with how_to_resume, Checkpoint(tmp_path / "last.pt", ABOUT) as checkpoint:
        checkpoint.save(state(1))
        raise KeyboardInterrupt
    with Checkpoint(tmp_path / "last.pt", ABOUT):  # a run that ends: its state is no longer needed
        pass
    assert not (tmp_path / "last.pt").exists()


def test_a_resume_restores_the_recorded_config_and_may_change_only_where_it_runs():
    saved = state(1, config=OmegaConf.to_yaml({"lr": 0.1, "device": "auto", "rerun": None}), choices={"model": "m"})
    config, choices = checkpoints.resumed_config("x", ["resume=x", "device=cpu"], saved)
    assert (config.lr, config.device, config.resume, choices) == (0.1, "cpu", "x", {"model": "m"})
    with pytest.raises(TLError, match=r"resume: `lr=0.2` would change the run being continued"):
        checkpoints.resumed_config("x", ["resume=x", "lr=0.2"], saved)
