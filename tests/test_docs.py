"""The documentation site builds with --strict, and its API reference has a page for every module of tl."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def public_modules() -> list[str]:
    """Every public module under tl/, found on disk: packages by their own name, private `_x.py` left out."""
    names = set()
    for path in (ROOT / "tl").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not any(part.startswith("_") for part in parts):
            names.add(".".join(parts))
    return sorted(names)


def test_the_docs_build_strictly_with_a_reference_page_for_every_module(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "DISABLE_MKDOCS_2_WARNING": "true", "NO_MKDOCS_2_WARNING": "1"}  # plugins' banners
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(site)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-6000:]

    modules = public_modules()
    assert "tl" in modules and len(modules) > 10  # the walk finds the package
    missing = []
    for name in modules:
        # reference/tl/x/y.md is served as reference/tl/x/y/index.html, a package's index.md as its folder's
        page = site / "reference" / Path(*name.split(".")) / "index.html"
        if not page.exists() or f'id="{name}"' not in page.read_text(encoding="utf-8"):
            missing.append(name)
    assert not missing, f"no API reference page rendered for {missing}"
    assert (site / "benchmark-results" / "index.html").exists()
