"""Train one transfer-learning experiment: compose the config, build the parts, train, track.

python run.py                                   # the offline default
python run.py strategy=frozen lr=1e-2           # change any option or key
python run.py -m strategy=finetune,frozen lr=1e-3,1e-2   # a sweep: one parent MLflow run
python run.py rerun=RUN_ID                      # the same run again, from its recorded config
python run.py resume=RUN_ID_OR_FOLDER            # continue a run that crashed or was stopped
torchrun --nproc_per_node=2 run.py               # one run over two processes (DDP)
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from tl.core.checks import check_config
from tl.core.cli import exit_without_teardown, one_line_errors, quiet_libraries
from tl.tracking.stores import create_store_in_background

if TYPE_CHECKING:
    from tl.core.distributed import Processes

STARTED = time.monotonic()  # the command's start, but for run.py's light imports: a `budget=` counts from here
ROOT = Path(__file__).parent  # the project: its git state is recorded with every run
# HEAVY: train() imports torch, timm and MLflow itself (seconds), once main has checked the config:
# `--help`, `--cfg job` or a mistake in the config should not wait for them.


def train(cfg: DictConfig, processes: Processes) -> float:
    """One run, step by step: the config in effect, the parts built from it, the fit, the results logged."""
    from tl.core import distributed, numerics, provenance  # after main's checks: see HEAVY above
    from tl.sweeps import pruning
    from tl.tracking import reproduce
    from tl.training import lr_finder

    logging.getLogger("tl").info("starting: config checked, libraries loaded")  # benchmarks/overhead.py reads it
    run = reproduce.effective_run(cfg, HydraConfig.get())  # this command's, or rerun='s or resume='s recorded one
    cfg = run.config
    check_config(cfg)
    # First: its settings are checked before any work; its time budget counts from the command's start.
    judge = pruning.trial_judge(HydraConfig.get().sweeper.get("pruner"), cfg.epochs)  # in a search that prunes
    trainer = instantiate(cfg.trainer, processes=processes, started=STARTED, judge=judge)
    numerics.seed_everything(cfg.seed + processes.rank)  # each process draws its own augmentations
    data = instantiate(cfg.data)
    model = instantiate(cfg.model, num_classes=len(data.classes))
    train_loader, val_loader = data.loaders(model.preprocess, cfg.seed, processes, pin_memory=trainer.pin_memory)
    strategy = instantiate(cfg.strategy)
    trained, fit_train, fit_val = strategy.fit_inputs(model, data, train_loader, val_loader, trainer.feature_pass())
    lr_test = lr_finder.resolve(cfg, model, trained, strategy, fit_train, trainer.device)  # lr=auto sets cfg.lr
    optimizer = instantiate(cfg.optimizer)(strategy.param_groups(model, cfg.lr))
    schedule = instantiate(cfg.scheduler)(optimizer, epochs=cfg.epochs, steps_per_epoch=len(fit_train))
    tracking = distributed.main_only(processes, run.tracker)  # only rank 0 logs
    # The checkpoint outlives the MLflow run: it is removed only once the run has ended FINISHED.
    with run.checkpoint(writer=processes.is_main) as checkpoint, tracking as tracker:
        checkpoint.record_run(tracker.run_id)
        tracker.log_start(run, provenance.code_state(ROOT), trainer.environment(), data.fingerprint(), model, lr_test)
        result = trainer.fit(trained, strategy, optimizer, schedule, fit_train, fit_val, tracker, checkpoint=checkpoint)
        tracker.log_result(result, model, data.classes, data.preprocess(model.preprocess), val_loader.dataset)
    return result.best_value


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
@one_line_errors
def main(cfg: DictConfig) -> float:
    """`python run.py [key=value ...]`: check the config at once, start the processes, train."""
    check_config(cfg)  # before anything heavy is imported: a mistake is answered at once
    if os.environ.get("RANK", "0") == "0":  # the process that logs (under torchrun, rank 0)
        create_store_in_background(cfg.tracking.uri)  # a new MLflow store, while torch loads
    from tl.core import distributed

    processes = distributed.start(cfg.device)  # one, or several under torchrun
    if not processes.is_main:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 reports progress
    try:
        return train(cfg, processes)
    finally:
        distributed.stop(processes)


if __name__ == "__main__":
    quiet_libraries()  # only tl's lines and progress bars on the terminal
    main()
    exit_without_teardown()  # the work is done and logged: skip 1.5-2 s of module teardown
