"""The documentation as a newcomer reads it: what README.md and docs/*.md name exists.

A file the README's layout lists that was moved, a module it leaves out, a test or benchmark a page cites
that was renamed, a flag `--help` shows that no page explains: each sends a reader looking for what is not
there. These checks read files and the CLI's parser only (no model loads).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from baco.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TEXT = {path.relative_to(ROOT).as_posix(): path.read_text(encoding="utf-8") for path in DOCS}
FILE_NAME = re.compile(r"[\w-]+\.(?:py|sh|yaml)\b")


def readme_layout() -> dict[str, set[str]]:
    """The README's "Layout" block as folder -> the file names its entry mentions ("" for src/baco's own
    modules, "configs/", "models/", ...). An entry starts at a line whose first word is a folder (`models/`)
    or, at src/baco's indent, a module (`report.py`); deeper-indented lines continue it."""
    block = TEXT["README.md"].split("## Layout", 1)[1].split("```", 2)[1]
    layout: dict[str, set[str]] = {}
    folder = None
    for line in block.splitlines():
        if not line.strip():
            continue
        first = line.split()[0]
        indent = len(line) - len(line.lstrip())
        if first.endswith("/") and indent <= 2:
            folder = "" if first == "src/baco/" else first
        elif indent == 2 and first.endswith(".py"):
            folder = ""
        layout.setdefault(folder, set()).update(FILE_NAME.findall(line))
    return layout


def on_disk() -> dict[str, set[str]]:
    """The files the layout is about, by the same folder keys."""
    src = ROOT / "src" / "baco"
    files: dict[str, set[str]] = {"": {p.name for p in src.glob("*.py") if not p.name.startswith("__")}}
    for package in (p for p in src.iterdir() if (p / "__init__.py").exists()):
        files[f"{package.name}/"] = {p.name for p in package.glob("*.py") if not p.name.startswith("__")}
    files["configs/"] = {p.name for p in (ROOT / "configs").glob("*.yaml")}
    files["scripts/"] = {p.name for p in (ROOT / "scripts").glob("*.py")}
    files["benchmarks/"] = {p.name for p in (ROOT / "benchmarks").iterdir() if p.suffix in (".py", ".sh")}
    return files


def test_the_readme_layout_lists_every_module_script_and_config_and_nothing_that_is_gone():
    layout, files = readme_layout(), on_disk()
    missing = {folder: sorted(names - layout.get(folder, set())) for folder, names in files.items()}
    gone = {folder: sorted(names - files.get(folder, set())) for folder, names in layout.items()}
    assert not {k: v for k, v in missing.items() if v}, "files the README's layout does not list"
    assert not {k: v for k, v in gone.items() if v}, "files the README's layout lists that do not exist"


PATH = re.compile(r"\b((?:src/baco|docs|configs|benchmarks|scripts|tests)/[\w./+-]*[\w])(?:::(\w+))?")


def cited_paths() -> list[tuple[str, str, str | None]]:
    """(page, path, test name or None) for every repository path a page names, e.g. `tests/test_x.py::test_y`."""
    found = []
    for page, text in TEXT.items():
        for match in PATH.finditer(text):
            path, name = match.group(1), match.group(2)
            if "*" not in path and not path.endswith("/"):
                found.append((page, path, name))
    return found


def test_every_file_and_test_the_docs_cite_exists():
    wrong = []
    for page, path, name in cited_paths():
        target = ROOT / path
        if not target.exists():
            wrong.append(f"{page}: {path} does not exist")
        elif name and not re.search(rf"^\s*(?:def|class) {name}\b", target.read_text(encoding="utf-8"), re.M):
            wrong.append(f"{page}: {path} has no {name}")
    assert cited_paths(), "the pattern finds the docs' paths"
    assert not wrong


def cli_flags() -> dict[str, list[str]]:
    """Every subcommand's long options, as `baco COMMAND --help` shows them."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {command: [option for action in parser._actions for option in action.option_strings
                      if option.startswith("--") and option != "--help"]
            for command, parser in sub.choices.items()}


@pytest.mark.parametrize("command", sorted(cli_flags()))
def test_every_flag_of_a_command_is_explained_in_the_readme_or_a_docs_page(command):
    everything = "\n".join(TEXT.values())
    undocumented = [flag for flag in cli_flags()[command] if not re.search(rf"{re.escape(flag)}(?![\w-])", everything)]
    assert not undocumented, f"baco {command}: flags no page mentions"
