"""Predict with a model logged by tl: a CSV of class and probability for each image.

python predict.py model_uri=runs:/<run_id>/model input=photo.jpg
python predict.py model_uri=models:/ants_vs_bees@champion input=folder/ output=predictions.csv
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
import mlflow
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from tl.core.cli import exit_without_teardown, one_line_errors, quiet_libraries
from tl.serving.prediction import list_inputs, load_logged_model, predict_to_csv
from tl.tracking.stores import refuse_password

log = logging.getLogger("tl")


def run(cfg: DictConfig) -> float | None:
    """Predict every image of `cfg.input` with `cfg.model_uri`, write the CSV; the accuracy if labelled."""
    refuse_password(cfg.tracking_uri or mlflow.get_tracking_uri())  # it would be printed with any error
    if cfg.tracking_uri:
        mlflow.set_tracking_uri(cfg.tracking_uri)
    model = load_logged_model(cfg.model_uri, allow_pickle=cfg.allow_pickle)
    rows = list_inputs(Path(cfg.input).expanduser())
    output = Path(cfg.output or Path(HydraConfig.get().runtime.output_dir, "predictions.csv"))
    threads = (os.cpu_count() or 1) if cfg.threads == "auto" else int(cfg.threads)
    tally = predict_to_csv(model, rows, output, cfg.batch_size, threads, model_uri=cfg.model_uri)
    score = tally.accuracy
    log.info(
        "predicted %d image(s), %d unreadable%s; wrote %s",
        tally.predicted, tally.unreadable,
        f"; accuracy {score:.4f} against the folder labels" if score is not None else "", output,
    )  # fmt: skip
    return score


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
@one_line_errors
def main(cfg: DictConfig) -> float | None:
    """`python predict.py model_uri=URI input=PATH`: see `run`."""
    return run(cfg)


if __name__ == "__main__":
    quiet_libraries()  # only tl's lines and progress bars on the terminal
    main()
    exit_without_teardown()  # the work is done and logged: skip 1.5-2 s of module teardown
