"""Exceptions that the command line reports as one-line errors."""

from __future__ import annotations

from collections.abc import Collection


class InputError(ValueError):
    """Bad user input: the message names the file or field and what is wrong."""


def require_choice(name: str, value: str, choices: Collection[str]) -> None:
    """Raise :class:`InputError` ``"<name>: expected one of a, b, got 'x'"`` unless ``value`` is a choice."""
    if value not in choices:
        raise InputError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")
