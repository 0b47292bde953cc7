"""Checks on the top-level keys, so that an impossible value stops the run before any work starts."""

from __future__ import annotations

import re

from omegaconf import DictConfig

from tl.errors import TLError


def check_top_level(cfg: DictConfig) -> None:
    """One line naming the key, the value and what is allowed, for the first bad key."""
    rules = {
        "lr": (lambda v: _is_number(v) and v > 0, "a number > 0, e.g. lr=1e-3"),
        "epochs": (lambda v: _is_int(v) and v >= 1, "a whole number >= 1"),
        "batch_size": (lambda v: _is_int(v) and v >= 1, "a whole number >= 1"),
        "seed": (_is_int, "a whole number"),
        "device": (
            lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v) is not None,
            "auto, cpu, mps, cuda or cuda:N",
        ),
    }
    rules["sweep_on_failure"] = (lambda v: v in ("continue", "stop"), "continue or stop")
    for key, (allowed, description) in rules.items():
        value = cfg.get(key)
        if not allowed(value):
            raise TLError(f"{key}={value!r} is not allowed: {key} must be {description}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def override_key(override: str) -> str:
    """`+data.root=/x` -> `data.root`"""
    return override.lstrip("+~").split("=", 1)[0]
