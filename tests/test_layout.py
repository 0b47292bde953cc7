"""The folder tree is the architecture: a few layers (import-linter checks their imports), each a handful of
modules. A package that grows past eight modules is a sign it holds several concerns: split it."""

from __future__ import annotations

from tests.helpers import ROOT

MOST_MODULES = 8


def test_no_package_of_tl_lists_more_than_eight_modules():
    packages = [folder for folder in (ROOT / "tl").rglob("*") if (folder / "__init__.py").is_file()]
    crowded = {
        str(folder.relative_to(ROOT)): count
        for folder in [ROOT / "tl", *packages]
        if (count := len([f for f in folder.glob("*.py") if f.name != "__init__.py"])) > MOST_MODULES
    }
    assert crowded == {}, f"packages with more than {MOST_MODULES} modules: {crowded}"
    assert len(list((ROOT / "tl").glob("*.py"))) == 1  # tl/ itself holds only its __init__: every module has a layer
