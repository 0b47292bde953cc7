"""The documentation site builds with --strict, and its API reference has a page for every module of tl."""

from __future__ import annotations

import json
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


def test_time_to_accuracy_and_pruning_results_get_their_own_tables(tmp_path):
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import gen_benchmarks
    finally:
        sys.path.remove(str(ROOT / "docs"))
    arms = {"tutorial/finetune": {"best_val_acc": 0.855, "interval": None, "wall_s": 377.0, "runs": [{}],
                                  "meets_bar": False},
            "tl/default": {"best_val_acc": 0.875, "interval": [0.86, 0.89], "wall_s": 30.0, "runs": [{}] * 3,
                           "meets_bar": True},
            "bar": {"best_val_acc_at_least": 0.845, "wall_s_at_most": 37.7}}  # fmt: skip
    settings = {"model": "efficientnet_lite0", "train_per_class": 50, "val_per_class": 20, "image_size": 112,
                "tutorial_epochs": 25, "batch_size_tutorial": 4,
                "arms": {"tutorial/finetune": "the tutorial's loop", "tl/default": "(the default)"}}  # fmt: skip
    (tmp_path / "time_to_accuracy-x.json").write_text(json.dumps({"settings": settings, "datasets": {"glyphs": arms}}))
    search = {"wall_s": 100.0, "trials": 16, "pruned": 9, "best_val_acc": 0.9, "interval": [0.85, 0.94]}
    pruning = {"settings": {"dataset": "shapes", "trials": 16, "epochs": 6, "image_size": 112},
               "searches": {"pruned": {**search, "wall_s": 45.0}, "unpruned": search},
               "bar": {"time_ratio": 0.45, "at_most_half_the_time": True, "best_within_interval": True}}  # fmt: skip
    (tmp_path / "pruning-x.json").write_text(json.dumps(pruning))
    page = gen_benchmarks.page(tmp_path)
    assert "## The best model per minute" in page and "## What pruning saves" in page and "Other results" not in page
    assert "| glyphs | tl/default | (the default) | 0.875 | 0.860-0.890 | 30 s | 3 | met |" in page
    assert "| pruned | 45 s | 16 | 9 | 0.900 | 0.850-0.940 |" in page and "wall time: 0.45; at most half: True" in page
