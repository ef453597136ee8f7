"""Predictor: a bundle's preprocessing, network(s) and sliding window, applied case by case onto each input's grid."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer
from monai.transforms import Compose, Invertd
from torch import nn

from pipeline.bundle import Bundle
from pipeline.checkpoint import CheckpointError, load_checkpoint, network_from_checkpoint

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferenceOptions:
    """Sliding-window settings; ``None`` keeps the bundle's value.

    Attributes:
        roi_size: patch size in voxels of the resampled image, e.g. ``(64, 64, 32)``.
        overlap: fraction of overlap between patches.
        sw_batch_size: patches per forward pass.
        mode: ``"gaussian"`` or ``"constant"`` blending.
        device: where the network runs (``"cpu"``, ``"cuda"``); ``None`` picks CUDA when present.
        keep_volume_on_cpu: keep the whole volume and the stitching buffer on CPU, move only patches.
    """

    roi_size: Sequence[int] | None = None
    overlap: float | None = None
    sw_batch_size: int | None = None
    mode: str | None = None
    device: str | None = None
    keep_volume_on_cpu: bool = True


class Predictor:
    """Segments cases with one network or an ensemble (probabilities averaged), returning label maps on the
    input's own grid (same shape and affine as the loaded input).

    Build it once with :meth:`from_bundle`, then call :meth:`predict_case` per case or
    ``pipeline.batch.predict_folder`` for a whole folder.
    """

    def __init__(
        self,
        networks: Sequence[nn.Module],
        preprocessing: Compose,
        inferer: SlidingWindowInferer,
        *,
        input_keys: Sequence[str] = ("image",),
        class_names: Sequence[str] = (),
        device: torch.device | str = "cpu",
        bundle_name: str = "",
        checkpoint_names: Sequence[str] = (),
    ) -> None:
        if not networks:
            raise ValueError("a Predictor needs at least one network")
        self.device = torch.device(device)
        self.networks = [net.to(self.device).eval() for net in networks]
        self.preprocessing = preprocessing
        self.inferer = inferer
        self.input_keys = tuple(input_keys)
        self.class_names = tuple(class_names)
        self.bundle_name = bundle_name
        self.checkpoint_names = list(checkpoint_names)
        self._invert = Invertd(keys="pred", transform=preprocessing, orig_keys=self.input_keys[0], nearest_interp=True)

    @classmethod
    def from_bundle(
        cls,
        bundle: str | Path | Bundle,
        checkpoints: str | Path | Sequence[str | Path] | None = None,
        *,
        options: InferenceOptions | None = None,
        config: str = "inference",
        **overrides: Any,
    ) -> Predictor:
        """Build from a bundle's inference config; weights default to the bundle's ``models/model.pt``.

        Args:
            bundle: bundle folder.
            checkpoints: one checkpoint or several (an ensemble, e.g. the folds of a cross-validation).
            options: sliding-window and device settings overriding the bundle's.
            config: config name under ``configs/``.
            overrides: config ids to override (``spacing=[1, 1, 2]``).
        """
        bundle = bundle if isinstance(bundle, Bundle) else Bundle.at(bundle)
        options = options or InferenceOptions()
        device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for but CUDA is not available on this machine")
        parser = bundle.parser(config, device=f"$torch.device('{device}')", **overrides)
        if checkpoints is None:
            checkpoints = [bundle.default_checkpoint]
        elif isinstance(checkpoints, (str, Path)):
            checkpoints = [checkpoints]
        nets = [_load_network(parser, Path(c), device) for c in checkpoints]
        inferer = _build_inferer(parser, options, device)
        input_keys = parser.get("input_keys", ["image"])
        return cls(
            nets,
            parser.get_parsed_content("preprocessing"),
            inferer,
            input_keys=input_keys,
            class_names=parser.get("class_names", []),
            device=device,
            bundle_name=bundle.name,
            checkpoint_names=[str(Path(c).resolve()) for c in checkpoints],
        )

    @property
    def label_names(self) -> dict[int, str]:
        """Label value -> structure name, background excluded."""
        return {i + 1: name for i, name in enumerate(self.class_names)}

    def load(self, inputs: str | Path | Mapping[str, str | Path]) -> dict[str, Any]:
        """Run the deterministic preprocessing on one case; ``inputs`` is a path or ``{key: path}``."""
        if not isinstance(inputs, Mapping):
            inputs = {self.input_keys[0]: inputs}
        missing = [k for k in self.input_keys if k not in inputs]
        if missing:
            raise KeyError(f"case inputs lack {missing}; the bundle needs {list(self.input_keys)}")
        return self.preprocessing({k: str(v) for k, v in inputs.items()})

    @torch.no_grad()
    def probabilities(self, data: Mapping[str, Any]) -> torch.Tensor:
        """Mean softmax of the ensemble on the preprocessed grid, (C, X, Y[, Z]) float32 on CPU."""
        image = torch.cat([torch.as_tensor(data[k]) for k in self.input_keys], dim=0)[None]
        total = None
        for net in self.networks:
            probs = torch.softmax(self.inferer(image, net).float(), dim=1)[0].cpu()
            total = probs if total is None else total.add_(probs)
        return total.div_(len(self.networks))

    def predict_loaded(self, data: dict[str, Any]) -> MetaTensor:
        """Label map (1, X, Y[, Z]) uint8 on the input's own grid from a preprocessed case (see :meth:`load`)."""
        labels = self.probabilities(data).argmax(dim=0, keepdim=True).to(torch.uint8)
        reference = data[self.input_keys[0]]
        data = dict(data)
        data["pred"] = MetaTensor(labels, affine=reference.affine, meta=dict(reference.meta))
        inverted = self._invert(data)["pred"]
        return MetaTensor(torch.as_tensor(inverted).round().to(torch.uint8), affine=inverted.affine, meta=inverted.meta)

    def predict_case(self, inputs: str | Path | Mapping[str, str | Path]) -> MetaTensor:
        """Segment one case: load, sliding window, argmax, back onto the input grid. Returns (1, X, Y[, Z])."""
        start = time.perf_counter()
        result = self.predict_loaded(self.load(inputs))
        logger.debug("case predicted in %.1f s", time.perf_counter() - start)
        return result


def _load_network(parser, path: Path, device: torch.device) -> nn.Module:
    checkpoint = load_checkpoint(path, map_location=device)
    if "network" in checkpoint:
        return network_from_checkpoint(path, map_location=device)
    network = parser.get_parsed_content("network_def")
    try:
        network.load_state_dict(checkpoint["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit the bundle's network_def: {e}") from e
    return network.to(device).eval()


def _build_inferer(parser, options: InferenceOptions, device: torch.device) -> SlidingWindowInferer:
    configured = parser.get_parsed_content("inferer")
    return SlidingWindowInferer(
        roi_size=options.roi_size or configured.roi_size,
        sw_batch_size=options.sw_batch_size or configured.sw_batch_size,
        overlap=configured.overlap if options.overlap is None else options.overlap,
        mode=options.mode or configured.mode,
        sw_device=device,
        device=torch.device("cpu") if options.keep_volume_on_cpu else device,
    )
