"""``python -m polybus``: the ``polybus`` command line."""

from .cli import main

main()
