"""Segment with an nnU-Net v2 trained-model folder through nnU-Net's own predictor.

nnU-Net does the preprocessing (cropping, normalization, resampling to the plans' spacing), the sliding window
(its Gaussian, tile step, mirroring) and the way back (resampling, regions to labels) with its own code:
``nnunetv2.inference.predict_from_raw_data.nnUNetPredictor.predict_single_npy_array``. clinseg loads the
scans (:class:`transforms.io.scan.LoadScand`: DICOM or NIfTI, geometry checks), hands nnU-Net the arrays its
reader would have made (:mod:`pipeline.inference.nnunet_grid`) and writes every output as for a bundle.

:class:`NnunetPredictor` has the :class:`~pipeline.inference.predictor.Predictor` interface the batch runner,
PACS batch and serve node use (``load``, ``segment``, ``predict``, ``settings``, ``label_names`` ...).
Needs the ``nnunet`` extra.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from pipeline.inference.case import LoadedCase, Segmentation
from pipeline.inference.in_memory import labels_like
from pipeline.inference.nnunet_checkpoint import check_checkpoints_hold_only_data
from pipeline.inference.input_checks import modality_warnings
from pipeline.inference.nnunet_folder import DEFAULT_CHECKPOINT, NNUNET_PREFIX, NnunetFolder, open_model_folder
from pipeline.inference.nnunet_grid import from_nnunet, to_nnunet
from pipeline.inference.options import InferenceOptions
from transforms.io.memory import is_in_memory
from transforms.io.scan import LoadScand

__all__ = ["NnunetPredictor", "nnunet_predictor_for"]

logger = logging.getLogger(__name__)

_UNSUPPORTED = {
    "roi_size": "--roi-size (the patch size is the plans')",
    "sw_batch_size": "--sw-batch-size",
    "crop_foreground": "--crop-foreground (nnU-Net crops to the nonzero region itself)",
    "restore": "--restore (nnU-Net resamples back itself)",
    "amp": "--amp",
    "backend": "--backend",
    "layout": "--layout",
}


class NnunetPredictor:
    """Segments cases with an nnU-Net v2 trained-model folder (folds ensembled by nnU-Net) onto the input grid.

    Attributes:
        folder: the checked model folder (:class:`~pipeline.inference.nnunet_folder.NnunetFolder`).
        input_keys: ``("image",)`` for one channel, else the ``channel_names`` lower-cased (``"t2"``, ``"adc"``).
        label_names: label value -> name from ``dataset.json`` ``labels`` (regions: their ``regions_class_order``).
        input_modalities: ``{"image": "CT"}`` for a channel nnU-Net normalizes as CT, the only modality it names.
        activation: ``"softmax"``, or ``"sigmoid"`` for a region model (``dataset.json`` ``regions_class_order``).
        options: the options in effect: ``tta`` (nnU-Net's mirroring), ``overlap`` (1 - tile step), ``mode``.
    """

    temperature = 1.0
    qc_reference = None
    display_window = None

    def __init__(self, folder: NnunetFolder, options: InferenceOptions | None = None) -> None:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        options = options or InferenceOptions()
        unsupported = [flag for name, flag in _UNSUPPORTED.items() if getattr(options, name) not in (None, False)]
        if unsupported:
            raise ValueError(f"nnU-Net model {folder.path}: {', '.join(unsupported)} not supported for nnU-Net models")
        self.device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for but CUDA is not available on this machine")
        self.folder = folder
        overlap = 0.5 if options.overlap is None else float(options.overlap)
        mode = options.mode or "gaussian"
        self.options = InferenceOptions(overlap=overlap, mode=mode, device=str(self.device), tta=options.tta,
                                        uncertainty=options.uncertainty)  # fmt: skip
        self._nnunet = nnUNetPredictor(
            tile_step_size=1.0 - overlap, use_gaussian=mode == "gaussian", use_mirroring=options.tta,
            perform_everything_on_device=self.device.type == "cuda" and not options.keep_volume_on_cpu,
            device=self.device, verbose=False, allow_tqdm=False,
        )  # fmt: skip
        check_checkpoints_hold_only_data(folder.checkpoints)  # nnU-Net then unpickles them with weights_only=False
        self._nnunet.initialize_from_trained_model_folder(str(folder.path), folder.folds, folder.checkpoint_name)
        channels = folder.channel_names
        self.input_keys = ("image",) if len(channels) == 1 else tuple(c.lower() for c in channels)
        if len(set(self.input_keys)) != len(self.input_keys):
            self.input_keys = tuple(f"channel_{i:04d}" for i in range(len(channels)))
        self.input_modalities = {k: "CT" for k, c in zip(self.input_keys, channels) if c.upper() == "CT"}
        self.label_names = folder.label_names
        self.regions: dict[str, list[int]] = {}  # nnU-Net turns regions into labels itself
        # probabilities as nnU-Net returns them: softmax over labels, or a sigmoid per region of a region model
        self.activation = "sigmoid" if folder.dataset.get("regions_class_order") is not None else "softmax"
        self.class_names = tuple(self.label_names.values())
        self.bundle_name = f"{NNUNET_PREFIX}{folder.path.name}"
        self._loader = LoadScand(list(self.input_keys))

    @classmethod
    def from_folder(
        cls, path: str | Path, folds: Sequence[int | str] | None = None, checkpoint_name: str = DEFAULT_CHECKPOINT,
        *, options: InferenceOptions | None = None,
    ) -> NnunetPredictor:
        """Build from ``nnunet:PATH`` or ``PATH``; ``folds`` ``None``: every fold holding ``checkpoint_name``."""
        return cls(open_model_folder(path, folds, checkpoint_name), options)

    def settings(self) -> dict[str, Any]:
        """JSON-able facts that change the outputs (a rerun with other settings redoes finished cases)."""
        return {
            "bundle": f"{NNUNET_PREFIX}{self.folder.path.resolve()}",
            "checkpoints": [str(p.resolve()) for p in self.folder.checkpoints],
            "folds": [str(f) for f in self.folder.folds],
            "overlap": self.options.overlap,
            "mode": self.options.mode,
            "tta": self.options.tta,
        }

    def load(self, inputs: Any) -> LoadedCase:
        """Read one case: one input or ``{key: input}`` (paths or in-memory images), one per channel."""
        if not isinstance(inputs, Mapping):
            inputs = {self.input_keys[0]: inputs}
        missing = [k for k in self.input_keys if k not in inputs]
        if missing:
            raise ValueError(
                f"case inputs {sorted(inputs)} lack {missing}: nnU-Net model {self.folder.path} takes "
                f"{len(self.input_keys)} channel(s) {self.folder.channel_names} (dataset.json channel_names) as "
                f"inputs {list(self.input_keys)}"
            )
        data = self._loader({k: v if is_in_memory(v) else str(v) for k, v in inputs.items() if k in self.input_keys})
        read = {k: data[k] for k in self.input_keys}
        for key, image in read.items():
            if image.shape[0] != 1:
                raise ValueError(f"input {key!r}: {image.shape[0]} channels in one image; give one file per channel")
        warnings = modality_warnings(read, self.input_modalities, self.bundle_name)
        return LoadedCase(dict(data), read, self.input_keys, warnings)

    @torch.no_grad()
    def segment(self, case: LoadedCase, *, keep_probabilities: bool = False) -> Segmentation:
        """Label map ``(1, X, Y, Z)`` uint8 on the input grid (and probabilities ``(C, X, Y, Z)`` when asked
        for), by nnU-Net's ``predict_single_npy_array``."""
        start = time.perf_counter()
        array, properties = to_nnunet([case.inputs[k] for k in case.keys])
        result = self._nnunet.predict_single_npy_array(array, properties, None, None, keep_probabilities)
        labels, probs = result if keep_probabilities else (result, None)
        infer_s = time.perf_counter() - start
        reference = case.reference
        return Segmentation(
            from_nnunet(labels, reference),
            None if probs is None else from_nnunet(probs, reference, torch.float32),
            {"inference": infer_s, "restore": time.perf_counter() - start - infer_s},
            None,
            case.inputs,
        )

    def predict(self, inputs: Any, **kwargs: Any) -> Segmentation:
        """:meth:`load` and :meth:`segment` one case (its warnings logged); ``kwargs`` go to :meth:`segment`."""
        case = self.load(inputs)
        for warning in case.warnings:
            logger.warning("%s", warning)
        return self.segment(case, **kwargs)

    def predict_image(self, image: Any) -> Any:
        """The label map of an in-memory image (MetaTensor, nibabel, SimpleITK, ``(array, affine)``; for several
        channels ``{key: image}``) as the same kind on its own grid, as
        :meth:`pipeline.inference.predictor.Predictor.predict_image`."""
        inputs = dict(image) if isinstance(image, Mapping) else {self.input_keys[0]: image}
        paths = [k for k, v in inputs.items() if not is_in_memory(v)]
        if paths:
            raise TypeError(f"predict_image takes in-memory images; input(s) {paths} are not (use predict for paths)")
        return labels_like(self.predict(inputs).labels, inputs[self.input_keys[0]])


def nnunet_predictor_for(
    model: str, folder: NnunetFolder, options: InferenceOptions | None, given: list[str], overrides: Mapping[str, Any]
) -> NnunetPredictor:
    """:meth:`Predictor.from_bundle`'s nnU-Net model ``model`` (``nnunet:PATH`` or ``models:/...``), opened as
    ``folder``: the :class:`NnunetPredictor`; ``given``: the bundle arguments the caller set, which it cannot take."""
    unknown = given + sorted(set(overrides) - {"folds", "checkpoint_name"})
    if unknown:
        raise ValueError(f"{model}: {', '.join(unknown)} not supported for nnU-Net models (only folds and "
                         "checkpoint_name)")  # fmt: skip
    return NnunetPredictor(folder, options)
