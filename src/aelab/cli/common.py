"""What every command's parser shares: the one-line usage errors, the options common to several
commands (a run, its data, a device, input files), and saying the library's setting names as this
command's options."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import inspect
import logging
import re
import sys
from pathlib import Path

from ..config import RESIZE_METHODS, DataConfig, ModelConfig, RunConfig, TrainConfig
from ..errors import AelabError

SPLIT_CHOICES = ("test", "val", "train")


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that points at --help, and an option or a choice
    mistyped gets a "did you mean" (difflib, for every Python; argparse's own ``suggest_on_error``
    came in 3.14 and covers choices only)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}{self._suggestion(message)} (see `{self.prog} --help`)\n")

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        """As argparse's, but an unknown option is refused by the command it was given to (the main
        parser knows none of the commands' options), so that it can say which option was meant."""
        found, extras = self.parse_known_args(args, namespace)
        if extras:
            getattr(found, "parser", self).error(f"unrecognized arguments: {' '.join(extras)}")
        return found

    def _suggestion(self, message: str) -> str:
        """", did you mean --latent-dim?" for an unknown option or choice close to a known one; else ""."""
        known = re.match(r"unrecognized arguments: (.*)", message)
        if known:
            options = [option for action in self._actions for option in action.option_strings
                       if option.startswith("--")]
            words = [word.split("=")[0] for word in known.group(1).split() if word.startswith("--")]
        else:
            choice = re.match(r"argument .*: invalid choice: '([^']*)' \(choose from (.*)\)", message)
            if not choice:
                return ""
            options, words = re.findall(r"'([^']*)'", choice.group(2)) or choice.group(2).split(", "), [choice.group(1)]
        guesses = [match for word in words for match in difflib.get_close_matches(word, options, n=1, cutoff=0.6)]
        return f"; did you mean {' '.join(guesses)}?" if guesses else ""


# --- options ------------------------------------------------------------------------------------

# the one rule for where outputs go, said in every command's --help that writes something
OUTPUT_RULE = ("Where files go: to --out when it is given; otherwise into the run folder's outputs/ folder "
               "(RUN/outputs/NAME), named after what was made. Training and the report write the rest of the run "
               "folder (config, weights, figures/, report.html, ...), and no command writes over those files; a "
               "command run again replaces its own earlier output, and train --overwrite removes outputs/ with the "
               "run it replaces.")


def command(sub, name: str, summary: str, func, description: str | None = None,
            writes: bool = True) -> argparse.ArgumentParser:
    """The parser of the command ``name``: ``summary`` in ``aelab --help``, ``description`` (default:
    ``func``'s docstring) in its own --help, followed by ``OUTPUT_RULE`` for a command that
    ``writes`` files; ``func`` runs it."""
    parser = sub.add_parser(name, help=summary, description=inspect.cleandoc(description or func.__doc__ or summary),
                            epilog=OUTPUT_RULE if writes else None)
    parser.set_defaults(func=func)
    return parser


def add_common(parser: argparse.ArgumentParser, data_dir: bool = True) -> None:
    """--data-dir (unless ``data_dir`` is False), --quiet, --debug; and the command's own parser for its errors."""
    if data_dir:
        parser.add_argument("--data-dir", metavar="DIR",
                            help="folder for datasets and the image cache (default: $AELAB_DATA_DIR, else "
                                 "~/.cache/aelab/data)")
    add_switches(parser, argparse.SUPPRESS)  # (given before the command, or after it: the same)
    parser.set_defaults(parser=parser)  # error messages name this command's options


def add_switches(parser: argparse.ArgumentParser, default) -> None:
    """--quiet and --debug: the main parser's, and every command's (their default leaves the main one's)."""
    parser.add_argument("--quiet", "-q", action="store_true", default=default, help="no progress bars or messages")
    parser.add_argument("--debug", action="store_true", default=default, help="show tracebacks")


def add_run(parser: argparse.ArgumentParser, split_help: str = "default: test", split_default: str | None = "test",
            splits: tuple[str, ...] = SPLIT_CHOICES) -> None:
    """RUN, --split, --data, --memory-limit, --device: the commands that read a run and its images."""
    add_run_folder(parser)
    parser.add_argument("--split", choices=splits, default=split_default, help=split_help)
    add_data(parser)
    add_device(parser)


def add_run_folder(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="a run folder written by `aelab train`")


def add_inputs(parser: argparse.ArgumentParser) -> None:
    """RUN and INPUT...: the files-in commands (reconstruct, denoise, encode)."""
    add_run_folder(parser)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders")
    add_device(parser)


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", metavar="DEV",
                        help="where the model runs: auto (cuda, then mps, else cpu), cpu, cuda, cuda:N, mps "
                             "(default: auto)")


def add_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="SOURCE",
                        help="the images to use instead of the run's own source: another copy of the same data, or "
                             "new images (a folder, a .npy / .npz file, a named dataset), prepared as the run's "
                             "training images were (channels, size)")
    parser.add_argument("--memory-limit", metavar="SIZE",
                        help="a folder larger than this is read from its cache on disk (default: the run's setting)")


def add_preparation(parser: argparse.ArgumentParser) -> None:
    """--channels, --image-size, --resize: how images are made uniform (the tools take the run's)."""
    parser.add_argument("--channels", type=int, choices=(1, 3),
                        help="1 (grey; colour images by their luma) or 3 (colour; grey images repeated); an alpha "
                             "channel is composited on black (default: 3 if any image has colour, else 1)")
    parser.add_argument("--image-size", metavar="H[xW]",
                        help="the size every image is made, e.g. 64 or 48x64 (default: the most common size of the "
                             "images, made at most 128 on its longer side: larger pictures keep their shape, made "
                             "smaller; the memory a size needs is said before training)")
    parser.add_argument("--resize", choices=RESIZE_METHODS,
                        help="how an image of another size is fitted: stretch to the size, crop (scale to cover, cut "
                             "the centre) or pad (scale to fit, black borders) (default: stretch)")


def dims(text: str) -> tuple[int, int]:
    """I,J: two latent variables."""
    try:
        first, second = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two latent variables like 0,1, got {text!r}") from None
    return first, second


def options_for(args: argparse.Namespace, mode: str, applies: dict[str, tuple[str, ...]],
                defaults: dict[str, object]) -> None:
    """Refuse an option given for a mode it does not apply to (one line naming both); then fill in
    the defaults of the options left out."""
    flags = {action.dest: action.option_strings[0] for action in args.parser._actions if action.option_strings}
    for dest, modes in applies.items():
        if getattr(args, dest, None) is not None and mode not in modes:
            raise AelabError(f"{flags[dest]} applies to {' or '.join(modes)} only, not to {mode}; leave it out")
    for dest, value in defaults.items():
        if getattr(args, dest, None) is None:
            setattr(args, dest, value)


@contextlib.contextmanager
def progress_bar(args: argparse.Namespace, what: str, unit: str = "iteration"):
    """A progress bar on stderr (none with --quiet), with the time so far and the time left: the
    ``progress(done, total)`` it yields moves it."""
    if args.quiet:
        yield None
        return
    from tqdm.auto import tqdm

    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=what, unit=unit, leave=False, file=sys.stderr, disable=None)  # (terminals)
        bar.update(done - bar.n)

    try:
        yield progress
    finally:
        if bar is not None:
            bar.close()


# --- loading a run and its images -----------------------------------------------------------------

def run_and_split(args: argparse.Namespace):
    """The run (on --device) and one split (--split) of its data: the run's source, or --data's,
    prepared as the run's was; the images are closed when the command ends."""
    from ..data.sets import load_run_split

    run = run_from_args(args)
    return run, opened(args, load_run_split(run.config, data_config(run.config, args), args.split))


def run_from_args(args: argparse.Namespace):
    """The run folder RUN, its model on --device."""
    from ..devices import resolve_device
    from ..run import load_run

    return load_run(args.run, device=resolve_device(args.device))


def data_config(config: RunConfig, args: argparse.Namespace) -> DataConfig:
    """The run's data settings (its source, prepared as it was trained), with what the options replace:
    --data (another copy of the data, or new images), --data-dir, --memory-limit."""
    from ..data.sets import data_for_run

    return data_for_run(config, getattr(args, "data", None), getattr(args, "data_dir", None),
                        getattr(args, "memory_limit", None))


def opened(args: argparse.Namespace, images):
    """``images`` (an ImageSet), closed when the command ends (``main``)."""
    args.resources.callback(images.close)
    return images


def say_few(images, config: RunConfig, split: str) -> None:
    """A warning when the test split of the run's own data holds too few images to trust its numbers."""
    from ..data.sets import few_test_images

    note = few_test_images(images, config.data) if split == "test" else None
    if note:
        logging.getLogger("aelab").warning(note)


def report_skipped(skipped: list[tuple[str, str]], folder: Path, name: str = "skipped.csv") -> None:
    """Say how many input files were not usable images, and where they are listed."""
    from ..run import write_skipped

    if skipped:
        path = write_skipped(skipped, folder, name)
        logging.getLogger("aelab").warning("%d files skipped, not usable images (such as %s: %s); listed in %s",
                                           len(skipped), skipped[0][0], skipped[0][1], path)


# --- the library's names of settings, as options --------------------------------------------------

OTHER_DESTS = {"dataset": ("data",)}  # a config field -> the other dests of the options that set it


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """How the library's names of settings read on this command's line: ``train.lr`` and ``lr`` -> ``--lr``."""
    flags = {action.dest: action.option_strings[0] for action in parser._actions
             if action.option_strings and action.option_strings[0].startswith("--")}
    names = dict(flags)
    for section, kind in (("data", DataConfig), ("model", ModelConfig), ("train", TrainConfig)):
        for field in dataclasses.fields(kind):
            # each option's dest is its config field's name, but the tools' --data (`data.dataset`)
            dest = next((dest for dest in (field.name, *OTHER_DESTS.get(field.name, ())) if dest in flags), None)
            if dest is not None:
                names[f"{section}.{field.name}"] = flags[dest]
    return names


def for_the_command_line(message: str, parser: argparse.ArgumentParser) -> str:
    """The library names settings in backquotes (`train.lr`, `overwrite`); say them as this command's options."""
    names = flag_names(parser)
    return re.sub(r"`([\w.]+)`", lambda match: names.get(match.group(1), match.group(0)), message)
