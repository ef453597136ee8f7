"""The ``clinseg`` command line: one module per wing; each command maps flags to one library call and prints.

Parsing and the argument checks import no torch or MONAI (each command imports its library when it runs), so
a mistyped path or bundle is reported at once.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from pipeline.cli import data, evaluate, models, pacs, predict, train
from pipeline.cli.common import HelpFormatter, check_arguments

__all__ = ["build_parser", "main"]

logger = logging.getLogger("clinseg")

_WINGS = (data, train, predict, pacs, evaluate, models)
_ORDER = ("synth", "train", "predict", "serve", "evaluate", "compare", "export", "register-model", "tracking",
          "qc-reference", "demo", "inspect", "convert", "import", "plan", "register")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command (in the order ``clinseg --help`` lists them)."""
    parser = argparse.ArgumentParser(
        prog="clinseg", description="MONAI-based clinical segmentation pipeline.", formatter_class=HelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="one of:")
    for wing in _WINGS:
        wing.add_commands(sub)
    rank = {name: i for i, name in enumerate(_ORDER)}
    sub._choices_actions.sort(key=lambda action: rank.get(action.dest, len(rank)))
    return parser


def _root_cause(error: BaseException) -> BaseException:
    """The innermost error: MONAI wraps config and transform errors in ``RuntimeError`` chains."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        check_arguments(args)
        return args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        logger.error("%s", _root_cause(e))
        logger.debug("traceback", exc_info=True)
        return 2
