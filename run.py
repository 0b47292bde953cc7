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
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from tl.cli import exit_without_teardown
from tl.config import check_config
from tl.errors import Interrupted, one_line_errors
from tl.runs import create_store_in_background

if TYPE_CHECKING:
    from tl.distributed import Processes


def train(cfg: DictConfig, processes: Processes) -> float:
    # Imported here, once main has checked the config: torch, timm and MLflow take seconds to import,
    # and `--help`, `--cfg job` or a mistake in the config should not wait for them.
    from tl import checkpoints, features
    from tl.distributed import OtherRank
    from tl.numerics import seed_everything
    from tl.provenance import code_state, environment
    from tl.reproduce import recorded_config, recorded_output_dir

    logging.getLogger("tl").info("starting: config checked, libraries loaded")  # benchmarks/overhead.py reads it
    hydra_cfg = HydraConfig.get()
    overrides, choices = list(hydra_cfg.overrides.task), dict(hydra_cfg.runtime.choices)
    checkpoint_path, resumed = Path(hydra_cfg.runtime.output_dir, checkpoints.LAST), None
    if cfg.resume:  # the run as it started, continued after its last finished epoch
        checkpoint_path = checkpoints.locate(cfg, lambda run_id: recorded_output_dir(run_id, cfg.tracking.uri))
        resumed = checkpoints.load(checkpoint_path)
        cfg, choices = checkpoints.resumed_config(cfg.resume, overrides, resumed)
    elif cfg.rerun:  # the original run's recorded config, not today's conf/ defaults
        cfg, choices = recorded_config(cfg, overrides)
    check_config(cfg)  # the config in effect: for rerun= and resume=, the recorded one
    trainer = instantiate(cfg.trainer, processes=processes)  # first: its settings are checked before any work
    # Each process draws its own augmentations; DDP starts every process from rank 0's weights.
    seed_everything(cfg.seed + processes.rank)
    data = instantiate(cfg.data)
    model = instantiate(cfg.model, num_classes=len(data.classes))
    train_loader, val_loader = data.loaders(
        model.preprocess, seed=cfg.seed, processes=processes, pin_memory=trainer.device.type == "cuda"
    )
    strategy = instantiate(cfg.strategy)
    optimizer = instantiate(cfg.optimizer)(strategy.param_groups(model, cfg.lr))
    schedule = instantiate(cfg.scheduler)(optimizer, epochs=cfg.epochs, steps_per_epoch=len(train_loader))
    code, dataset = code_state(Path(__file__).parent), data.fingerprint()
    machine = environment(trainer.device, trainer.precision, processes.world_size, trainer.inference_precision)
    trained, fit_train, fit_val = model, train_loader, val_loader  # what the epoch loop sees
    if getattr(strategy, "cache_features", False) and not processes.distributed:
        trained = features.head_only(model)
        fit_train, fit_val = features.cached_loaders(
            model, data.train_views(model.preprocess), val_loader.dataset, train_loader, val_loader, trainer,
            strategy.cache_dir, dataset.sha256,
        )  # fmt: skip

    run_id = resumed["run_id"] if resumed else None
    tracking = instantiate(cfg.tracking, overrides=overrides, run_id=run_id) if processes.is_main else OtherRank()
    try:
        with tracking as tracker:
            if resumed:
                tracker.log_missing_epochs(resumed["history"])
            else:
                tracker.log_config(cfg, choices, hydra_cfg)
                tracker.log_provenance(code, machine, dataset, model)
            if cfg.rerun:
                tracker.warn_if_changed(cfg.rerun, code, dataset, model)
            about = {"run_id": tracker.run_id, "config": OmegaConf.to_yaml(cfg), "choices": choices}
            checkpoint = checkpoints.Checkpoint(checkpoint_path, about)
            result = trainer.fit(
                trained, strategy, optimizer, schedule, fit_train, fit_val, tracker, checkpoint, resumed
            )
            tracker.log_result(result, model, data.classes, data.preprocess(model.preprocess), val_loader.dataset)
    except KeyboardInterrupt as interrupt:
        if not processes.is_main:
            raise  # rank 0 says how to resume
        if not checkpoint_path.is_file():
            raise Interrupted("interrupted before the first epoch finished; there is nothing to resume") from interrupt
        raise Interrupted(
            f"interrupted; the last finished epoch is saved: continue with `python run.py resume={checkpoint_path}`"
        ) from interrupt
    if processes.is_main:  # the process that wrote it; the run is complete and logged
        checkpoint.remove()
    return result.best_val_acc


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
@one_line_errors
def main(cfg: DictConfig) -> float:
    check_config(cfg)  # before anything heavy is imported: a mistake is answered at once
    if os.environ.get("RANK", "0") == "0":  # the process that logs (under torchrun, rank 0)
        create_store_in_background(cfg.tracking.uri)  # a new MLflow store, while torch loads
    from tl import distributed

    processes = distributed.start(cfg.device)  # one, or several under torchrun
    if not processes.is_main:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 reports progress
    try:
        return train(cfg, processes)
    finally:
        distributed.stop(processes)


if __name__ == "__main__":
    main()
    exit_without_teardown()  # the work is done and logged: skip 1.5-2 s of module teardown
