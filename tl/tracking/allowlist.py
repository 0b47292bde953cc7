"""A recorded config is data, not code: before `rerun=` or `resume=` builds anything from one, it must be
a config tl's own conf/ could have written.

A run's config comes back from its MLflow run (rerun=) or its checkpoint (resume=), and anyone who
can write to a shared tracking server or to the run's folder can change it. Hydra's `instantiate`
calls whatever `_target_` names, with `_args_` and the other keys as its arguments, and OmegaConf
resolves interpolations such as `${oc.decode:...}` (which turns a string into a new config node) or
`${oc.env:...}` (which reads a secret). So a recorded config is refused, with one line naming the
key, unless:
- every key is one that some option of conf/ (or a preset in experiments/) has at that place: a
  recorded `data.url` that no option sets cannot point a download elsewhere;
- every code key (`_target_`, `_args_`, `_partial_`, `_recursive_`, `_convert_`) has a value an
  option gives it there (`data._target_` may be `tl.data.folders.image_folder`, not `builtins.open`);
- every interpolation is one an option writes, verbatim, at that place.
Plain values (a learning rate, a data folder) may differ: that is what a recorded config records.
Hydra has no such check of its own (its `instantiate` trusts its config), hence this module.
"""

from __future__ import annotations

import importlib.resources
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tl.core.errors import TLError

CODE_KEYS = ("_target_", "_args_", "_partial_", "_recursive_", "_convert_")
Place = tuple[str, str]  # (the dotted path of the mapping, the key in it)


@dataclass
class Offers:
    """What conf/'s options write: every key at each place, and the values of code keys and interpolations."""

    keys: set[Place] = field(default_factory=set)
    values: dict[Place, set[str]] = field(default_factory=dict)  # code keys and interpolations only

    def add(self, place: str, key: str, value: Any) -> None:
        """Record one entry of an option (a list's elements count as its key's values)."""
        self.keys.add((place, key))
        written = [value] if key in CODE_KEYS else []
        written += [item for item in _scalars(value) if _is_interpolation(item)]
        self.values.setdefault((place, key), set()).update(_text(item) for item in written)


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
    """What the primary configs and every group's options in the config folders write, at each place."""
    offers = Offers()
    for folder in config_dirs:
        options = [(path, "") for path in folder.glob("*.yaml")]  # primary configs: at the top
        for group in folder.iterdir():
            if group.is_dir() and group.name not in ("hydra", "__pycache__"):
                options += [(path, group.name) for path in group.rglob("*.yaml")]
        for path, group in options:
            package = _package(path, group)
            parent = ""
            for part in package.split(".") if package else []:  # the group's own key, e.g. ("", "data")
                offers.add(parent, part, None)
                parent = f"{parent}.{part}" if parent else part
            for place, key, value in _entries(OmegaConf.to_container(OmegaConf.load(path), resolve=False), package):
                offers.add(place, key, value)
    return offers


def check(config: DictConfig, offers: Offers, source: str) -> None:
    """One line naming the key, the value and `source` (e.g. `rerun=RUN_ID`) if `config` has a key,
    a code key's value or an interpolation that conf/ does not write there; nothing is built from it yet."""
    for place, key, value in _entries(OmegaConf.to_container(config, resolve=False), ""):
        name = f"{place}.{key}" if place else key
        if (place, key) not in offers.keys:
            _refuse(source, f"{name}, a key no option of conf/ has there")
        allowed = offers.values.get((place, key), set())
        written = [value] if key in CODE_KEYS else []
        written += [item for item in _scalars(value) if _is_interpolation(item)]
        for item in written:
            if _text(item) not in allowed:
                offer = f"conf/ writes {', '.join(sorted(allowed))} there" if allowed else "conf/ writes none there"
                _refuse(source, f"{name}={_text(item)} ({offer})")


def _refuse(source: str, what: str) -> None:
    raise TLError(
        f"{source}: the recorded config sets {what}, which tl will not run; the recorded config was changed "
        "after the run logged it, or comes from elsewhere: start a new run"
    )


def _entries(node: Any, place: str) -> Iterator[tuple[str, str, Any]]:
    """(place, key, value) of every entry of every mapping in `node`, at any depth (lists included);
    the value of a mapping entry is given too, before its own entries."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield place, str(key), value if not isinstance(value, dict) else None
            yield from _entries(value, f"{place}.{key}" if place else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _entries(value, f"{place}.{i}")


def _scalars(value: Any) -> Iterator[Any]:
    """The values in `value`: itself, or the elements of a list, at any depth (mappings are entries)."""
    if isinstance(value, list):
        for item in value:
            yield from _scalars(item)
    elif not isinstance(value, dict):
        yield value


def _package(option: Path, group: str) -> str:
    """Where an option's keys go: its group, or what its `# @package` header says (`_global_`: the top)."""
    for line in option.read_text().splitlines()[:5]:
        if line.startswith("# @package"):
            package = line.split(maxsplit=2)[2].strip()
            return "" if package == "_global_" else package.replace("_group_", group)
    return group


def _is_interpolation(value: Any) -> bool:
    return isinstance(value, str) and "${" in value


def _text(value: Any) -> str:
    """A value as compared and shown: YAML's `true` and a recorded `True` alike, lists as JSON."""
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)
