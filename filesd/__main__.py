"""`python -m filesd`: the command line, as the `filesd` script runs it."""

from .cli import entrypoint

entrypoint()
