"""What the set-up pass learned about each file under a data root, kept between runs, like git's index;
and the dataset's fingerprint made from it.

Contract:
- A record per file: its size, mtime_ns, sha256 and check result (None, or why the file cannot be
  used). It is trusted while the file's size and mtime_ns are unchanged, so a repeat run on an
  unchanged folder only stats its files and reads one JSON file. An edit that keeps both (content
  changed, size and mtime restored) is not seen, as in git; `recheck=True` ignores the records,
  examines every file again and rewrites them. A file whose mtime is within `RACY_SECONDS` of the
  moment it was read may still change within the same timestamp tick: it is examined again next
  time (git's "racily clean" entries).
- New or changed files are read once each, in threads (hashlib and Pillow's decoders release the
  GIL): the bytes are hashed and handed to the check.
- The records live in `<directory>/<sha256 of the resolved root>.json`, outside the data folder,
  which may be read-only. `directory=None` keeps none: every file is examined every time.
- Safe to share between processes (parallel sweep jobs, torchrun ranks): a writer writes a temp file
  in the same folder, fsyncs it and renames it over the old one (atomic), so a reader sees the old
  file or the new one, never part of one. Processes that find files to examine take turns (an
  advisory lock beside the file): the first examines them, the others then find its records, so a
  sweep decodes and hashes each file once in all. Without the lock (no `flock`), each examines them
  itself and all write correct files; the last rename wins.
- A damaged file, or one written by another version or another check, is ignored (one log line)
  and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple, dataclass, field
from pathlib import Path

from tqdm import tqdm

from tl.core.critical_sections import one_at_a_time

log = logging.getLogger(__name__)

VERSION = 1  # of the file's layout: a file of another version is rebuilt
RACY_SECONDS = 2  # coarser than any common filesystem's timestamps (FAT: 2 s; ext3, HFS+: 1 s)

Check = Callable[[bytes], str | None]  # a file's contents -> None, or why the file cannot be used


@dataclass(frozen=True)
class FileRecord:
    """What the set-up pass learned about one image file, valid while its size and mtime are unchanged."""

    size: int
    mtime_ns: int
    sha256: str
    problem: str | None  # what the check found: None when the file can be used


class Manifest:
    """The records of the files under `root`, kept in `directory` (None: kept nowhere).

    `check` is run on the contents of every new or changed file; `check_id` names it and its version,
    so that records made by another check are not trusted."""

    def __init__(self, root: Path, directory: str | Path | None, check: Check, check_id: str) -> None:
        self.root = root
        self.check = check
        self.check_id = check_id
        self.path = None
        if directory is not None:
            name = hashlib.sha256(str(root.resolve()).encode()).hexdigest()
            self.path = Path(directory).expanduser() / f"{name}.json"

    def records(self, paths: list[str], recheck: bool = False, progress: bool = True) -> dict[str, FileRecord]:
        """The record of each of `paths` (relative to the root, with `/`): kept ones where the file's size
        and mtime match, the others computed now (with a progress bar on a terminal after 2 s), then
        the kept records updated."""
        kept = {} if recheck or self.path is None else self._load()
        records, stale = self._match(paths, kept)
        if not stale:
            return records
        # Parallel sweep jobs or torchrun ranks that start together wait for the first and find its
        # records, so each file is decoded and hashed once in all.
        with one_at_a_time(self.path.with_suffix(".lock") if self.path is not None else None):
            if not recheck and self.path is not None:  # what another process built while this one waited
                kept = self._load()
                records, stale = self._match(paths, kept)
            if stale:
                self._examine_all(stale, records, kept, progress)
        return records

    def _match(self, paths: list[str], kept: dict[str, FileRecord]) -> tuple[dict[str, FileRecord], list[str]]:
        """The kept records that still match their file's size and mtime, and the paths to examine."""
        records, stale = {}, []
        for path in paths:
            record = kept.get(path)
            try:
                stat = os.stat(self.root / path)
            except OSError:
                stale.append(path)  # examined below, which says why it cannot be read
                continue
            if record is not None and (record.size, record.mtime_ns) == (stat.st_size, stat.st_mtime_ns):
                records[path] = record
            else:
                stale.append(path)
        return records, stale

    def _examine_all(
        self, stale: list[str], records: dict[str, FileRecord], kept: dict[str, FileRecord], progress: bool
    ) -> None:
        """Examine `stale` (into `records`), then save the records that may be kept."""
        settled = dict(records)
        started = time.perf_counter()
        log.info("checking %d new or changed file(s) in %s", len(stale), self.root)
        with (
            ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool,
            tqdm(total=len(stale), desc=f"checking {len(stale)} new or changed files", unit="file",
                 delay=2, leave=False, disable=None if progress else True) as bar,
        ):  # fmt: skip
            for path, (record, settles) in zip(stale, pool.map(self._examine, stale), strict=True):
                records[path] = record
                if settles:
                    settled[path] = record
                bar.update()
        log.info("checked %d file(s) in %.1f s", len(stale), time.perf_counter() - started)
        if self.path is not None and settled != kept:
            self._save(settled)

    def _examine(self, path: str) -> tuple[FileRecord, bool]:
        """The file's record, and whether it may be kept: only when its contents were read, and not
        changed while they were (the size read is the size stat gave), nor just before."""
        file = self.root / path
        try:
            before = os.stat(file)
            data = file.read_bytes()
        except OSError as error:
            return FileRecord(-1, -1, "", f"cannot be read: {error}"), False
        record = FileRecord(len(data), before.st_mtime_ns, hashlib.sha256(data).hexdigest(), self.check(data))
        settled = before.st_mtime_ns < time.time_ns() - RACY_SECONDS * 10**9
        return record, settled and len(data) == before.st_size

    def _load(self) -> dict[str, FileRecord]:
        try:
            with self.path.open(encoding="utf-8") as file:
                content = json.load(file)
            if content.get("version") != VERSION or content.get("check") != self.check_id:
                log.info("%s was made by another version of tl or another check; rebuilding it", self.path)
                return {}
            return {path: _record(entry) for path, entry in content["files"].items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
            log.warning("%s is damaged (%s); rebuilding it", self.path, error)
            return {}

    def _save(self, records: dict[str, FileRecord]) -> None:
        content = {"version": VERSION, "check": self.check_id, "root": str(self.root.resolve()),
                   "files": {path: astuple(record) for path, record in sorted(records.items())}}  # fmt: skip
        temporary = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # In the same folder, so that the rename is atomic; renamed only once complete and on disk.
            with tempfile.NamedTemporaryFile(
                "w", encoding="utf-8", dir=self.path.parent, prefix=f"{self.path.name}.", suffix=".tmp", delete=False
            ) as file:
                temporary = Path(file.name)
                json.dump(content, file, separators=(",", ":"))
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except OSError as error:  # a folder that cannot be written costs the next run time, not this run
            log.warning("could not save %s (%s); the next run checks these files again", self.path, error)
            if temporary is not None:
                temporary.unlink(missing_ok=True)


def _record(entry: list) -> FileRecord:
    """A record as stored, [size, mtime_ns, sha256, problem], checked: a damaged file raises ValueError."""
    size, mtime_ns, sha256, problem = entry
    if not (isinstance(size, int) and isinstance(mtime_ns, int) and isinstance(sha256, str) and len(sha256) == 64):
        raise ValueError(f"not a record: {entry!r}")
    if problem is not None and not isinstance(problem, str):
        raise ValueError(f"not a record: {entry!r}")
    return FileRecord(size, mtime_ns, sha256, problem)


@dataclass
class DatasetFingerprint:
    """What a run's data was: one digest over every image read, class counts, the files and those skipped."""

    sha256: str
    counts: dict[str, dict[str, int]]  # split -> class -> images
    files: list[tuple[str, int, str]]  # (path relative to the root, bytes, sha256), sorted
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path relative to the root, reason), sorted
    root: str = ""  # the folder holding the images (train/ and val/)

    def changes_from(self, other_files: list[tuple[str, int, str]]) -> list[str]:
        """What differs from another manifest: `+ added`, `- removed`, `~ changed` paths."""
        ours = {path: digest for path, _, digest in self.files}
        theirs = {path: digest for path, _, digest in other_files}
        added = [f"+ {p}" for p in sorted(ours.keys() - theirs.keys())]
        removed = [f"- {p}" for p in sorted(theirs.keys() - ours.keys())]
        changed = [f"~ {p}" for p in sorted(ours.keys() & theirs.keys()) if ours[p] != theirs[p]]
        return added + removed + changed
