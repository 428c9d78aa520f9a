"""The ``aelab`` command: the parser of every command, and ``main``, which runs one and prints its
errors in one line. Each module beside this one parses and prints one family of commands; the work
is done by the library. A command function's docstring is its --help description
(``common.command``): edit it as user-facing text. Heavy libraries (torch, matplotlib, plotly,
scikit-learn) are imported inside the command functions, so ``aelab --help`` answers at once.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from typing import Sequence

from .. import __version__
from ..errors import AelabError
from . import data, export, files_io, generate, inspect_run, score, train
from .common import OUTPUT_RULE, Parser, add_switches, for_the_command_line

COMMANDS = (data, train, inspect_run, generate, score, files_io, export)  # each adds its commands' parsers, in this order


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="aelab", description="Train, evaluate and explore convolutional autoencoders on images.",
                    epilog="Start with `aelab train` (MNIST, latent size 4), then open the run's report.html. "
                           + OUTPUT_RULE)
    parser.add_argument("--version", action="version", version=f"aelab {__version__}")
    add_switches(parser, False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for family in COMMANDS:
        family.add_parsers(sub)
    return parser


class _StderrHandler(logging.Handler):
    """Log records as lines on whatever ``sys.stderr`` is at the time, above a progress bar that is
    showing (tqdm's write), not through it."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        tqdm.write(f"aelab: {record.getMessage()}", file=sys.stderr)
        sys.stderr.flush()


def _show_progress(quiet: bool) -> None:
    """The library logs what it is doing (data sources tried, report stages) to the logger "aelab"."""
    logger = logging.getLogger("aelab")
    if not any(isinstance(handler, _StderrHandler) for handler in logger.handlers):
        logger.addHandler(_StderrHandler())
        logger.propagate = False
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def _rank() -> int | None:
    """This process's rank under torchrun (None outside it)."""
    from .. import distributed

    return distributed.world()[0] if distributed.under_torchrun() else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _show_progress(args.quiet or bool(_rank()))  # under torchrun, rank 0 alone shows progress
    try:
        with contextlib.ExitStack() as args.resources:  # (what a command opens: closed when it ends)
            return args.func(args)
    except AelabError as error:
        if args.debug:
            raise
        message = for_the_command_line(str(error), args.parser)
        said = "error: "
        if getattr(error, "run_dir", None) is not None:  # stopped by a signal, checkpoint saved: the user's choice
            launcher = "torchrun ... -m aelab" if _rank() is not None else "aelab"
            message += f". Resume with: {launcher} train --resume {error.run_dir}"
            said = ""
        if not _rank():  # under torchrun every rank meets the same error: rank 0 says it
            print(f"aelab: {said}{message}", file=sys.stderr)
        return getattr(error, "exit_code", 2)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("aelab: interrupted", file=sys.stderr)
        return 130
