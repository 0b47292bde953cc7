"""A recorded config is data, not code: rerun= and resume= refuse code keys tl's conf/ does not offer."""

import mlflow
import pytest
import torch
from omegaconf import OmegaConf

from tests.helpers import CONF_DIR, ROOT, compose_config, run_cli
from tl.core.errors import TLError
from tl.tracking import allowlist
from tl.training.checkpoints import Checkpoint, TrainingState

OFFERS = allowlist.offered(CONF_DIR, ROOT / "experiments")


def marker_block(marker) -> dict:
    """What an attacker puts in a recorded config: a `_target_` that creates a file when instantiated."""
    return {"_target_": "builtins.open", "_args_": [str(marker), "w"]}


def test_plain_values_may_differ_from_conf_and_conf_s_own_interpolations_pass():
    changed = {"lr": 0.5, "data": {"root": "/elsewhere", "batch_size": 3, "cache_dir": "/tmp/x"}}
    recorded = OmegaConf.merge(OmegaConf.to_container(compose_config(["data=hymenoptera"])), changed)
    allowlist.check(recorded, OFFERS, "rerun=abc")
    assert OmegaConf.to_container(recorded, resolve=False)["data"]["manifest_dir"].startswith("${oc.env:TL_CACHE_DIR")


def test_every_option_of_every_group_passes():
    for group in sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in {"hydra", "hparams_search"}):
        for option in sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")):
            allowlist.check(compose_config([f"{group}={option}"]), OFFERS, "test")
    allowlist.check(compose_config(["+experiment=tutorial_frozen"]), OFFERS, "test")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"data": {"_target_": "builtins.open", "_args_": ["x", "w"]}}, "data._target_=builtins.open"),
        ({"data": {"_target_": "tl.data.folders.image_folder", "_args_": ["x"]}}, "data._args_"),
        ({"optimizer": {"_partial_": False}}, "optimizer._partial_=false"),
        ({"model": {"weights": {"_target_": "os.system", "command": "true"}}}, "model.weights._target_"),
        ({"data": {"train_crop_scale": [{"_target_": "os.getcwd"}, 1.0]}}, "data.train_crop_scale.0._target_"),
        ({"trainer": {"_target_": "${oc.env:EVIL}"}}, "trainer._target_=${oc.env:EVIL}"),
        # An interpolation that builds a config node out of a string, at a key conf/ has: OmegaConf
        # would resolve it into a new _target_ when Hydra instantiates the block.
        ({"data": {"root": '${oc.decode:"{_target_: os.system, _args_: [id]}"}'}}, "data.root=${oc.decode:"),
        ({"data": {"train_crop_scale": [["${oc.env:HOME}"], 1.0]}}, "data.train_crop_scale=${oc.env:HOME}"),
        ({"data": {"cache_dir": "${oc.env:MLFLOW_TRACKING_PASSWORD}"}}, "data.cache_dir=${oc.env:MLFLOW"),
        ({"data": {"url": "https://example.org/x.zip"}}, "data.url, a key no option of conf/ has there"),
    ],
)
def test_a_code_key_conf_does_not_offer_there_is_one_line_naming_it(change, named):
    tampered = OmegaConf.merge(OmegaConf.to_container(compose_config()), change)  # as read back: no struct
    with pytest.raises(TLError, match="rerun=abc: the recorded config sets") as error:
        allowlist.check(tampered, OFFERS, "rerun=abc")
    assert named in str(error.value) and "\n" not in str(error.value)


@pytest.mark.slow
def test_rerun_of_a_run_whose_recorded_config_was_changed_runs_nothing(tmp_path, mlflow_uri):
    marker = tmp_path / "marker"
    recorded = OmegaConf.to_container(compose_config())
    recorded["data"] = marker_block(marker)
    mlflow.set_experiment("tl")
    with mlflow.start_run() as run:  # as tl logs a run's config, then changed by someone who can write there
        mlflow.log_text(OmegaConf.to_yaml(recorded), "config/config.yaml")
        mlflow.log_text(OmegaConf.to_yaml({"data": "fashion_sample"}), "config/choices.yaml")
    result = run_cli(f"rerun={run.info.run_id}", cwd=tmp_path, mlflow_uri=mlflow_uri)
    assert result.returncode == 1, result.stderr[-2000:]
    (line,) = [line for line in result.stderr.splitlines() if "error:" in line]
    assert f"rerun={run.info.run_id}: the recorded config sets data._target_=builtins.open" in line
    assert not marker.exists()


@pytest.mark.slow
def test_resume_from_a_checkpoint_whose_config_was_changed_runs_nothing(tmp_path, mlflow_uri):
    marker = tmp_path / "marker"
    recorded = OmegaConf.to_container(compose_config())
    recorded["model"] = marker_block(marker)
    weights = {"w": torch.zeros(1)}
    state = TrainingState(1, weights, {}, {}, {}, {}, [], 0, weights, None, None)
    Checkpoint(tmp_path / "last.pt", {"run_id": "0" * 32, "config": OmegaConf.to_yaml(recorded),
                                      "choices": {"model": "efficientnet_lite0"}}).save(state)  # fmt: skip
    result = run_cli(f"resume={tmp_path / 'last.pt'}", cwd=tmp_path, mlflow_uri=mlflow_uri)
    assert result.returncode == 1, result.stderr[-2000:]
    (line,) = [line for line in result.stderr.splitlines() if "error:" in line]
    assert "the recorded config sets model._target_=builtins.open" in line
    assert not marker.exists()


@pytest.mark.slow
def test_a_resume_logs_to_this_commands_store_not_to_the_one_its_checkpoint_names(tmp_path, mlflow_uri):
    recorded = OmegaConf.to_container(compose_config())
    recorded["tracking"]["uri"] = "http://127.0.0.1:9"  # where a tampered checkpoint would send the login
    weights = {"w": torch.zeros(1)}
    state = TrainingState(1, weights, {}, {}, {}, {}, [], 0, weights, None, None)
    Checkpoint(tmp_path / "last.pt", {"run_id": "0" * 32, "config": OmegaConf.to_yaml(recorded),
                                      "choices": {}}).save(state)  # fmt: skip
    result = run_cli(f"resume={tmp_path / 'last.pt'}", cwd=tmp_path, mlflow_uri=mlflow_uri)
    assert result.returncode == 1
    (line,) = [line for line in result.stderr.splitlines() if "error:" in line]
    assert f"is not in {mlflow_uri}" in line and "127.0.0.1:9" not in result.stderr  # it asked this store
