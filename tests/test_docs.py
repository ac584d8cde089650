"""The docs: generated pages are current, the site builds with --strict, docstrings stay short and
carry no run history."""

from __future__ import annotations

import ast
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _generate():
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("page", ["cli.md", "passes.md"])
def test_generated_pages_are_current(page, monkeypatch):
    generate = _generate()
    monkeypatch.setenv("COLUMNS", "100")
    assert (ROOT / "docs" / page).read_text() == generate.PAGES[page](), (
        f"docs/{page} is stale: run .venv/bin/python docs/generate.py")


def test_the_cli_page_lists_every_option_of_every_command():
    from fxprune.runners.arguments import build_parser

    text = (ROOT / "docs" / "cli.md").read_text()
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, command in sub.choices.items():
        assert f"## fxprune {name}\n" in text
        for action in command._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}`" in text, f"{name} {flag}"


@pytest.mark.skipif(shutil.which("mkdocs", path=str(Path(sys.executable).parent)) is None,
                    reason="mkdocs is not installed (the docs extra)")
def test_the_site_builds_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "-d",
                           str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "index.html").read_text().count('id="fxprune.transfer"') == 1


def _sources():
    return sorted([*(ROOT / "fxprune").rglob("*.py"), *(ROOT / "passes").rglob("*.py")])


def test_no_docstring_reaches_15_lines():
    long = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=False)
                if doc and len(doc.strip().splitlines()) >= 15:
                    long.append(f"{path.relative_to(ROOT)}: {getattr(node, 'name', 'module')}")
    assert long == []


def test_no_docstring_or_comment_dates_a_run():
    dated = []
    for path in _sources():
        text = path.read_text()
        strings = [n.value.value for n in ast.walk(ast.parse(text))
                   if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)]
        comments = [t.string for t in tokenize.generate_tokens(io.StringIO(text).readline)
                    if t.type == tokenize.COMMENT]
        dated += [f"{path.relative_to(ROOT)}: {s[:80]}" for s in strings + comments
                  if re.search(r"\b20\d\d-\d\d-\d\d\b|\bissue \d+", s)]
    assert dated == []
