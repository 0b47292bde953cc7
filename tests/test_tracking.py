import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from tl.models import efficientnet_lite0
from tl.tracking import MlflowTracker, flatten, run_name


def test_flatten_gives_dotted_keys_and_drops_hydra_keys():
    cfg = OmegaConf.create({"lr": 0.1, "model": {"_target_": "x.y", "name": "resnet18", "inner": {"n": 2}}})
    assert flatten(cfg) == {"lr": 0.1, "model.name": "resnet18", "model.inner.n": 2}


def test_runs_are_named_by_overrides_and_sweep_jobs_by_the_swept_ones():
    overrides = ["strategy=frozen", "lr=0.01", "epochs=1", "+experiment=x"]
    assert run_name(overrides) == "strategy=frozen,lr=0.01,epochs=1,+experiment=x"
    assert run_name(overrides, ["strategy", "lr"]) == "strategy=frozen,lr=0.01"
    assert run_name([]) == "defaults"


@pytest.mark.parametrize(
    ("raised", "status"), [(None, "FINISHED"), (RuntimeError, "FAILED"), (KeyboardInterrupt, "KILLED")]
)
def test_run_ends_with_a_status_that_says_how_it_ended(mlflow_uri, raised, status):
    tracker = MlflowTracker(experiment="t", uri=mlflow_uri, overrides=["lr=0.1"])
    try:
        with tracker:
            if raised:
                raise raised()
    except (RuntimeError, KeyboardInterrupt):
        pass
    assert MlflowClient(mlflow_uri).get_run(tracker.run_id).info.status == status


def test_logged_model_loads_and_predicts_any_batch_size(mlflow_uri):
    model = efficientnet_lite0(num_classes=4)
    model.network.eval()
    example = torch.randn(2, 3, 32, 32)
    with MlflowTracker(experiment="t", uri=mlflow_uri) as tracker:
        tracker.log_model(model.network, example, metadata={"classes": ["a", "b", "c", "d"]})
    loaded = mlflow.pytorch.load_model(f"runs:/{tracker.run_id}/model")
    batch = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        expected = model.network(batch)
        np.testing.assert_allclose(loaded(batch).numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{tracker.run_id}/model")
    assert pyfunc.predict(batch.numpy()).shape == (5, 4)
    assert pyfunc.metadata.metadata["classes"] == ["a", "b", "c", "d"]
