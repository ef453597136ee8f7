"""What the commands share: the help formatter, flags defined once (bundle, inference, outputs, archive,
overlays) and the argument checks that run before any heavy import (no torch, no MONAI here)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.core.model_uri import is_model_uri
from pipeline.inference.nnunet_folder import is_nnunet_uri, open_model_folder
from pipeline.outputs.registry import OUTPUTS, OutputOptions

ARCHIVE_PREFIXES = ("dicomweb:", "dimse:")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` after an option's help when X is a value (not None, False or empty) and the help
    does not state its default itself."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or default is None or default is False or default in ([], argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def command(sub: argparse._SubParsersAction, name: str, summary: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A sub-command with ``summary`` as its help and (unless given) its description."""
    kwargs.setdefault("description", summary[0].upper() + summary[1:] + ".")
    return sub.add_parser(name, help=summary, formatter_class=HelpFormatter, **kwargs)


def checked(p: argparse.ArgumentParser, func: Any, *, paths: Sequence[str] = (), bundles: Sequence[str] = ()) -> None:
    """Run ``func`` for the command; first :func:`check_arguments` checks that the arguments named in ``paths``
    exist and those in ``bundles`` are bundle folders or ``models:/`` URIs."""
    p.set_defaults(func=func, check_paths=tuple(paths), check_bundles=tuple(bundles))


def check_arguments(args: argparse.Namespace) -> None:
    """Fail fast, before torch and MONAI load, on a missing path or a folder that is not a bundle.

    Raises:
        FileNotFoundError: a path argument that does not exist (its flag and value named).
        ValueError: a bundle argument that is neither a bundle folder nor a ``models:/`` URI, nor a checked
            ``nnunet:PATH`` (:func:`pipeline.inference.nnunet_folder.open_model_folder`) where the command takes one.
    """
    for name in getattr(args, "check_paths", ()):
        value = getattr(args, name, None)
        for item in value if isinstance(value, list) else [value]:
            if item is None or str(item).startswith(ARCHIVE_PREFIXES) or Path(item).exists():
                continue
            raise FileNotFoundError(f"{_flag(name)} {item}: no such file or folder (the path does not exist)")
    for name in getattr(args, "check_bundles", ()):
        value = getattr(args, name, None)
        if value is not None and is_nnunet_uri(value):
            if not hasattr(args, "checkpoint_name"):
                raise ValueError(f"{value}: nnU-Net models run in clinseg predict, serve and evaluate, not here")
            open_model_folder(value, args.nnunet_folds, args.checkpoint_name)
            continue
        if value is None or is_model_uri(value):
            continue
        meta = Path(value) / "configs" / "metadata.json"
        if not meta.is_file():
            raise ValueError(f"{value} is not a MONAI bundle: {meta.resolve()} is missing")


def _flag(dest: str) -> str:
    return dest if dest in ("path", "bundle", "src", "dataset", "fixed", "moving", "run", "run_dir") else f"--{dest.replace('_', '-')}"


def add_bundle(p: argparse.ArgumentParser, *, registry_flag: bool = True) -> None:
    """The ``bundle`` positional (a folder or a registered model) and, unless the command has its own,
    ``--tracking-uri`` naming the registry."""
    p.add_argument("bundle", help="bundle folder, e.g. bundles/ct_organ_resunet3d or an exported one, a "
                                  "registered model: models:/NAME/VERSION, models:/NAME@ALIAS, or (predict, serve, "
                                  "evaluate) an nnU-Net v2 trained-model folder: nnunet:PATH, or a registered one")
    if registry_flag:
        p.add_argument("--tracking-uri",
                       help="MLflow registry of a models:/ model (default: MLFLOW_TRACKING_URI or ./mlflow.db)")


def overrides(pairs: Sequence[str]) -> dict[str, object]:
    """``--set key=value`` pairs; values parse as YAML (numbers, lists, booleans), else stay strings."""
    import yaml

    result: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects key=value (e.g. --set max_epochs=5), got {pair!r}")
        result[key] = yaml.safe_load(value)
    return result


def duration(text: str) -> float:
    """``--time-budget`` values (``90s``, ``30m``, ``1.5h``) as seconds; a bad one is an argparse error."""
    from pipeline.core.duration import parse_duration

    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_config_overlays(parser: argparse.ArgumentParser, base: str) -> None:
    """``--config``: overlays merged after the ``base`` config; ``--set``: overrides, applied last."""
    parser.add_argument("--config", action="append", default=[], metavar="OVERLAY",
                        help=f"overlay merged after {base}.yaml, as monai.bundle run merges a list: a "
                             ".yaml/.json file or a config of the bundle by name (e.g. cosine_warmup); "
                             "repeatable, in order")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config id after the overlays, e.g. --set roi_size=[96,96,48] "
                             "(repeatable)")  # fmt: skip


def add_output_options(p: argparse.ArgumentParser) -> None:
    """One flag per optional output of the registry (:data:`pipeline.outputs.registry.OUTPUTS`)."""
    g = p.add_argument_group("outputs", "files written per case besides seg.nii.gz and volumes.json")
    for spec in OUTPUTS:
        if spec.default is not None:
            g.add_argument(spec.flag, dest=spec.name, action="store_false" if spec.default else "store_true",
                           help=spec.help)  # fmt: skip


def output_options(args: argparse.Namespace) -> OutputOptions:
    """The :class:`OutputOptions` of the flags of :func:`add_output_options`."""
    return OutputOptions(**{s.name: getattr(args, s.name) for s in OUTPUTS if s.default is not None})
