"""Exceptions that the command line reports as one-line errors."""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any


class InputError(ValueError):
    """Bad user input: the message names the file or field and what is wrong."""


def require_choice(name: str, value: str, choices: Collection[str]) -> None:
    """Raise :class:`InputError` ``"<name>: expected one of a, b, got 'x'"`` unless ``value`` is a choice."""
    if value not in choices:
        raise InputError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")


def require_positive(name: str, value: float | None) -> None:
    """Raise :class:`InputError` ``"<name>: expected a finite number > 0, got x"`` unless ``value`` is
    finite and > 0 (``None``: not given, fine)."""
    if value is not None and not 0 < value < math.inf:
        raise InputError(f"{name}: expected a finite number > 0, got {value}")


def one_line(text: str, width: int = 200) -> str:
    """``text`` on one line (runs of whitespace, newlines included, become one space), at most ``width``
    characters: a quoted reason (a library's multi-line message) fit for a one-line error."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def shown(value: Any, width: int = 80) -> str:
    """``value`` for a one-line message: its ``repr`` (a tuple as a list), at most ``width`` characters."""
    try:
        return one_line(repr(list(value) if isinstance(value, tuple) else value), width)
    except ValueError:  # repr of an integer of more than 4300 digits raises
        return "an integer too large to print"
