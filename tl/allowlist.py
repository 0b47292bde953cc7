"""A recorded config is data, not code: before `rerun=` or `resume=` builds anything from one, every
key Hydra treats as code must be what tl's own conf/ offers at that place.

A run's config comes back from its MLflow run (rerun=) or its checkpoint (resume=), and anyone who
can write to a shared tracking server or to the run's folder can change it. Hydra's `instantiate`
calls whatever `_target_` names, with `_args_` and the other keys as its arguments. So a recorded
`_target_` must be one that an option of the same group gives that place (`data`:
tl.data.image_folder, tl.data.fashion_sample, ...), and `_args_`, `_partial_`, `_recursive_` and
`_convert_` may appear only where an option has them, with a value one of them has. Hydra has no
such check of its own (its `instantiate` trusts its config), hence this module.
"""

from __future__ import annotations

import importlib.resources
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tl.errors import TLError

CODE_KEYS = ("_target_", "_args_", "_partial_", "_recursive_", "_convert_")
Offers = dict[tuple[str, str], set[str]]  # (place, key) -> the values conf/'s options give it


def project_config_dirs(hydra: DictConfig) -> list[Path]:
    """The project's config folders on Hydra's search path (conf/ and experiments/), not Hydra's own."""
    folders = []
    for source in hydra.runtime.config_sources:
        if source.provider == "main" or source.provider.startswith("hydra.searchpath"):
            if source.schema == "file":
                folders.append(Path(source.path))
            elif source.schema == "pkg":
                folders.append(Path(str(importlib.resources.files(source.path))))
    return folders


def offered(*config_dirs: Path) -> Offers:
    """What the options in the config folders' groups set each code key to, at each place."""
    offers: Offers = {}
    groups = [group for folder in config_dirs for group in folder.iterdir() if group.is_dir()]
    for group in sorted(g for g in groups if g.name not in ("hydra", "__pycache__")):
        for option in sorted(group.rglob("*.yaml")):
            package = _package(option, group.name)
            content = OmegaConf.to_container(OmegaConf.load(option), resolve=False)
            for place, key, value in _code_keys(content, package):
                offers.setdefault((place, key), set()).add(_text(value))
    return offers


def check(config: DictConfig, offers: Offers, source: str) -> None:
    """One line naming the key, the value and `source` (e.g. `rerun=RUN_ID`), if `config` sets a code
    key anywhere to anything conf/ does not offer there; nothing has been built from it yet."""
    content = OmegaConf.to_container(config, resolve=False)
    for place, key, value in _code_keys(content, ""):
        allowed = offers.get((place, key), set())
        if _text(value) not in allowed:
            name = f"{place}.{key}" if place else key
            offer = f"conf/ offers {', '.join(sorted(allowed))} there" if allowed else "conf/ sets no such key there"
            raise TLError(
                f"{source}: the recorded config sets {name}={_text(value)}, which tl will not run ({offer}); "
                "the recorded config was changed after the run logged it, or comes from elsewhere: start a new run"
            )


def _code_keys(node: Any, place: str) -> Iterator[tuple[str, str, Any]]:
    """(place, key, value) of every code key in `node`, at any depth (lists included)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in CODE_KEYS:
                yield place, str(key), value
            else:
                yield from _code_keys(value, f"{place}.{key}" if place else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _code_keys(value, f"{place}.{i}" if place else str(i))


def _package(option: Path, group: str) -> str:
    """Where an option's keys go: its group, or what its `# @package` header says (`_global_`: the top)."""
    for line in option.read_text().splitlines()[:5]:
        if line.startswith("# @package"):
            package = line.split(maxsplit=2)[2].strip()
            return "" if package == "_global_" else package.replace("_group_", group)
    return group


def _text(value: Any) -> str:
    """A value as compared and shown: YAML's `true` and a recorded `True` alike, lists as JSON."""
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)
