"""The inference flags ``predict``, ``serve`` and ``evaluate`` share, defined once, and their options."""

from __future__ import annotations

import argparse
from typing import Any


def add_inference_options(p: argparse.ArgumentParser) -> None:
    """The inference options; each left unset keeps the bundle's value."""
    g = p.add_argument_group(
        "inference",
        "how the bundle's inference config runs; unset options keep its settings; --keep-largest, --min-size-ml "
        "and --fill-holes together replace its label clean-up (the CleanLabelsd step of its postprocessing)",
    )
    g.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present; under torchrun cuda means "
                                    "cuda:LOCAL_RANK)")
    g.add_argument("--volume-on-device", action="store_true",
                   help="keep the whole volume on the device (default: on CPU, only patches move)")
    g.add_argument("--roi-size", type=int, nargs="+", help="sliding-window patch, voxels (default: the bundle's)")
    g.add_argument("--overlap", type=float, help="sliding-window overlap, 0-1 (default: the bundle's)")
    g.add_argument("--sw-batch-size", type=int, help="patches per network call (default: the bundle's)")
    g.add_argument("--mode", choices=("gaussian", "constant"),
                   help="sliding-window blending (default: the bundle's)")
    g.add_argument("--tta", action="store_true", help="mirror test-time augmentation (flips of the spatial axes)")
    g.add_argument("--crop-foreground", action="store_true",
                   help="CT: infer only the body box (voxels above --foreground-hu); the rest is background")
    g.add_argument("--foreground-hu", type=float, default=-500.0, help="body threshold of the crop, in HU")
    g.add_argument("--crop-margin", type=int, default=8, help="network-grid voxels kept around the body")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="autocast the network (bfloat16 on CPU, float16 on CUDA); default: on for CUDA and for "
                        "CPUs with native bfloat16")
    g.add_argument("--backend", choices=("auto", "torch", "onnxruntime", "openvino"),
                   help="what runs the network: torch (default); onnxruntime or openvino (CPU, float32, network "
                        "exported to ONNX once per checkpoint and cached; pip install 'clinseg[onnx]' or "
                        "'clinseg[openvino]'); auto: on CPU the fastest available, measured on the actual patch, "
                        "on CUDA torch; the choice and timings go to report.json")
    g.add_argument("--layout", choices=("auto", "contiguous", "channels_last"),
                   help="torch's memory layout (default auto: on CPU the faster, measured; on CUDA contiguous)")
    g.add_argument("--restore", choices=("linear", "nearest"),
                   help="labels back onto the input grid: argmax of linearly resampled probabilities, or argmax "
                        "then nearest neighbour (staircase boundaries); default: the bundle's RestoreToInputd mode")
    g.add_argument("--keep-largest", type=int, nargs="+", default=[], metavar="LABEL",
                   help="labels keeping only their largest connected component")
    g.add_argument("--min-size-ml", nargs="+", default=[], metavar="ML|LABEL=ML",
                   help="remove components smaller than this (mL), for every label or per label")
    g.add_argument("--fill-holes", type=int, nargs="+", default=[], metavar="LABEL", help="labels to fill holes in")
    g = p.add_argument_group("quality control", "every case gets a QC score (0-1, higher: more likely wrong) and a "
                             "review flag from checks against the model's training data and its uncertainty")
    g.add_argument("--qc-threshold", type=float, default=0.5,
                   help="QC score from which a case is flagged for review")
    g.add_argument("--no-uncertainty", action="store_true",
                   help="skip the uncertainty (without TTA or an ensemble it costs one extra mirrored pass)")


def inference_options(args: argparse.Namespace) -> tuple[Any, Any]:
    """``(InferenceOptions, PostprocessOptions or None)`` of the flags; ``None`` fields keep the bundle's values;
    ``--device cuda`` under torchrun is the worker's own GPU."""
    from pipeline.batch.shard import torchrun_device
    from pipeline.inference.options import InferenceOptions, PostprocessOptions

    options = InferenceOptions(
        roi_size=args.roi_size, overlap=args.overlap, sw_batch_size=args.sw_batch_size, mode=args.mode,
        device=torchrun_device(args.device), keep_volume_on_cpu=not args.volume_on_device, tta=args.tta,
        crop_foreground=args.crop_foreground, foreground_hu=args.foreground_hu, crop_margin=args.crop_margin,
        restore=args.restore, amp=args.amp, uncertainty=not args.no_uncertainty, backend=args.backend,
        layout=args.layout,
    )  # fmt: skip
    postprocess = None
    if args.keep_largest or args.min_size_ml or args.fill_holes:
        sizes = PostprocessOptions.parse_min_size_ml(args.min_size_ml) if args.min_size_ml else 0.0
        postprocess = PostprocessOptions(tuple(args.keep_largest), sizes, tuple(args.fill_holes))
    return options, postprocess


def add_nnunet_options(p: argparse.ArgumentParser, folds_flag: str = "--folds") -> None:
    """``--folds`` (``folds_flag`` where the command has its own ``--folds``) and ``--checkpoint-name`` of an
    ``nnunet:PATH`` model, as ``nnUNetv2_predict`` has them; the folds land in ``args.nnunet_folds``."""
    g = p.add_argument_group("nnU-Net models", "for nnunet:PATH, an nnU-Net v2 trained-model folder "
                             "(nnUNet_results/DatasetXXX_NAME/nnUNetTrainer__nnUNetPlans__3d_fullres), or a "
                             "models:/ version registered from one")
    g.add_argument(folds_flag, dest="nnunet_folds", nargs="+", metavar="FOLD",
                   help="folds to ensemble, e.g. 0 1 2 3 4 or all (default: every fold_N with --checkpoint-name)")
    g.add_argument("--checkpoint-name", default="checkpoint_final.pth",
                   help="checkpoint file in each fold folder, e.g. checkpoint_best.pth")


def predictor(args: argparse.Namespace, model: Any = None) -> Any:
    """The predictor of ``bundle``, or of ``model`` when the caller opened it already
    (:func:`pipeline.inference.model_ref.open_model`): a :class:`~pipeline.inference.predictor.Predictor` of a
    bundle (folder or ``models:/``) with ``--checkpoint``, the inference flags, ``--config`` and ``--set``; an
    :class:`~pipeline.inference.nnunet_predictor.NnunetPredictor` with ``--folds`` and ``--checkpoint-name`` of
    ``nnunet:PATH`` or a ``models:/`` nnU-Net model."""
    from pipeline.cli.common import overrides
    from pipeline.inference.model_ref import open_model
    from pipeline.inference.nnunet_folder import NnunetFolder

    options, postprocess = inference_options(args)
    if model is None:
        model = open_model(args.bundle, tracking_uri=args.tracking_uri, folds=args.nnunet_folds,
                           checkpoint_name=args.checkpoint_name)  # fmt: skip
    if isinstance(model, NnunetFolder):
        return _nnunet_predictor(args, model, options, postprocess)
    from pipeline.inference.predictor import Predictor

    return Predictor.from_bundle(
        model, args.checkpoint or None, options=options, postprocess=postprocess, config=["inference", *args.config],
        **overrides(args.set),
    )  # fmt: skip


def _nnunet_predictor(args: argparse.Namespace, folder: Any, options: Any, postprocess: Any) -> Any:
    from pipeline.inference.nnunet_predictor import NnunetPredictor

    given = [flag for flag, value in (("--checkpoint", args.checkpoint), ("--config", args.config),
             ("--set", args.set), ("--keep-largest/--min-size-ml/--fill-holes", postprocess)) if value]  # fmt: skip
    if given:
        raise ValueError(f"{args.bundle}: {', '.join(given)} not supported for nnU-Net models "
                         "(use --folds and --checkpoint-name)")  # fmt: skip
    return NnunetPredictor(folder, options)
