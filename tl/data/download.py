"""Fetching a dataset's archive once: downloaded into place whole, its sha256 checked."""

from __future__ import annotations

import logging
import tempfile
import urllib.error
import zipfile
from pathlib import Path

from torchvision.datasets.utils import download_url

from tl.core.errors import TLError
from tl.core.provenance import file_sha256

log = logging.getLogger(__name__)


def download(url: str, cache: Path, root: Path) -> Path:
    """The archive at `url`, in `cache` (fetched unless a whole zip is there); `root` names the folder
    it unpacks to, for the error message when offline."""
    archive = cache / Path(url).name
    if archive.is_file() and zipfile.is_zipfile(archive):
        return archive
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as partial:
        try:
            download_url(url, partial, filename=archive.name)
        except (urllib.error.URLError, OSError) as error:
            raise TLError(
                f"could not download {url} ({error}); offline, unzip hymenoptera_data.zip so that "
                f"{root}/train and {root}/val exist, or use data=image_folder data.root=PATH"
            ) from error
        # Moved into place only when complete, so an interrupted download is never mistaken for the data.
        Path(partial, archive.name).replace(archive)
    return archive


def check_sha256(archive: Path, expected: str | None) -> None:
    """Remove the archive and stop if it is not the expected one, or not a zip; log its digest when none is expected."""
    digest = file_sha256(archive)
    if expected is None:
        log.info("%s has sha256 %s; set data.sha256 to that value to have it checked", archive, digest)
    elif digest != expected.lower():
        archive.unlink()
        raise TLError(
            f"{archive} has sha256 {digest}, expected {expected}; the download was removed, run again to retry"
        )
    if not zipfile.is_zipfile(archive):
        archive.unlink()
        raise TLError(f"{archive} is not a zip archive; the download was removed, run again to retry")
