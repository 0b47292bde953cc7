"""Every check of a config value, so that an impossible value stops the run before any work starts.

Light on purpose (no torch, timm or MLflow): run.py checks the config before it imports them, so a
mistake is answered at once. The classes that take these values (`Trainer`, `ImageFolderData`,
`MlflowTracker`) call `check_value` for their own keys, so each rule is written once, here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from omegaconf import DictConfig, OmegaConf

from tl.core import metrics
from tl.core.errors import TLError

PRECISIONS = ("auto", "32", "bf16", "16-mixed")
BAD_IMAGE_POLICIES = ("skip", "error")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def duration_seconds(duration: object) -> float | None:
    """`90`, `90s`, `1.5m`, `2h` -> seconds; None -> None; anything else (or not > 0) -> nan."""
    if duration is None:
        return None
    matched = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", str(duration).strip())
    seconds = float(matched[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[matched[2]] if matched else math.nan
    return seconds if seconds > 0 else math.nan


# key -> (is the value allowed, what is allowed: the end of "KEY must be ...").
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "lr": (lambda v: v == "auto" or (_is_number(v) and v > 0), "a number > 0, e.g. lr=1e-3, or auto (a range test)"),
    "epochs": (lambda v: _is_int(v) and v >= 1, "a whole number >= 1"),
    "batch_size": (lambda v: _is_int(v) and v >= 1, "a whole number >= 1"),
    "seed": (_is_int, "a whole number"),
    "device": (
        lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v) is not None,
        "auto, cpu, mps, cuda or cuda:N",
    ),
    "sweep_on_failure": (lambda v: v in ("continue", "stop"), "continue or stop"),
    "budget": (
        lambda v: not isinstance(v, bool) and not math.isnan(duration_seconds(v) or 0),
        "null or a duration, in seconds or with s, m or h: budget=90s, budget=5m",
    ),
    "monitor": (lambda v: v in metrics.DIRECTIONS, f"a metric tl logs each epoch: {', '.join(metrics.DIRECTIONS)}"),
    "mode": (lambda v: v in metrics.MODES, ", ".join(metrics.MODES)),
    # Nested keys: checked where the composed config has them (an option may leave one out).
    "trainer.precision": (lambda v: str(v) in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
    "data.on_bad_image": (lambda v: v in BAD_IMAGE_POLICIES, " or ".join(BAD_IMAGE_POLICIES)),
    "data.folds": (lambda v: v is None or (_is_int(v) and v >= 2), "null or a whole number >= 2"),
    "data.fold": (lambda v: _is_int(v) and v >= 0, "a whole number >= 0 (the fold to validate on)"),
    "tracking.fallback": (lambda v: v in (None, "local"), "null or local"),
    "tracking.uri": (
        lambda v: v is None or urlsplit(str(v)).password is None,
        "a URI without a password: give it in MLFLOW_TRACKING_PASSWORD (and MLFLOW_TRACKING_USERNAME)",
    ),
}
_ABSENT = object()
# Top-level keys that configs recorded by earlier versions of tl lack (rerun=, resume=): their defaults apply.
ADDED_LATER = ("monitor", "mode", "budget")

# For conf/hparams_search/optuna.yaml: Optuna's direction follows `monitor` and `mode`.
OmegaConf.register_new_resolver("tl.optuna_direction", metrics.optuna_direction, replace=True)


def check_value(key: str, value: Any) -> None:
    """One line naming the key, the value and what is allowed, if `value` is not allowed for `key`."""
    allowed, description = RULES[key]
    if not allowed(value):
        shown = "(a URI with a password)" if key == "tracking.uri" else repr(value)  # never echo a password
        raise TLError(f"{key}={shown} is not allowed: {key} must be {description}")


def check_config(cfg: DictConfig) -> None:
    """Every rule above, for the first bad key; also rerun= with resume=, which contradict each other."""
    for key in RULES:
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT and ("." in key or key in ADDED_LATER):
            continue  # an option may leave a nested key out: its class's default applies
        check_value(key, None if value is _ABSENT else value)  # a missing top-level key is reported as None
    if cfg.get("rerun") and cfg.get("resume"):
        raise TLError("rerun= and resume= are both set: rerun starts a new run, resume continues one; choose one")


def override_key(override: str) -> str:
    """`+data.root=/x` -> `data.root`"""
    return override.lstrip("+~").split("=", 1)[0]
