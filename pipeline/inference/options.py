"""Options of inference: sliding window, device, TTA, cropping, restoring labels, and label postprocessing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["InferenceOptions", "PostprocessOptions"]


@dataclass(frozen=True)
class InferenceOptions:
    """Sliding-window, augmentation, cropping and restore settings; ``None`` keeps the bundle's value (a built
    :class:`~pipeline.inference.predictor.Predictor` holds them resolved: no ``None`` left but ``amp``'s).

    Attributes:
        roi_size: patch size in voxels of the resampled image, e.g. ``(64, 64, 32)``.
        overlap: fraction of overlap between patches, in [0, 1).
        sw_batch_size: patches per forward pass.
        mode: ``"gaussian"`` or ``"constant"`` blending.
        device: where the network runs (``"cpu"``, ``"cuda"``); ``None`` picks CUDA when present.
        keep_volume_on_cpu: keep the whole volume and the stitching buffer on CPU, move only patches.
        tta: mirror test-time augmentation: average the probabilities over flips of every subset of the
            spatial axes (2**spatial_dims passes).
        crop_foreground: run the sliding window only on the body's box (input voxels above ``foreground_hu``,
            plus ``crop_margin``) of the resampled image, aligned with the patch grid so the patches inside are
            those of the whole-grid run; the rest is background. Voxels within one patch-minus-stride of the
            box faces lose the patches that reached outside it, so labels there may differ slightly from the
            whole-grid run; ``skip_uniform_patches`` is the exact (and default) way of not inferring air.
        skip_uniform_patches: evaluate the network once per distinct single-valued patch (air clipped by the
            CT window, padding) and reuse that output: same result, less work.
        foreground_hu: body threshold in the input's intensity units (HU for CT).
        crop_margin: network-grid voxels kept around the body.
        amp: run the network under autocast (bfloat16 on CPU, float16 on CUDA); patches are stitched in
            float32; probabilities differ slightly from float32 (labels agree to Dice > 0.999 in
            benchmarks/RESULTS.md). ``None``: on for CUDA and for CPUs with native bfloat16 (AVX512-BF16, AMX).
        restore: how labels return to the input grid (the ``mode`` of the bundle's ``RestoreToInputd`` step,
            :class:`pipeline.inference.restore.RestoreToInputd`): ``"linear"`` takes the argmax of the linearly resampled
            class probabilities (as MONAI's ``Invertd`` + ``AsDiscreted``, slab by slab so no full-resolution
            float map is held); ``"nearest"`` takes the argmax on the network grid and resamples the label map
            by nearest neighbour (staircase boundaries).
        uncertainty: measure each case's uncertainty (:mod:`pipeline.inference.uncertainty`) from the
            members the run has anyway (TTA flips, ensemble networks); with neither, one extra pass on the
            left-right mirror of the image serves as the second member (the labels still come from the
            unmirrored pass alone).
        backend: what runs the network on each patch batch (:mod:`pipeline.inference.backend_choice`):
            ``"torch"`` (``None``), ``"onnxruntime"``, ``"openvino"`` (CPU, float32, the network exported to ONNX
            once and cached), or ``"auto"``: on CPU the fastest of those available, measured on one batch of the
            actual patch shape; on CUDA torch. An unavailable backend falls back to torch with a warning.
        layout: torch's memory layout: ``"contiguous"``, ``"channels_last"``, or ``"auto"`` (``None``): on CPU
            the faster of the two, measured; on CUDA contiguous.
    """

    roi_size: Sequence[int] | None = None
    overlap: float | None = None
    sw_batch_size: int | None = None
    mode: str | None = None
    device: str | None = None
    keep_volume_on_cpu: bool = True
    tta: bool = False
    crop_foreground: bool = False
    foreground_hu: float = -500.0
    crop_margin: int = 8
    skip_uniform_patches: bool = True
    restore: str | None = None
    amp: bool | None = None
    uncertainty: bool = True
    backend: str | None = None
    layout: str | None = None

    def __post_init__(self) -> None:
        if self.roi_size is not None and (not self.roi_size or any(int(v) < 1 for v in self.roi_size)):
            raise ValueError(f"roi_size must be positive voxel counts, got {self.roi_size}")
        if isinstance(self.overlap, (int, float)) and not 0 <= self.overlap < 1:
            raise ValueError(f"overlap must lie in [0, 1), got {self.overlap}")
        if self.sw_batch_size is not None and self.sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {self.sw_batch_size}")
        if self.mode is not None and self.mode not in ("gaussian", "constant"):
            raise ValueError(f"mode must be 'gaussian' or 'constant', got {self.mode!r}")
        if self.restore not in (None, "linear", "nearest"):
            raise ValueError(f"restore must be 'linear' or 'nearest', got {self.restore!r}")
        if self.backend not in (None, "auto", "torch", "onnxruntime", "openvino"):
            raise ValueError(f"backend must be 'auto', 'torch', 'onnxruntime' or 'openvino', got {self.backend!r}")
        if self.layout not in (None, "auto", "contiguous", "channels_last"):
            raise ValueError(f"layout must be 'auto', 'contiguous' or 'channels_last', got {self.layout!r}")
        if self.crop_margin < 0:
            raise ValueError(f"crop_margin must be >= 0 voxels, got {self.crop_margin}")


@dataclass(frozen=True)
class PostprocessOptions:
    """Per-label clean-up of the label map on the input grid (see :func:`pipeline.inference.postprocess.postprocess_mask`).

    Attributes:
        keep_largest: labels keeping only their largest connected component.
        min_size_ml: components under this volume in mL are removed; a number for every label or ``{label: mL}``.
        fill_holes: labels whose enclosed holes are filled.
    """

    keep_largest: Sequence[int] = ()
    min_size_ml: Mapping[int, float] | float = 0.0
    fill_holes: Sequence[int] = ()

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> PostprocessOptions:
        """From a mapping such as the bundle's ``label_postprocessing`` (keys as the attributes)."""
        config = dict(config or {})
        unknown = set(config) - {"keep_largest", "min_size_ml", "fill_holes"}
        if unknown:
            raise ValueError(
                f"label_postprocessing has unknown keys {sorted(unknown)}; valid: keep_largest, "
                "min_size_ml, fill_holes"
            )
        size = config.get("min_size_ml", 0.0)
        size = {int(k): float(v) for k, v in size.items()} if isinstance(size, Mapping) else float(size)
        return cls(
            tuple(int(v) for v in config.get("keep_largest", ())),
            size,
            tuple(int(v) for v in config.get("fill_holes", ())),
        )

    @staticmethod
    def parse_min_size_ml(values: Sequence[str]) -> dict[int, float] | float:
        """``["0.5"]`` (every label) or ``["1=5", "2=0.2"]`` (per label), in mL, as ``min_size_ml``."""
        if len(values) == 1 and "=" not in values[0]:
            return float(values[0])
        sizes: dict[int, float] = {}
        for value in values:
            label, sep, size = value.partition("=")
            try:
                sizes[int(label)] = float(size) if sep else float("nan")
            except ValueError:
                sep = ""
            if not sep or not sizes[int(label)] >= 0:
                raise ValueError(
                    f"--min-size-ml takes one size or LABEL=ML pairs (e.g. 1=5 2=0.2), got {value!r}"
                )
        return sizes

    @property
    def active(self) -> bool:
        sizes = self.min_size_ml.values() if isinstance(self.min_size_ml, Mapping) else [self.min_size_ml]
        return bool(self.keep_largest or self.fill_holes or any(v > 0 for v in sizes))

    def as_dict(self) -> dict[str, Any]:
        size = (
            {str(k): v for k, v in self.min_size_ml.items()}
            if isinstance(self.min_size_ml, Mapping)
            else self.min_size_ml
        )
        return {
            "keep_largest": list(self.keep_largest),
            "min_size_ml": size,
            "fill_holes": list(self.fill_holes),
        }
