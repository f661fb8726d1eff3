"""Exceptions that the command line reports as one-line errors."""


class InputError(ValueError):
    """Bad user input: the message names the file or field and what is wrong."""
