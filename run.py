"""Train one transfer-learning experiment: compose the config, build the parts, train, track.

python run.py                                   # the offline default
python run.py strategy=frozen lr=1e-2           # change any option or key
python run.py -m strategy=finetune,frozen lr=1e-3,1e-2   # a sweep: one parent MLflow run
python run.py rerun=RUN_ID                      # the same run again, from its recorded config
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from tl.config import check_top_level
from tl.errors import one_line_errors
from tl.provenance import code_state, environment
from tl.tracking import recorded_config
from tl.trainer import seed_everything


def train(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    overrides, choices = list(hydra_cfg.overrides.task), dict(hydra_cfg.runtime.choices)
    if cfg.rerun:  # the original run's recorded config, not today's conf/ defaults
        cfg, choices = recorded_config(cfg, overrides)
    check_top_level(cfg)
    seed_everything(cfg.seed)
    data = instantiate(cfg.data)
    model = instantiate(cfg.model, num_classes=len(data.classes))
    train_loader, val_loader = data.loaders(model.preprocess, seed=cfg.seed)
    strategy = instantiate(cfg.strategy)
    optimizer = instantiate(cfg.optimizer)(strategy.param_groups(model, cfg.lr))
    schedule = instantiate(cfg.scheduler)(optimizer, epochs=cfg.epochs, steps_per_epoch=len(train_loader))
    trainer = instantiate(cfg.trainer)
    code, dataset = code_state(Path(__file__).parent), data.fingerprint()

    with instantiate(cfg.tracking, overrides=overrides) as tracker:
        tracker.log_config(cfg, choices, hydra_cfg)
        tracker.log_provenance(code, environment(trainer.device), dataset, model)
        if cfg.rerun:
            tracker.warn_if_changed(cfg.rerun, code, dataset, model)
        result = trainer.fit(model, strategy, optimizer, schedule, train_loader, val_loader, tracker)
        tracker.log_result(result, model, data.classes, data.preprocess(model.preprocess), val_loader.dataset)
    return result.best_val_acc


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
@one_line_errors
def main(cfg: DictConfig) -> float:
    return train(cfg)


if __name__ == "__main__":
    main()
