"""The API reference, generated at build time (mkdocs-gen-files): one page per module of tl/, and its nav.

Every module under tl/ is found on disk, packages and their subpackages included, so the reference follows
the package tree as it is when the site is built: no list of modules is kept by hand. A private module
(`_name.py`) or anything under a private package is left out; a package is listed under its own name
(`tl/core/__init__.py` is `tl.core`). Each page holds one `::: module` block, which mkdocstrings renders
from the docstrings by reading the source (griffe, static: nothing is imported). The nav is written as
`reference/SUMMARY.md` for mkdocs-literate-nav, and `reference/index.md` lists every module with the first
line of its docstring.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "tl"


def public_modules(root: Path = ROOT, package: str = PACKAGE) -> list[tuple[str, ...]]:
    """The dotted names of tl's public modules, as tuples of parts, packages before their modules."""
    modules = []
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(part.startswith("_") or not part.isidentifier() for part in parts):
            continue  # private (or not importable under that name)
        modules.append(parts)
    return sorted(set(modules))


def summary_line(path: Path) -> str:
    """The first line of a module's docstring, or nothing when it has none (or does not parse)."""
    try:
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    except (SyntaxError, UnicodeDecodeError, OSError):
        return ""
    return (docstring or "").strip().splitlines()[0] if docstring and docstring.strip() else ""


def source_of(parts: tuple[str, ...]) -> Path:
    """The file a module's docstring is in: its .py file, or its package's __init__.py."""
    package = ROOT.joinpath(*parts) / "__init__.py"
    return package if package.exists() else ROOT.joinpath(*parts).with_suffix(".py")


def main() -> None:
    """Write the pages, the overview and the nav into the site being built."""
    nav = mkdocs_gen_files.Nav()
    nav["Overview"] = "index.md"
    rows = []
    for parts in public_modules():
        name = ".".join(parts)
        is_package = (ROOT.joinpath(*parts) / "__init__.py").exists()
        page = Path(*parts, "index.md") if is_package else Path(*parts).with_suffix(".md")
        nav[parts] = page.as_posix()
        with mkdocs_gen_files.open(Path("reference", page), "w") as file:
            file.write(f"::: {name}\n")
        mkdocs_gen_files.set_edit_path(Path("reference", page), source_of(parts).relative_to(ROOT))
        summary = summary_line(source_of(parts)).replace("|", "\\|")
        rows.append(f"| [`{name}`]({page.as_posix()}) | {summary} |")

    with mkdocs_gen_files.open("reference/index.md", "w") as file:
        file.write(
            "# API reference\n\n"
            "Generated from the docstrings of every public module under `tl/` when the site is built "
            "([Architecture](../architecture.md) says how the packages depend on each other).\n\n"
            "| module | what it is |\n|---|---|\n" + "\n".join(rows) + "\n"
        )
    with mkdocs_gen_files.open("reference/SUMMARY.md", "w") as file:
        file.writelines(nav.build_literate_nav())


main()
