"""The ``aelab`` command line: argument parsing and printing only, one module per family of
commands (``train``, ``data``, ``inspect_run``, ``score``, ``files_io``, ``export``); ``main``
builds the parser and runs a command."""

from .common import for_the_command_line
from .main import build_parser, main

__all__ = ["build_parser", "for_the_command_line", "main"]
