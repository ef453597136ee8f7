"""Predictor: a bundle's preprocessing, network(s), sliding window and postprocessing, applied case by case.

The bundle's inference config defines what happens: ``preprocessing``, ``inferer``, ``network_def`` and
``postprocessing`` (probabilities on the network grid -> labels on the input grid, then clean-up), the same
components MONAI's runner (``python -m monai.bundle run ... inference.yaml``) uses, so editing them changes both.
On top the Predictor averages an ensemble and mirror TTA, crops to the body, autocasts, and skips uniform patches.

API: :meth:`Predictor.from_bundle`, then :meth:`~Predictor.predict` per case, or :meth:`~Predictor.load` (a
:class:`~pipeline.inference.case.LoadedCase`) and :meth:`~Predictor.segment` when loading runs ahead. Inputs are
paths or images already in memory (MetaTensor, nibabel, SimpleITK, ``(array, affine)``: :mod:`transforms.io.memory`);
:meth:`~Predictor.predict_image` returns the label map as the kind of image it was given.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer
from monai.transforms import Compose, LoadImaged
from torch import nn

from pipeline.core.bundle import Bundle
from pipeline.core.heap import return_freed_memory
from pipeline.inference.backend_choice import choose_backend, patch_shape, resolve_amp
from pipeline.inference.backends import Runner
from pipeline.inference.bundle_config import bundle_network, bundle_window, configure, resolved_options
from pipeline.inference.case import LoadedCase, Segmentation, compact_image
from pipeline.inference.foreground_crop import case_box
from pipeline.inference.in_memory import labels_like
from pipeline.inference.input_checks import bundle_modalities, modality_warnings
from pipeline.inference.model_ref import open_model
from pipeline.inference.nnunet_folder import DEFAULT_CHECKPOINT, NnunetFolder
from pipeline.inference.options import InferenceOptions, PostprocessOptions
from pipeline.inference.qc_reference_file import find_qc_reference
from pipeline.inference.restore import to_input_grid
from pipeline.inference.tta import ACTIVATIONS, activate, flip_combinations
from pipeline.inference.uncertainty import Uncertainty, member_labels, summarize_members, temperature_scaled
from pipeline.inference.uniform_patches import UniformPatchCache
from pipeline.inference.zoo_bundle import ZooBundle, zoo_network
from transforms.io.memory import is_in_memory
from transforms.io.scan import LoadScand

if TYPE_CHECKING:
    from pipeline.inference.nnunet_predictor import NnunetPredictor

__all__ = ["PRED_KEY", "CaseInput", "Predictor"]

logger = logging.getLogger(__name__)

CaseInput = str | Path | Any
"""A path (NIfTI file, DICOM folder or file) or an in-memory image (:func:`transforms.io.memory.image_kind`)."""

PRED_KEY = "pred"
"""The key of the prediction in the dict the bundle's ``postprocessing`` gets (MONAI's engines' name)."""


class Predictor:
    """Segments cases with one network or an ensemble (probabilities averaged) onto the input's own grid.

    The first preprocessing transform must be the loader (``LoadScand`` or ``LoadImaged``); the images as read
    are kept in the :class:`LoadedCase` for the crop, previews and intensity statistics, so each case is read once.

    Attributes:
        options: the options in effect (bundle, then the caller's): sliding window, TTA, crop, AMP, restore.
        postprocess: the label clean-up in effect (the ``CleanLabelsd`` step of ``postprocessing``).
        activation: ``"softmax"`` (one output per class) or ``"sigmoid"`` (one per region: a region bundle's
            ``output_activation``; its ``RestoreToInputd`` turns regions into labels).
        regions: a region bundle's ``regions``, name -> label values, outermost first (``{}`` otherwise).
        temperature: divides the (log-)probabilities before they are saved or scored (fitted by
            :func:`pipeline.qc.calibration.fit_temperature`; 1: uncalibrated); labels never change with it.
        qc_reference: the training data's reference (``qc_reference.json``) each case is checked against.
    """

    def __init__(
        self,
        networks: Sequence[nn.Module],
        preprocessing: Compose,
        inferer: SlidingWindowInferer,
        postprocessing: Compose,
        *,
        input_keys: Sequence[str] = ("image",),
        class_names: Sequence[str] = (),
        device: torch.device | str = "cpu",
        bundle_name: str = "",
        checkpoint_names: Sequence[str] = (),
        options: InferenceOptions | None = None,
        display_window: Sequence[float] | None = None,
        input_modalities: Mapping[str, str] | None = None,
        activation: str = "softmax",
        regions: Mapping[str, Sequence[int]] | None = None,
        temperature: float = 1.0,
        qc_reference: Mapping[str, Any] | None = None,
    ) -> None:
        if not networks:
            raise ValueError("a Predictor needs at least one network")
        transforms = list(preprocessing.transforms)
        if not transforms or not isinstance(transforms[0], (LoadScand, LoadImaged)):
            first = type(transforms[0]).__name__ if transforms else "nothing"
            raise ValueError(f"preprocessing must start with LoadScand or LoadImaged, got {first}")
        self.device = torch.device(device)
        self.networks = [net.to(self.device).eval() for net in networks]
        self.inferer = inferer
        self.postprocessing = postprocessing
        options = options or InferenceOptions()
        amp = resolve_amp(options.amp, self.device)
        self.options, self.postprocess = resolved_options(options, inferer, postprocessing, self.device, amp)
        if options.amp and options.backend in ("onnxruntime", "openvino"):
            raise ValueError(f"AMP is the torch backend's; backend {options.backend!r} runs float32 (drop --amp)")
        patch = patch_shape(self.networks[0], self.options.sw_batch_size, self.options.roi_size)
        self.backend = choose_backend(
            self.networks, patch, backend=options.backend, layout=options.layout, amp=bool(self.options.amp),
            device=self.device,
        )
        if self.options.amp and not self.backend.amp:
            self.options = replace(self.options, amp=False)
        return_freed_memory()  # the timing passes' patches
        self._forwards = [self._forward(run) for run in self.backend.runners]
        self.input_keys = tuple(input_keys)
        self.class_names = tuple(class_names)
        self.bundle_name = bundle_name
        self.checkpoint_names = list(checkpoint_names)
        self.display_window = None if display_window is None else tuple(float(v) for v in display_window)
        self.input_modalities = dict(input_modalities or {})
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.activation = activation
        self.regions = {str(k): [int(v) for v in vs] for k, vs in (regions or {}).items()}
        self._loader = transforms[0]
        self.preprocessing = Compose(transforms[1:])
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.qc_reference = None if qc_reference is None else dict(qc_reference)

    @classmethod
    def from_bundle(
        cls,
        bundle: str | Path | Bundle,
        checkpoints: str | Path | Sequence[str | Path] | None = None,
        *,
        options: InferenceOptions | None = None,
        postprocess: PostprocessOptions | None = None,
        config: str | Path | Sequence[str | Path] = "inference",
        tracking_uri: str | None = None,
        **overrides: Any,
    ) -> Predictor | NnunetPredictor:
        """Build from a bundle's inference config; weights default to the bundle's ``models/model.pt``.

        ``nnunet:PATH`` (an nnU-Net v2 trained-model folder), or a registered model whose artifact is one
        (:func:`pipeline.inference.model_ref.open_model`), gives an
        :class:`~pipeline.inference.nnunet_predictor.NnunetPredictor` instead, with ``folds`` and
        ``checkpoint_name`` as its only overrides (``nnUNetv2_predict``'s ``-f`` and ``-chk``).

        Args:
            bundle: bundle folder (clinseg's, or a MONAI model-zoo one: :mod:`pipeline.inference.zoo_bundle`) or a
                registered model (``models:/NAME/VERSION``, ``models:/NAME@ALIAS``).
            checkpoints: one checkpoint or several (an ensemble, e.g. the folds of a cross-validation).
            options: sliding-window, TTA, cropping, restore and device settings overriding the bundle's.
            postprocess: label clean-up replacing the bundle's (its ``CleanLabelsd`` step).
            config: config name under ``configs/``, or a list: the config then overlays (names or file paths),
                merged in order.
            tracking_uri: the MLflow registry of a ``models:/`` bundle (default: ``MLFLOW_TRACKING_URI``).
            overrides: config ids to override (``spacing=[1, 1, 2]``).

        Raises:
            ValueError: for an nnU-Net model, checkpoints, postprocess, a config or overrides other than
                ``folds`` and ``checkpoint_name``.
        """
        model = bundle if isinstance(bundle, Bundle) else open_model(
            bundle, tracking_uri=tracking_uri, folds=overrides.get("folds"),
            checkpoint_name=overrides.get("checkpoint_name", DEFAULT_CHECKPOINT),
        )  # fmt: skip
        if isinstance(model, NnunetFolder):
            from pipeline.inference.nnunet_predictor import nnunet_predictor_for  # nnU-Net only when asked for

            given = {"checkpoints": checkpoints, "postprocess": postprocess, "config": config != "inference"}
            return nnunet_predictor_for(str(bundle), model, options, [k for k, v in given.items() if v], overrides)
        bundle = model
        options = options or InferenceOptions()
        device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for but CUDA is not available on this machine")
        parser = bundle.parser(config, device=f"$torch.device('{device}')", **overrides)
        configure(parser, options, postprocess, device)
        if checkpoints is None:
            checkpoints = [bundle.default_checkpoint]
        elif isinstance(checkpoints, (str, Path)):
            checkpoints = [checkpoints]
        load = zoo_network if isinstance(bundle, ZooBundle) else bundle_network
        nets = [load(parser, Path(c), device) for c in checkpoints]
        qc_reference = find_qc_reference(bundle.root, [Path(c) for c in checkpoints])
        input_keys = list(parser.get_parsed_content("input_keys")) if "input_keys" in parser else ["image"]
        # key -> modality: a bundle's `channels` (named inputs) wins over its metadata
        channels = parser.get_parsed_content("channels") if "channels" in parser else {}
        meta = {"input_modalities": channels} if channels else parser.get("_meta_", {})
        return cls(
            nets,
            parser.get_parsed_content("preprocessing"),
            parser.get_parsed_content("inferer"),
            parser.get_parsed_content("postprocessing"),
            input_keys=input_keys,
            class_names=parser.get("class_names", []),
            device=device,
            bundle_name=bundle.name,
            checkpoint_names=[str(Path(c).resolve()) for c in checkpoints],
            options=options,
            display_window=bundle_window(parser),
            input_modalities=bundle_modalities(meta, input_keys),
            activation=parser.get("output_activation", "softmax"),  # sigmoid: a region bundle
            regions=parser.get("regions", None),
            temperature=float((qc_reference or {}).get("temperature", 1.0)),
            qc_reference=qc_reference,
        )

    @property
    def label_names(self) -> dict[int, str]:
        """Label value -> structure name, background excluded."""
        return {i + 1: name for i, name in enumerate(self.class_names)}

    @property
    def amp(self) -> bool:
        """Whether the network runs under autocast."""
        return bool(self.options.amp)

    def settings(self) -> dict[str, Any]:
        """JSON-able facts that change the outputs (a rerun with other settings redoes finished cases)."""
        opts = self.options
        return {
            "bundle": self.bundle_name,
            "checkpoints": self.checkpoint_names,
            "roi_size": list(opts.roi_size),
            "overlap": list(opts.overlap) if isinstance(opts.overlap, Sequence) else opts.overlap,
            "mode": opts.mode,
            "tta": opts.tta,
            "restore": opts.restore,
            "amp": self.amp,
            "backend": opts.backend or "torch",
            "layout": opts.layout or "auto",
            "crop_foreground": [opts.foreground_hu, opts.crop_margin] if opts.crop_foreground else None,
            "postprocess": self.postprocess.as_dict() if self.postprocess.active else None,
            "uncertainty": opts.uncertainty,
            "temperature": self.temperature,
        }

    def backend_info(self) -> dict[str, Any]:
        """The runner chosen (:class:`~pipeline.inference.backend_choice.BackendChoice`) and, for ``auto`` or a
        measured layout, the timings it was chosen by; for the run's report, not :meth:`settings` (a rerun may
        measure differently without the outputs changing beyond float noise)."""
        return self.backend.as_dict()

    def load(self, inputs: CaseInput | Mapping[str, CaseInput]) -> LoadedCase:
        """Read and preprocess one case; ``inputs`` is one input or ``{key: input}`` (paths or in-memory images)."""
        inputs = self._case_inputs(inputs)
        start = time.perf_counter()
        data = self._loader({k: v if is_in_memory(v) else str(v) for k, v in inputs.items()})
        read = {k: data[k] for k in self.input_keys}
        read_s = time.perf_counter() - start
        # a new MetaTensor over the same storage: the transforms record their operations on it, not on the kept one
        data = self.preprocessing(
            {**data, **{k: MetaTensor(data[k].as_tensor(), meta=dict(data[k].meta)) for k in self.input_keys}}
        )
        warnings = modality_warnings(read, self.input_modalities, self.bundle_name or "clinseg")
        read = {k: compact_image(v) for k, v in read.items()}
        return_freed_memory()  # the resampling's grids, the float copy of the images as read
        seconds = {"read": read_s, "preprocess": time.perf_counter() - start - read_s}
        return LoadedCase(data, read, self.input_keys, warnings, seconds)

    def probabilities(self, case: LoadedCase) -> torch.Tensor:
        """Mean probabilities of the ensemble (and mirror TTA) on the network grid, (C, x, y[, z]) float32 on
        CPU: softmax over classes, or a sigmoid per region for a region bundle (``activation="sigmoid"``),
        temperature-scaled by :attr:`temperature`.

        With ``crop_foreground`` only the body box is inferred; voxels outside it are background (probability 1;
        for regions: every region's probability 0).
        """
        return self.probabilities_and_uncertainty(case)[0]

    @torch.no_grad()
    def probabilities_and_uncertainty(self, case: LoadedCase) -> tuple[torch.Tensor, Uncertainty | None]:
        """:meth:`probabilities`, and the :class:`Uncertainty` of its members when ``options.uncertainty``.

        Members are the (network, flip) passes that are averaged; with one network and no TTA, the left-right
        mirror (first spatial axis) is run as a second member for the uncertainty only.
        """
        image = case.network_input
        grid_shape = image.shape[2:]
        box = case_box(case, self.options)
        if box is not None:
            image = image[(slice(None), slice(None), *box)]
        flips = flip_combinations(image.ndim - 2) if self.options.tta else [()]
        extra = self.options.uncertainty and len(flips) * len(self._forwards) == 1
        members: list[torch.Tensor] | None = [] if self.options.uncertainty else None
        total = None
        for forward in self._forwards:
            for dims in flips:
                probs = self._member(forward, image, dims)
                if members is not None:
                    members.append(member_labels(probs, self.activation))
                total = probs if total is None else total.add_(probs)
        total = temperature_scaled(
            total.div_(len(self._forwards) * len(flips)), self.temperature, self.activation, inplace=True
        )
        if extra:
            members.append(self._mirrored_labels(self._forwards[0], image))
        uncertainty = None if members is None else summarize_members(members, total, self.activation)
        return_freed_memory()  # the sliding windows' patches and stitching buffers
        if box is None:
            return total, uncertainty
        full = torch.zeros((total.shape[0], *grid_shape), dtype=total.dtype)
        if self.activation == "softmax":
            full[0] = 1.0
        full[(slice(None), *box)] = total
        return full, uncertainty

    def _member(self, forward: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, dims: tuple) -> torch.Tensor:
        """Probabilities ``(C, ...)`` on CPU of one pass on ``image`` ``(1, C_in, ...)`` flipped along ``dims``
        (tensor dims), flipped back."""
        x = torch.flip(image, dims) if dims else image
        probs = activate(self.inferer(x, forward), self.activation)
        return (torch.flip(probs, dims) if dims else probs)[0].cpu()

    def _mirrored_labels(self, forward: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        """:func:`member_labels` of the left-right mirrored pass (first spatial axis), straight from its logits:
        the labels are those of its probabilities, without a probability map."""
        labels = member_labels(self.inferer(torch.flip(image, (2,)), forward)[0], self.activation, logits=True)
        return torch.flip(labels, (0 if self.activation == "softmax" else 1,)).cpu()

    def segment(self, case: LoadedCase, *, keep_probabilities: bool = False) -> Segmentation:
        """Label map (and optionally probabilities) on the input's own grid: :meth:`probabilities`, then the
        bundle's ``postprocessing`` (back onto the input grid, clean-up); probabilities are resampled linearly
        only when asked for."""
        start = time.perf_counter()
        probs, uncertainty = self.probabilities_and_uncertainty(case)
        infer_s = time.perf_counter() - start
        labels = self.postprocessing(case.with_prediction(probs, PRED_KEY))[PRED_KEY]
        prob_map = to_input_grid(probs, case.data[case.keys[0]]) if keep_probabilities else None
        del probs
        return_freed_memory()
        return Segmentation(
            labels,
            prob_map,
            {"inference": infer_s, "restore": time.perf_counter() - start - infer_s},
            uncertainty,
            case.inputs,
        )

    def predict(self, inputs: CaseInput | Mapping[str, CaseInput], **kwargs: Any) -> Segmentation:
        """:meth:`load` and :meth:`segment` one case (its warnings logged); ``kwargs`` go to :meth:`segment`."""
        start = time.perf_counter()
        case = self.load(inputs)
        for warning in case.warnings:
            logger.warning("%s", warning)
        result = self.segment(case, **kwargs)
        logger.debug("case predicted in %.1f s", time.perf_counter() - start)
        return result

    def predict_image(self, image: Any) -> Any:
        """The label map of an in-memory image, as the same kind on its own grid.

        Args:
            image: a MetaTensor, nibabel image, SimpleITK image or ``(array, affine)`` (RAS affine); for a bundle
                with several inputs, ``{key: image}`` with one image per input key (the first key's grid is
                the output's).

        Returns:
            uint8 labels as ``image``'s kind (its first input's for several): MetaTensor -> MetaTensor,
            nibabel -> nibabel, SimpleITK -> SimpleITK (same origin, spacing, direction), ``(array, affine)`` ->
            array (numpy or torch as given, the input's affine applies); same shape as the input.
        """
        inputs = self._case_inputs(image)
        paths = [k for k, v in inputs.items() if not is_in_memory(v)]
        if paths:
            raise TypeError(
                f"predict_image takes in-memory images; input(s) {paths} are not (use predict for paths)"
            )
        labels = self.predict(inputs).labels
        return labels_like(labels, inputs[self.input_keys[0]])

    def _case_inputs(self, inputs: CaseInput | Mapping[str, CaseInput]) -> dict[str, CaseInput]:
        """``{key: input}`` with every input key (one input alone goes to the first key)."""
        if not isinstance(inputs, Mapping):
            inputs = {self.input_keys[0]: inputs}
        missing = [k for k in self.input_keys if k not in inputs]
        if missing:
            raise KeyError(f"case inputs lack {missing}; the bundle needs {list(self.input_keys)}")
        return dict(inputs)

    def _forward(self, run: Runner) -> Runner:
        """The sliding window's forward: ``run`` (float32 logits ``(B, K, ...)`` of patches ``(B, C, ...)``),
        with single-valued patches evaluated once (:class:`~pipeline.inference.uniform_patches.UniformPatchCache`)."""
        return UniformPatchCache(run) if self.options.skip_uniform_patches else run

