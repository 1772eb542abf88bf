"""MkDocs hook: the CLI reference page is the real ``--help`` of ``pfgdf`` and of every subcommand.

The page (``cli.md``) holds one marker line, ``<!-- cli-reference -->``; at build time it is replaced by the
help text that ``pfgdf_plugin.cli.build_parser()`` formats, one section per subcommand in ``COMMANDS`` order.
Nothing is written by hand, so the page cannot drift from the parser. A missing marker or a subcommand the
parser does not register stops the build.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator

from mkdocs.exceptions import PluginError

PAGE = "cli.md"
MARKER = "<!-- cli-reference -->"
# argparse wraps help at the terminal width; fix it so the page does not depend on who builds it.
WIDTH = "100"


@contextlib.contextmanager
def _columns(width: str) -> Iterator[None]:
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = width
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def subcommand_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommand parsers registered on ``parser``, by name, in registration order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _choice_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The one-line entries (name and ``help=``) that ``pfgdf --help`` lists for the subcommands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action._choices_actions)
    return []


def render() -> str:
    """Markdown for the whole reference: ``pfgdf --help``, then ``pfgdf COMMAND --help`` for each command."""
    from pfgdf_plugin.cli import COMMANDS, build_parser

    with _columns(WIDTH):
        parser = build_parser()
        subs = subcommand_parsers(parser)
        missing = [name for name in COMMANDS if name not in subs]
        if missing:
            raise PluginError(f"cli_reference hook: COMMANDS lists {missing} but build_parser() does not register them")
        summaries = {choice.dest: choice.help for choice in _choice_actions(parser)}
        out = ["## pfgdf", "", "```text", parser.format_help().rstrip(), "```", ""]
        out += ["| command | what it does |", "| --- | --- |"]
        out += [f"| [`pfgdf {name}`](#pfgdf-{name}) | {summaries.get(name, '')} |" for name in subs]
        out.append("")
        for name, sub in subs.items():
            out += [f"## pfgdf {name}", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise PluginError(f"cli_reference hook: {PAGE} has no {MARKER!r} line to replace")
    return markdown.replace(MARKER, render())
