"""Write the docs pages that are generated from the code, so they cannot drift from it: cli.md from the
`fxprune` argparse parser, passes.md from passes/README.md (the contract) and the pass registry.

    .venv/bin/python docs/generate.py          # rewrite them; tests/test_docs.py fails while they are stale
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _default(action: argparse.Action) -> str:
    if action.required:
        return "required"
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)) or action.default is None:
        return ""
    if action.default == [] or action.default == argparse.SUPPRESS:
        return ""
    return f"`{action.default}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def cli_page() -> str:
    from fxprune.runners.arguments import build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps usage at the terminal's width: the same page everywhere
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in sub._choices_actions}
    lines = ["# Command line", "",
             "Generated from the `fxprune` parser by `docs/generate.py`; `fxprune COMMAND --help` prints the same.",
             ""]
    for name, command in sub.choices.items():
        lines += [f"## fxprune {name}", "", _cell(helps.get(name) or ""), "", "```text",
                  command.format_usage().strip(), "```", ""]
        for group in command._action_groups:
            actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
            if not actions:
                continue
            title = {"positional arguments": "Arguments", "options": "Options"}.get(group.title, group.title)
            lines += [f"### {title[0].upper() + title[1:]}" if title not in ("Arguments", "Options")
                      else f"**{title}**", "", "| argument | default | what it does |", "| --- | --- | --- |"]
            for a in actions:
                flags = ", ".join(f"`{s}`" for s in a.option_strings) or f"`{a.dest}`"
                choices = f" (one of {', '.join(map(str, a.choices))})" if a.choices else ""
                lines.append(f"| {flags} | {_default(a)} | {_cell((a.help or '') + choices)} |")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def passes_page() -> str:
    import fxprune.passes  # noqa: F401  (registers every pass)
    from fxprune.core.pass_base import registered
    from fxprune.core.pipeline import _default_text

    contract = (ROOT / "passes" / "README.md").read_text().replace("# fxprune passes: the contract",
                                                                   "# Passes: the contract", 1)
    lines = [contract.rstrip(), "", "## Every pass and its options", "",
             "Generated from the pass registry by `docs/generate.py` (`fxprune passes` prints the same).", ""]
    for name, cls in registered().items():
        lines += [f"### {name}", "", _cell(cls.summary) + (" Lossless." if cls.lossless else ""), ""]
        options = cls.options()
        if options:
            lines += ["| option | default | what it sets |", "| --- | --- | --- |"]
            lines += [f"| `{o.name}` | `{_default_text(o)}` | {_cell(o.help)} |" for o in options]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


PAGES = {"cli.md": cli_page, "passes.md": passes_page}


def main() -> None:
    for name, page in PAGES.items():
        (ROOT / "docs" / name).write_text(page())
        print(f"wrote docs/{name}")


if __name__ == "__main__":
    main()
