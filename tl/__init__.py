"""tl: transfer learning for small image datasets as configurable, tracked experiments.

The package is a stack of layers; each imports only from the layers below it (checked by import-linter,
`[tool.importlinter]` in pyproject.toml; docs/architecture.md draws it):

    sweeps | serving     a sweep's parent run, Optuna searches | predicting with a logged model
    tracking             the MLflow run: stores, tags, the logged config, rerun= and resume=
    training             the epoch loop, strategies, frozen features, checkpoints, schedules
    data | evaluation    image folders, manifests, folds, transforms | reports and intervals
    models               pretrained backbones, the logged model's code and format
    core                 errors, config checks, metrics, numerics, processes, provenance

run.py and predict.py, at the top, compose the layers from the config.
"""
