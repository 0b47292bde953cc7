"""An Optuna study kept where the search says (memory, a database, a journal file), opened with the checks
a shared, long-lived study needs, and what becomes of trials whose sweeper died.

tl/sweeps/search.py runs the search; this module owns the study: which storage a URL names, that the study it
opens searches the same space in the same direction, who is running each trial, and failing the trials
(and their MLflow runs) of a sweeper that was killed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, distribution_to_json
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from tl.core.errors import TLError, first_line
from tl.tracking.processes import is_dead
from tl.tracking.runs import PROCESS_TAG

log = logging.getLogger(__name__)

JOURNAL_PREFIX = "journal:"  # hydra.sweeper.storage=journal:optuna.log: Optuna's journal file
SPACE_ATTR = "tl.search_space"  # on a study: its search space, as Optuna's JSON of each distribution
OBJECTIVE_ATTR = "tl.objective"  # on a study: the metric its trials return (monitor)
ID_ATTR = "tl.study_id"  # on a study: a unique id, given when it is created


def storage_location(url: str | None) -> str:
    """Where a study is kept, without a password and with a file's absolute path: what tags the study's
    MLflow runs, so that two studies named alike in different places are not confused."""
    if url is None:
        return "memory"
    if url.startswith(JOURNAL_PREFIX):
        return f"{JOURNAL_PREFIX}{Path(url.removeprefix(JOURNAL_PREFIX)).expanduser().resolve()}"
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        parsed = parsed.set(database=str(Path(parsed.database).expanduser().resolve()))
    return parsed.set(query={}).render_as_string(hide_password=True)  # a query may carry a password too


def open_storage(url: str | None, heartbeat_interval: int | None) -> BaseStorage | None:
    """The storage `url` names: None (memory), `journal:PATH` (Optuna's journal file, which needs no
    server) or a database URL (SQLite, PostgreSQL, MySQL: Optuna's RDBStorage, with heartbeats so that
    the trials of a sweeper that dies on another machine are failed once they go stale)."""
    if url is None:
        return None
    if url.startswith(JOURNAL_PREFIX):
        path = Path(url.removeprefix(JOURNAL_PREFIX)).expanduser()
        if not path.parent.is_dir():
            raise TLError(f"hydra.sweeper.storage={url}: the folder {path.parent} does not exist; create it first")
        return JournalStorage(JournalFileBackend(str(path)))
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise TLError(
            "hydra.sweeper.storage is not a database URL; use e.g. sqlite:///optuna.db, "
            "postgresql://user@host/db or journal:optuna.log"
        ) from None  # not echoed: it may hold a password
    if parsed.password is not None or "password" in parsed.query:
        raise TLError(
            "hydra.sweeper.storage has a password in it, which would be written to the sweep's config files "
            "and logged with its runs; give it in PGPASSWORD or ~/.pgpass (PostgreSQL) or an option file (MySQL)"
        )
    where = parsed.set(query={}).render_as_string(hide_password=True)
    if heartbeat_interval is not None and heartbeat_interval < 0:
        raise TLError(f"hydra.sweeper.heartbeat_interval={heartbeat_interval}: give seconds (60), or 0 for none")
    # Optuna warns at every ask that heartbeats go with Study.optimize: tl records them itself (`heartbeats`).
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    # A server that does not answer is named after 10 s, not after the system's TCP timeout (minutes).
    engine_kwargs = {"connect_args": {"connect_timeout": 10}} if parsed.get_backend_name() == "postgresql" else {}
    # Two sweepers started at once on a new database both create Optuna's tables: the second may
    # fail on a table the first has just made, and then finds them there when it tries again.
    for attempt in range(3):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval or None)
        except ImportError:
            raise TLError(
                f"hydra.sweeper.storage={where} needs a database driver that is not installed; for PostgreSQL: "
                'pip install "psycopg[binary]" (or tl\'s extra: pip install -e ".[postgres]")'
            ) from None
        except (SQLAlchemyError, RuntimeError, TypeError) as error:  # RuntimeError: a schema Optuna cannot use
            reason = first_line(getattr(error, "orig", None) or error)
            racing = any(words in reason.lower() for words in ("already exists", "duplicate", "unique constraint"))
            if attempt == 2 or not racing:
                raise TLError(
                    f"the Optuna storage {where} cannot be used ({reason}); start the database server, "
                    "create the database, or point hydra.sweeper.storage at another one"
                ) from None
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def open_study(
    storage: BaseStorage | None,
    name: str | None,
    direction: str,
    space: dict[str, BaseDistribution],
    objective: str,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """The study `name` in `storage`, created if new; continued only if it searches the same space for
    the same metric in the same direction (its trials would otherwise mislead the sampler). `pruner`: Optuna's
    NopPruner when None (no trial is stopped early)."""
    pruner = pruner or optuna.pruners.NopPruner()
    wanted = {key: json.loads(distribution_to_json(distribution)) for key, distribution in space.items()}
    if name is not None and "'" in name:  # it is matched in MLflow searches, which cannot escape one
        raise TLError(f"hydra.sweeper.study_name={name} has a quote in it; name the study without one")
    try:  # only one of several sweepers starting at once creates the study: it describes it
        study = optuna.create_study(
            study_name=name, storage=storage, sampler=sampler, pruner=pruner, direction=direction
        )
        study.set_user_attr(SPACE_ATTR, wanted)
        study.set_user_attr(OBJECTIVE_ATTR, objective)
        study.set_user_attr(ID_ATTR, uuid.uuid4().hex)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    kept = _described(study)
    if SPACE_ATTR not in kept:  # begun by Optuna itself, not by tl: described now
        for attribute, value in ((SPACE_ATTR, wanted), (OBJECTIVE_ATTR, objective), (ID_ATTR, uuid.uuid4().hex)):
            study.set_user_attr(attribute, value)
        kept = study.user_attrs
    where = f"study {study.study_name!r}"
    stored_direction = study.direction.name.lower()
    if stored_direction != direction or kept.get(OBJECTIVE_ATTR, objective) != objective:
        raise TLError(
            f"{where} {stored_direction}s {kept.get(OBJECTIVE_ATTR)}, and this search would {direction} {objective}; "
            "set monitor= and mode= as the study was begun, or name another study with hydra.sweeper.study_name"
        )
    if kept[SPACE_ATTR] != wanted:
        differ = sorted(key for key in {**kept[SPACE_ATTR], **wanted} if kept[SPACE_ATTR].get(key) != wanted.get(key))
        in_study = _describe(kept[SPACE_ATTR], differ)
        raise TLError(
            f"{where} searches another space ({', '.join(differ)} differ; in the study, {in_study}); "
            "search the space it was begun with, or name another study with hydra.sweeper.study_name"
        )
    return study


def study_id(study: optuna.Study) -> str:
    """The study's own id (made by the sweeper that created it): what tags its MLflow runs, however each
    machine names the storage."""
    return study.user_attrs[ID_ATTR]


def _described(study: optuna.Study, seconds: float = 10) -> dict[str, Any]:
    """The study's attributes, once the sweeper creating it at the same moment has set them."""
    deadline = time.monotonic() + seconds
    while ID_ATTR not in (attributes := study.user_attrs) and time.monotonic() < deadline and len(study.trials) == 0:
        time.sleep(0.2)
    return attributes


def _describe(space: dict[str, Any], keys: list[str]) -> str:
    """The study's side of the keys that differ, briefly."""

    def shown(distribution: dict[str, Any]) -> str:  # FloatDistribution(low=0.0001, high=0.1, log=True)
        given = ", ".join(f"{name}={value}" for name, value in distribution["attributes"].items() if value is not None)
        return f"{distribution['name']}({given})"

    return "; ".join(f"{key} is {shown(space[key])}" if key in space else f"{key} is not searched" for key in keys)


def fail_abandoned_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Fail the running trials whose sweeper has stopped: on this host, those whose process is gone;
    anywhere, those whose heartbeat (database storages) has gone stale. The failed trials."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in running:
        if is_dead(trial.user_attrs.get(PROCESS_TAG)):
            with contextlib.suppress(ValueError, RuntimeError):  # another sweeper has just failed it
                study.tell(trial.number, state=TrialState.FAIL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    # Those that were running and are failed now (not those another sweeper failed as its jobs failed).
    now_failed = {trial.number for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    failed = [trial for trial in running if trial.number in now_failed]
    for trial in failed:
        log.warning("trial %d of study %r was running when its sweeper (%s) stopped: marked failed",
                    trial.number, study.study_name, trial.user_attrs.get(PROCESS_TAG, "unknown"))  # fmt: skip
    return failed


@contextlib.contextmanager
def heartbeats(storage: Any, study: optuna.Study, trials: list[optuna.Trial]) -> Iterator[None]:
    """While the trials run: their heartbeat, recorded every heartbeat interval, for storages that keep one
    (Optuna records it itself only in `study.optimize`, which a sweeper that launches jobs does not use).
    `storage`: the study's, as `open_storage` made it (a Study does not give its storage out)."""
    interval = storage.get_heartbeat_interval() if isinstance(storage, RDBStorage) else None
    if not interval:
        yield
        return
    study_id = storage.get_study_id_from_name(study.study_name)
    trial_ids = [storage.get_trial_id_from_study_id_trial_number(study_id, trial.number) for trial in trials]
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                for trial_id in trial_ids:
                    storage.record_heartbeat(trial_id)
            except Exception as error:  # a database that is busy or away for a moment: beat again next time
                log.warning("could not record the trials' heartbeat (%s); trying again in %d s", error, interval)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name="optuna-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
