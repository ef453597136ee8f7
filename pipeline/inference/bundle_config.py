"""Inference options written into a bundle's inference config, so the components it builds are the only truth.

The order is fixed: the bundle's values (with ``--set`` overrides), then the options given (CLI flags). The
sliding window is the config's ``inferer`` (built once, with these values); restoring and clean-up are the
``RestoreToInputd`` and ``CleanLabelsd`` steps of its ``postprocessing``, the chain MONAI's evaluator runs too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.inferers import SlidingWindowInferer
from monai.transforms import Compose
from torch import nn

from pipeline.core.checkpoint import network_from_checkpoint
from pipeline.inference.options import InferenceOptions, PostprocessOptions
from pipeline.inference.postprocess import CleanLabelsd
from pipeline.inference.restore import RestoreToInputd

__all__ = ["bundle_network", "bundle_window", "configure", "resolved_options", "steps_of"]


def _step_ids(parser: ConfigParser, name: str, option: str) -> list[str]:
    """Config ids of the ``postprocessing`` steps whose ``_target_`` is the class ``name`` (at least one)."""
    steps = parser.get("postprocessing#transforms", [])
    ids = [
        f"postprocessing#transforms#{i}"
        for i, step in enumerate(steps)
        if isinstance(step, dict) and str(step.get("_target_", "")).rsplit(".", 1)[-1] == name
    ]
    if not ids:
        raise ValueError(f"{option} needs a {name} step in the bundle's postprocessing; it has none")
    return ids


def configure(
    parser: ConfigParser,
    options: InferenceOptions,
    postprocess: PostprocessOptions | None,
    device: torch.device,
) -> None:
    """Write the given options over the bundle's ``inferer`` and ``postprocessing`` config (``None`` fields keep
    the bundle's)."""
    sliding = {
        "roi_size": None if options.roi_size is None else [int(v) for v in options.roi_size],
        "overlap": options.overlap,
        "sw_batch_size": options.sw_batch_size,
        "mode": options.mode,
    }
    for key, value in sliding.items():
        if value is not None:
            parser[f"inferer#{key}"] = value
    parser["inferer#sw_device"] = device
    parser["inferer#device"] = torch.device("cpu") if options.keep_volume_on_cpu else device
    if options.restore is not None:
        for step in _step_ids(parser, "RestoreToInputd", "restore"):
            parser[f"{step}#mode"] = options.restore
    if postprocess is not None:
        for step in _step_ids(parser, "CleanLabelsd", "label clean-up"):
            parser[f"{step}#settings"] = postprocess.as_dict()


def steps_of(postprocessing: Compose, kind: type) -> list[Any]:
    """The steps of ``postprocessing`` (nested ``Compose`` included) of class ``kind``."""
    found = []
    for step in postprocessing.transforms:
        if isinstance(step, Compose):
            found += steps_of(step, kind)
        elif isinstance(step, kind):
            found.append(step)
    return found


def resolved_options(
    options: InferenceOptions,
    inferer: SlidingWindowInferer,
    postprocessing: Compose,
    device: torch.device,
    amp: bool,
) -> tuple[InferenceOptions, PostprocessOptions]:
    """The options in effect: sliding window from the built inferer, restore mode and clean-up from the built
    postprocessing."""
    restores = steps_of(postprocessing, RestoreToInputd)
    if not restores:
        raise ValueError(
            "the bundle's postprocessing must bring labels back onto the input grid: it needs a "
            "pipeline.inference.restore.RestoreToInputd step"
        )
    cleanups = steps_of(postprocessing, CleanLabelsd)
    overlap = inferer.overlap
    resolved = replace(
        options,
        roi_size=tuple(int(v) for v in inferer.roi_size),
        overlap=float(overlap) if not isinstance(overlap, Sequence) else tuple(float(v) for v in overlap),
        sw_batch_size=int(inferer.sw_batch_size),
        mode=str(inferer.mode),
        device=str(device),
        restore=restores[0].mode,
        amp=amp,
    )
    return resolved, cleanups[0].options if cleanups else PostprocessOptions()


def bundle_network(parser: ConfigParser, path: Path, device: torch.device) -> nn.Module:
    """The network of a clinseg bundle's checkpoint ``path``; the config's ``network_def`` where the checkpoint
    names none (:func:`~pipeline.core.checkpoint.network_from_checkpoint`)."""
    return network_from_checkpoint(
        path, map_location=device, default=lambda: parser.get_parsed_content("network_def")
    )


def bundle_window(parser: ConfigParser) -> tuple[float, float] | None:
    """The bundle's ``window: {level, width}`` (HU) as ``(level, width)`` for previews, if it has one."""
    window = parser.get("window", None)
    if isinstance(window, Mapping) and {"level", "width"} <= set(window):
        return float(window["level"]), float(window["width"])
    return None
