"""MkDocs hook: pages written outside the docs site's own work join the navigation as soon as their file exists.

``docs/chip.md`` (CHIP in detail) and ``docs/deployment.md`` (export and edge latency) are written alongside the
code they describe. Listing them in ``mkdocs.yml`` before they exist would break the strict build, and leaving
them out once they exist would too (``validation.omitted_files``). So their slots live here: each is inserted
into the configured nav when, and only when, its file is present and the nav does not list it already.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# (file, nav title, parent section or None for the top level, the entry it follows)
SLOTS: tuple[tuple[str, str, str | None, str], ...] = (
    ("chip.md", "CHIP", "Concepts", "pfgdf.md"),
    ("deployment.md", "Deployment", None, "recipes.md"),
)


def _files(nav: Any) -> list[str]:
    """Every page path listed anywhere in ``nav``."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [f for value in nav.values() for f in _files(value)]
    if isinstance(nav, list):
        return [f for item in nav for f in _files(item)]
    return []


def _position(items: list, after: str) -> int:
    """Index just past the entry for page ``after`` (``"x.md"`` or ``{title: "x.md"}``); the end if absent."""
    for i, item in enumerate(items):
        if item == after or (isinstance(item, dict) and after in item.values()):
            return i + 1
    return len(items)


def add_optional_pages(nav: list, docs_dir: Path) -> list[str]:
    """Insert the present optional pages into ``nav`` in place; returns the files added."""
    added = []
    for file, title, section, after in SLOTS:
        if not (docs_dir / file).is_file() or file in _files(nav):
            continue
        items = nav
        parent = next((i for i in nav if isinstance(i, dict) and isinstance(i.get(section), list)), None)
        if section is not None and parent is not None:
            items = parent[section]
        items.insert(_position(items, after), {title: file})
        added.append(file)
    return added


def on_config(config):
    if config.nav:
        add_optional_pages(config.nav, Path(config.docs_dir))
    return config
