"""The lines a coverage child prints for its runner: progress marks on stderr, the result row on stdout.

A child that dies or is stopped leaves only its marks, which name the model and the stage it was in.
"""

from __future__ import annotations

import sys

# The child prints its result on this line of stdout, and its progress on stderr lines with the second prefix.
ROW_PREFIX = "pfgdf-coverage-row: "
MARK_PREFIX = "pfgdf-coverage: "


def mark(text: str) -> None:
    """Report progress (``stage NAME`` or ``model NAME``) on stderr, at once."""
    print(MARK_PREFIX + text, file=sys.stderr, flush=True)


def last_marks(stderr: str) -> tuple[str, str]:
    """The last model and stage a child announced: ``("", "start")`` when it announced none.

    Examples:
        >>> last_marks("pfgdf-coverage: stage select\\npfgdf-coverage: model resnet18\\npfgdf-coverage: stage prune")
        ('resnet18', 'prune')
    """
    marks = [line[len(MARK_PREFIX):] for line in stderr.splitlines() if line.startswith(MARK_PREFIX)]
    model = next((m.split(" ", 1)[1] for m in reversed(marks) if m.startswith("model ")), "")
    stage = next((m.split(" ", 1)[1] for m in reversed(marks) if m.startswith("stage ")), "start")
    return model, stage


def first_line(err: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message.

    Examples:
        >>> first_line(ValueError("bad\\nmore"))
        'ValueError: bad'
    """
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:300]}" if lines else type(err).__name__
