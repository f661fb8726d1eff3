"""``python -m biplanar``: the same as the ``biplanar`` command."""

from biplanar.cli import main

main()
