"""Predictor: a bundle's preprocessing, network(s) and sliding window, applied case by case onto each input's grid."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer
from monai.transforms import Compose, LoadImaged
from torch import nn

from pipeline.core.bundle import Bundle
from pipeline.core.checkpoint import network_from_checkpoint
from pipeline.inference.foreground_crop import body_box
from pipeline.inference.grid_restore import argmax_labels, resample_slabwise
from pipeline.inference.input_checks import bundle_modalities, modality_warnings
from pipeline.inference.options import InferenceOptions, PostprocessOptions
from pipeline.inference.postprocess import postprocess_mask
from pipeline.inference.tta import mirror_probabilities
from pipeline.inference.uniform_patches import UniformPatchCache
from transforms.io import LoadScand

logger = logging.getLogger(__name__)

INPUT_SUFFIX = "_input"
"""``data[key + INPUT_SUFFIX]`` holds the loaded image of ``key`` on its own grid (HU for CT), before resampling."""


@dataclass
class Segmentation:
    """A case's result on its input grid.

    Attributes:
        labels: label map ``(1, X, Y[, Z])`` uint8, affine equal to the input's.
        probabilities: class probabilities ``(C, X, Y[, Z])`` float32 when asked for, else ``None``.
    """

    labels: MetaTensor
    probabilities: MetaTensor | None = None
    seconds: dict[str, float] = field(default_factory=dict)


class Predictor:
    """Segments cases with one network or an ensemble (probabilities averaged), returning label maps on the
    input's own grid (same shape and affine as the loaded input).

    Build it once with :meth:`from_bundle`, then call :meth:`predict_case` per case or :meth:`predict_folder`.
    The first preprocessing transform must be the loader (``LoadScand`` or ``LoadImaged``); the loaded images
    are kept under ``<key>_input`` for previews and intensity statistics, so each case is read once.
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
        options: InferenceOptions | None = None,
        postprocess: PostprocessOptions | None = None,
        display_window: Sequence[float] | None = None,
        input_modalities: Mapping[str, str] | None = None,
    ) -> None:
        if not networks:
            raise ValueError("a Predictor needs at least one network")
        transforms = list(preprocessing.transforms)
        if not transforms or not isinstance(transforms[0], (LoadScand, LoadImaged)):
            first = type(transforms[0]).__name__ if transforms else "nothing"
            raise ValueError(f"preprocessing must start with LoadScand or LoadImaged, got {first}")
        self.device = torch.device(device)
        self.networks = [net.to(self.device).eval() for net in networks]
        self.options = options or InferenceOptions()
        self.amp = _resolve_amp(self.options.amp, self.device)
        self._forwards = [self._forward(net) for net in self.networks]
        self.inferer = inferer
        self.input_keys = tuple(input_keys)
        self.class_names = tuple(class_names)
        self.bundle_name = bundle_name
        self.checkpoint_names = list(checkpoint_names)
        self.postprocess = postprocess or PostprocessOptions()
        self.display_window = None if display_window is None else tuple(float(v) for v in display_window)
        self.input_modalities = dict(input_modalities or {})
        self._loader = transforms[0]
        self.preprocessing = Compose(transforms[1:])

    @classmethod
    def from_bundle(
        cls,
        bundle: str | Path | Bundle,
        checkpoints: str | Path | Sequence[str | Path] | None = None,
        *,
        options: InferenceOptions | None = None,
        postprocess: PostprocessOptions | None = None,
        config: str | Path | Sequence[str | Path] = "inference",
        **overrides: Any,
    ) -> Predictor:
        """Build from a bundle's inference config; weights default to the bundle's ``models/model.pt``.

        Args:
            bundle: bundle folder.
            checkpoints: one checkpoint or several (an ensemble, e.g. the folds of a cross-validation).
            options: sliding-window, TTA, cropping and device settings overriding the bundle's.
            postprocess: label clean-up; default the bundle's ``label_postprocessing`` (none when absent).
            config: config name under ``configs/``, or a list: the config then overlays (names or file paths),
                merged in order.
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
        if postprocess is None:
            postprocess = PostprocessOptions.from_config(parser.get("label_postprocessing", None))
        return cls(
            nets,
            parser.get_parsed_content("preprocessing"),
            _build_inferer(parser, options, device),
            input_keys=parser.get("input_keys", ["image"]),
            class_names=parser.get("class_names", []),
            device=device,
            bundle_name=bundle.name,
            checkpoint_names=[str(Path(c).resolve()) for c in checkpoints],
            options=options,
            postprocess=postprocess,
            display_window=_window(parser.get("window", None)),
            input_modalities=bundle_modalities(parser.get("_meta_", {}), parser.get("input_keys", ["image"])),
        )

    @property
    def label_names(self) -> dict[int, str]:
        """Label value -> structure name, background excluded."""
        return {i + 1: name for i, name in enumerate(self.class_names)}

    def settings(self) -> dict[str, Any]:
        """JSON-able facts that change the outputs (a rerun with other settings redoes finished cases)."""
        inf = self.inferer
        return {
            "bundle": self.bundle_name,
            "checkpoints": self.checkpoint_names,
            "roi_size": [int(v) for v in inf.roi_size],
            "overlap": float(inf.overlap)
            if not isinstance(inf.overlap, Sequence)
            else [float(v) for v in inf.overlap],
            "mode": str(inf.mode),
            "tta": self.options.tta,
            "restore": self.options.restore,
            "amp": self.amp,
            "crop_foreground": [self.options.foreground_hu, self.options.crop_margin]
            if self.options.crop_foreground
            else None,
            "postprocess": self.postprocess.as_dict() if self.postprocess.active else None,
        }

    def load(self, inputs: str | Path | Mapping[str, str | Path]) -> dict[str, Any]:
        """Load and preprocess one case; ``inputs`` is a path or ``{key: path}``.

        Returns the preprocessed dict; ``<key>_input`` holds each loaded image ``(1, X, Y[, Z])`` on its own grid.
        """
        if not isinstance(inputs, Mapping):
            inputs = {self.input_keys[0]: inputs}
        missing = [k for k in self.input_keys if k not in inputs]
        if missing:
            raise KeyError(f"case inputs lack {missing}; the bundle needs {list(self.input_keys)}")
        data = self._loader({k: str(v) for k, v in inputs.items()})
        loaded = {k + INPUT_SUFFIX: data[k] for k in self.input_keys}
        # a new MetaTensor over the same storage: the transforms record their operations on it, not on the kept one
        data = self.preprocessing(
            {**data, **{k: MetaTensor(data[k].as_tensor(), meta=dict(data[k].meta)) for k in self.input_keys}}
        )
        data.update(loaded)
        return data

    def input_warnings(self, data: Mapping[str, Any]) -> list[str]:
        """Warnings for a case loaded by :meth:`load` whose images do not look like the bundle's modalities
        (:func:`pipeline.inference.input_checks.modality_warnings`); the case is still segmented."""
        images = {k: data[k + INPUT_SUFFIX] for k in self.input_keys if k + INPUT_SUFFIX in data}
        return modality_warnings(images, self.input_modalities, self.bundle_name or "clinseg")

    def crop_box(self, data: Mapping[str, Any]) -> tuple[slice, ...] | None:
        """The body box on the network grid (see :func:`pipeline.inference.foreground_crop.body_box`), or ``None`` when
        cropping is off, nothing is above ``foreground_hu``, or the box is the whole grid."""
        if not self.options.crop_foreground:
            return None
        key = self.input_keys[0]
        grid = data[key]
        return body_box(
            data[key + INPUT_SUFFIX],
            data[key + INPUT_SUFFIX].affine,
            grid.affine,
            grid.shape[1:],
            threshold=self.options.foreground_hu,
            margin=self.options.crop_margin,
            roi_size=self.inferer.roi_size,
            overlap=self.inferer.overlap,
        )

    @torch.no_grad()
    def probabilities(self, data: Mapping[str, Any]) -> torch.Tensor:
        """Mean softmax of the ensemble (and mirror TTA) on the preprocessed grid, (C, X, Y[, Z]) float32 on CPU.

        With ``crop_foreground`` only the body box is inferred; voxels outside it are background (probability 1).
        """
        image = torch.cat([torch.as_tensor(data[k]) for k in self.input_keys], dim=0)[None]
        grid_shape = image.shape[2:]
        box = self.crop_box(data)
        if box is not None:
            image = image[(slice(None), slice(None), *box)]
        total = None
        for forward in self._forwards:
            if self.options.tta:
                probs = mirror_probabilities(lambda x, f=forward: self.inferer(x, f), image)
            else:
                probs = torch.softmax(self.inferer(image, forward).float(), dim=1)[0].cpu()
            total = probs if total is None else total.add_(probs)
        total = total.div_(len(self.networks))
        if box is None:
            return total
        full = torch.zeros((total.shape[0], *grid_shape), dtype=total.dtype)
        full[0] = 1.0
        full[(slice(None), *box)] = total
        return full

    def _forward(self, net: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """The sliding window's forward for ``net``: channels-last on CPU (oneDNN's fast convolutions, same
        values), under autocast when ``amp`` (float32 logits out, so stitching stays in float32), and with
        single-valued patches evaluated once (:class:`~pipeline.inference.uniform_patches.UniformPatchCache`)."""
        layout = _channels_last_format(net) if self.device.type == "cpu" else None
        if layout is not None:
            net.to(memory_format=layout)
        dtype = torch.bfloat16 if self.device.type == "cpu" else torch.float16

        def forward(x: torch.Tensor) -> torch.Tensor:
            if layout is not None:
                x = x.contiguous(memory_format=layout)
            with torch.autocast(self.device.type, dtype=dtype, enabled=self.amp):
                out = net(x)
            return out.float().contiguous()

        return UniformPatchCache(forward) if self.options.skip_uniform_patches else forward

    def segment(self, data: dict[str, Any], *, keep_probabilities: bool = False) -> Segmentation:
        """Label map (and optionally probabilities) on the input's own grid from a case loaded by :meth:`load`.

        Labels come back as ``options.restore`` says; probabilities are resampled linearly only when asked for.
        """
        start = time.perf_counter()
        probs = self.probabilities(data)
        infer_s = time.perf_counter() - start
        labels = self._restore_labels(data, probs)
        if self.postprocess.active:
            labels = postprocess_mask(
                labels,
                keep_largest=self.postprocess.keep_largest,
                min_size_ml=self.postprocess.min_size_ml,
                fill_holes=self.postprocess.fill_holes,
            )
        prob_map = None
        if keep_probabilities:
            prob_map = self._to_input_grid(data, resample_slabwise(probs, *self._grids(data)))
        return Segmentation(
            labels, prob_map, {"inference": infer_s, "restore": time.perf_counter() - start - infer_s}
        )

    def _grids(self, data: Mapping[str, Any]) -> tuple[torch.Tensor, tuple[int, ...], torch.Tensor]:
        """(network-grid affine, input spatial shape, input affine) of the first input key."""
        key = self.input_keys[0]
        reference = data[key + INPUT_SUFFIX]
        return data[key].affine, tuple(reference.shape[1:]), reference.affine

    def _restore_labels(self, data: Mapping[str, Any], probs: torch.Tensor) -> MetaTensor:
        """Label map (1, X, Y[, Z]) uint8 on the input grid from network-grid probabilities (C, ...), slab by slab
        (see :mod:`pipeline.inference.grid_restore`): argmax of the linearly resampled probabilities, as MONAI's ``Invertd``
        + ``AsDiscreted(argmax)``, or, with ``restore="nearest"``, the network-grid argmax resampled by nearest
        neighbour."""
        if self.options.restore == "nearest":
            labels = resample_slabwise(argmax_labels(probs).float(), *self._grids(data), mode="nearest")
            return self._to_input_grid(data, labels.to(torch.uint8))
        return self._to_input_grid(data, resample_slabwise(probs, *self._grids(data), reduce=argmax_labels))

    def _to_input_grid(self, data: Mapping[str, Any], values: torch.Tensor) -> MetaTensor:
        """``values`` (C, X, Y[, Z]) on the input grid as a MetaTensor with the input's meta (affine included)."""
        reference = data[self.input_keys[0] + INPUT_SUFFIX]
        return MetaTensor(values, meta={**reference.meta, "affine": reference.affine.clone()})

    def predict_loaded(self, data: dict[str, Any]) -> MetaTensor:
        """Label map (1, X, Y[, Z]) uint8 on the input's own grid from a preprocessed case (see :meth:`load`)."""
        return self.segment(data).labels

    def predict_case(self, inputs: str | Path | Mapping[str, str | Path]) -> MetaTensor:
        """Segment one case: load, sliding window, argmax, back onto the input grid. Returns (1, X, Y[, Z])."""
        start = time.perf_counter()
        data = self.load(inputs)
        for warning in self.input_warnings(data):
            logger.warning("%s", warning)
        result = self.predict_loaded(data)
        logger.debug("case predicted in %.1f s", time.perf_counter() - start)
        return result



def _channels_last_format(net: nn.Module) -> torch.memory_format | None:
    """``channels_last_3d`` for a 3D network, ``channels_last`` for a 2D one (by its weights' rank), else None."""
    rank = max((p.ndim for p in net.parameters()), default=0)
    return {4: torch.channels_last, 5: torch.channels_last_3d}.get(rank)


def _resolve_amp(amp: bool | None, device: torch.device) -> bool:
    """``amp`` as given, or, when ``None``: on for CUDA (float16) and for CPUs with native bfloat16 arithmetic
    (AVX512-BF16 or AMX), off elsewhere (emulated bfloat16 is slower than float32)."""
    if amp is not None:
        return amp
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    native = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(check()) for check in native if check is not None)


def _window(window: Any) -> tuple[float, float] | None:
    """The bundle's ``window: {level, width}`` (HU) as ``(level, width)`` for previews, if it has one."""
    if isinstance(window, Mapping) and {"level", "width"} <= set(window):
        return float(window["level"]), float(window["width"])
    return None


def _load_network(parser, path: Path, device: torch.device) -> nn.Module:
    return network_from_checkpoint(path, map_location=device, default=lambda: parser.get_parsed_content("network_def"))


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
