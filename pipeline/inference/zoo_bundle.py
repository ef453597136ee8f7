"""MONAI model-zoo bundles (``configs/inference.json|yaml``, ``models/model.pt|ts``) as clinseg Predictor bundles.

A zoo bundle names the same components as ours (``network_def``, ``preprocessing``, ``inferer``,
``postprocessing``) but loads with ``LoadImaged``, writes with ``SaveImaged`` and restores with its own ``Invertd``.
:class:`ZooBundle` rewrites its config at load time, leaving the files as they are:

* preprocessing: ``LoadImaged`` -> clinseg's ``LoadScand`` (DICOM series, geometry checks, channel first, so the
  zoo's ``EnsureChannelFirstd`` steps go); the other transforms stay.
* postprocessing: ``Activationsd`` goes (the Predictor applies the softmax, after averaging the ensemble and TTA;
  bundles of sigmoid region channels are refused), ``SaveImaged`` goes (the batch runner writes the outputs);
  ``Invertd`` and the label steps stay, then :class:`~pipeline.inference.zoo_restore.ZooInputGridd` checks the
  map is on the input grid and ``CleanLabelsd`` takes the clean-up flags.
* label names: ``metadata.json``'s ``network_data_format.outputs.pred.channel_def`` (channel i -> label i).
* weights: ``models/model.pt`` (a plain state_dict, read with ``weights_only=True``) or ``models/model.ts``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.utils import ensure_tuple
from torch import nn

from pipeline.core.bundle import Bundle, BundleError
from pipeline.core.checkpoint import CheckpointError

__all__ = ["ZooBundle", "is_zoo_layout", "open_bundle", "zoo_network"]

WEIGHT_FILES = ("model.pt", "model.ts")
DROPPED_PRE = ("EnsureChannelFirstd",)
DROPPED_POST = ("Activationsd", "SaveImaged")
PRED_KEY = "pred"


def _target(step: Any) -> str:
    """The class name a config step builds (``"monai.transforms.Invertd"`` -> ``"Invertd"``), ``""`` if none."""
    return str(step.get("_target_", "")).rsplit(".", 1)[-1] if isinstance(step, Mapping) else ""


def is_zoo_layout(root: str | Path) -> bool:
    """Whether ``root`` holds a model-zoo bundle: an ``inference`` config whose postprocessing lists its steps
    without clinseg's ``RestoreToInputd``."""
    bundle = Bundle.at(root)
    try:
        files = bundle.config_files("inference")
    except BundleError:
        return False
    parser = ConfigParser()
    parser.read_config(files)
    steps = parser.get("postprocessing#transforms", None)
    return isinstance(steps, list) and not any(_target(s) == "RestoreToInputd" for s in steps)


def open_bundle(path: str | Path) -> Bundle:
    """:class:`ZooBundle` for a folder in the model-zoo layout, clinseg's :class:`Bundle` otherwise (a registered
    model, ``models:/...``: :func:`pipeline.inference.model_ref.open_model`)."""
    return ZooBundle.at(path) if is_zoo_layout(path) else Bundle.at(path)


@dataclass(frozen=True)
class ZooBundle(Bundle):
    """A model-zoo bundle whose inference config is rewritten for the Predictor (module docstring)."""

    @property
    def default_checkpoint(self) -> Path:
        """``models/model.pt``, else ``models/model.ts``; an error naming both when neither exists."""
        for name in WEIGHT_FILES:
            if (self.root / "models" / name).is_file():
                return self.root / "models" / name
        raise BundleError(
            f"zoo bundle {self.root} has no weights: neither models/model.pt nor models/model.ts exists "
            f"(`python -m monai.bundle download {self.name} --bundle_dir ...` fetches them; or pass --checkpoint)"
        )

    def parser(self, config: str | Path | Sequence[str | Path] = "inference", **overrides: Any) -> ConfigParser:
        """The bundle's config as MONAI reads it, with clinseg's loader, restore check and label names."""
        parser = super().parser(config, **overrides)
        where = self.config_files(config)[-1]
        pre = _steps(parser, "preprocessing", where)
        if _target(pre[0]) != "LoadImaged":
            first = _target(pre[0]) or repr(pre[0])
            raise BundleError(f"{where}: preprocessing must start with LoadImaged, it starts with {first}")
        keys = pre[0]["keys"]
        pre = [{"_target_": "transforms.io.scan.LoadScand", "keys": keys}] + [
            s for s in pre[1:] if _target(s) not in DROPPED_PRE
        ]
        parser["preprocessing#transforms"] = pre
        input_keys = [str(k) for k in ensure_tuple(parser.get_parsed_content("preprocessing#transforms#0#keys"))]
        post = _steps(parser, "postprocessing", where)
        if any(_target(s) == "Activationsd" and s.get("sigmoid") for s in post):
            raise BundleError(
                f"{where}: its postprocessing applies a sigmoid (overlapping region channels); clinseg runs zoo "
                "bundles with one softmax channel per label only"
            )
        inverts = [s for s in post if _target(s) == "Invertd"]
        mode = "nearest" if not inverts or inverts[0].get("nearest_interp", True) else "linear"
        post = [s for s in post if _target(s) not in DROPPED_POST] + [
            {"_target_": "pipeline.inference.zoo_restore.ZooInputGridd", "keys": PRED_KEY,
             "image_key": input_keys[0], "mode": mode},
            {"_target_": "pipeline.inference.postprocess.CleanLabelsd", "keys": PRED_KEY, "settings": {}},
        ]  # fmt: skip
        parser["postprocessing#transforms"] = post
        parser["input_keys"] = input_keys
        parser["class_names"] = zoo_class_names(self.meta_file)
        return parser


def _steps(parser: ConfigParser, name: str, where: str) -> list[Any]:
    """The raw ``transforms`` list of the config's ``name`` Compose; an error naming the file when it has none."""
    steps = parser.get(f"{name}#transforms", None)
    if not isinstance(steps, list) or not steps:
        raise BundleError(f"{where}: {name!r} must be a Compose with a 'transforms' list")
    return list(steps)


def zoo_class_names(meta_file: Path) -> list[str]:
    """Names of labels 1..C-1 from ``network_data_format.outputs.pred.channel_def`` (channel 0: background)."""
    try:
        channels = json.loads(meta_file.read_text())["network_data_format"]["outputs"][PRED_KEY]["channel_def"]
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{meta_file}: no network_data_format.outputs.pred.channel_def for the label names") from e
    wanted = [str(i) for i in range(len(channels))]
    if sorted(channels) != sorted(wanted):
        raise BundleError(f"{meta_file}: channel_def keys must be 0..{len(channels) - 1}, got {sorted(channels)}")
    return [str(channels[i]) for i in wanted[1:]]


def zoo_network(parser: ConfigParser, path: Path, device: torch.device) -> nn.Module:
    """The network of zoo weights: TorchScript (``.ts``) as saved, else ``network_def`` with the state_dict of
    ``path`` (plain, or under ``"model"``), loaded with ``weights_only=True``; in eval mode on ``device``."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".ts":
            return torch.jit.load(str(path), map_location=device).eval()
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e})") from e
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"checkpoint {path} is not a state_dict ({type(state).__name__})")
    network = parser.get_parsed_content("network_def")
    try:
        network.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit the bundle's network_def: {e}") from e
    return network.to(device).eval()
