"""YAML read with limits: a recipe file of at most `MAX_BYTES`, expanding to at most `MAX_NODES` nodes.

``yaml.safe_load`` runs no code, but it happily returns a "billion laughs" document: a few lines of anchors and
aliases that stand for billions of values. PyYAML shares the aliased objects, so loading is quick; everything
after it (copies, checks, JSON) walks the expanded tree and never finishes. Here the composed node graph is
measured first, counting every alias as the nodes it repeats, and a document over the limit is refused before
any Python object is built. Recursive aliases (a list that contains itself) are refused too.

Examples:
    >>> load_yaml("train: {epochs: 1}", "recipe")
    {'train': {'epochs': 1}}
    >>> load_yaml("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\\n"
    ...           "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\\n"
    ...           "e: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]", "recipe")
    Traceback (most recent call last):
    ...
    ValueError: recipe: the YAML expands to over 10,000 values (each alias repeats what it names); refused
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MAX_BYTES = 1 << 20  # a recipe is a few hundred bytes; a megabyte is already absurd
MAX_NODES = 10_000


def _children(node: Any) -> list[Any]:
    import yaml

    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_size(root: Any, where: str) -> None:
    """Count the nodes of ``root`` with every alias expanded, without expanding anything (one visit per node)."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:  # iterative: a deeply nested document must not exhaust Python's recursion limit
        node, finished = stack.pop()
        key = id(node)
        if finished:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[key] > MAX_NODES:
                raise ValueError(f"{where}: the YAML expands to over {MAX_NODES:,} values (each alias repeats what it "
                                 "names); refused")
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise ValueError(f"{where}: the YAML has a recursive alias (a value that contains itself)")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)


def load_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load(text)`` after checking its expanded size; errors start with ``where``.

    Raises:
        ValueError: not YAML, nested too deeply, a recursive alias, or more than `MAX_NODES` values expanded.
    """
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_size(node, where)
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise ValueError(f"{where} is not valid YAML: {err}") from err
    except RecursionError:
        raise ValueError(f"{where}: the YAML is nested too deeply") from None
    finally:
        loader.dispose()


def read_yaml_file(path: Path, where: str) -> Any:
    """The YAML document in ``path``, refused unread when over `MAX_BYTES`.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: too large, not UTF-8, or refused by `load_yaml`.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{where}: no recipe file at {str(path)!r}")
    with path.open("rb") as f:
        raw = f.read(MAX_BYTES + 1)  # never more, whatever stat() said
    if len(raw) > MAX_BYTES:
        raise ValueError(f"{where}: {str(path)!r} is larger than {MAX_BYTES >> 20} MiB; a recipe is a few hundred "
                         "bytes of YAML")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{where}: {str(path)!r} is not UTF-8 text: {err}") from err
    return load_yaml(text, f"{where}: {str(path)!r}")


__all__ = ["MAX_BYTES", "MAX_NODES", "load_yaml", "read_yaml_file"]
