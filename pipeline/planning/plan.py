"""A plan: everything a planned bundle needs, chosen from a fingerprint and a compute budget, with its reasons.

The plan is plain JSON (``plan.json`` in the bundle); :mod:`pipeline.planning.bundle_writer` turns it into
``configs/common.yaml``. Grid, patch, depth and normalisation follow :mod:`pipeline.planning.rules`; the
network width and the schedule follow the budget:

- **Width**: the base width (doubling per level, capped at :data:`MAX_WIDTH`) is the widest of
  :data:`BASE_WIDTHS` whose *measured* training step leaves at least :data:`MIN_STEPS` optimizer steps in the
  budget; the narrowest when none does.
- **Schedule**: epochs of ``ceil(cases * samples / batch)`` steps, at least :data:`MIN_STEPS_PER_EPOCH` (the
  loader is iterated again within an epoch, as nnU-Net's fixed 250-iteration epochs: on a 3-case set, 2-step
  epochs spent more time in per-epoch work — checkpoint, handlers, loader start — than in steps, and the
  budget stopped training at 38 % of its planned epochs); validation every ``val_interval`` epochs
  (about :data:`VALIDATIONS` validations in all, fewer when they would take more than
  :data:`VALIDATION_SHARE` of the budget); ``max_epochs`` fills :data:`BUDGET_USE` of the budget at
  the measured step time (plus data loading and validation estimates), so the polynomial learning-rate decay
  ends inside the budget; the budget itself is the hard stop (``time_budget_s``), and training refits
  ``max_epochs`` and the decay to the epoch length it measures (``TimeBudgetStop(lr_scheduler=...)``).
- **Sampling**: patches centred on each foreground class and on background equally often
  (``RandCropByLabelClassesd``), which keeps small and rare classes in view (nnU-Net forces a third of its
  patches onto foreground).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

from networks.registry import get_network_class
from pipeline.planning.compute import ComputeBudget, measure_step_seconds
from pipeline.planning.rules import (
    is_anisotropic,
    normalisation_for,
    patch_and_levels,
    prefers_2d,
    resampled_shape,
    target_spacing,
)
from transforms.regions import region_class_order

__all__ = ["PLAN_VERSION", "PlanError", "make_plan"]

PLAN_VERSION = 1
DEFAULT_NETWORK = "res_unet"
BASE_WIDTHS = (32, 16, 8)
MAX_WIDTH = 320
MIN_STEPS = 1500
MIN_STEPS_PER_EPOCH = 50
VALIDATIONS = 20
VALIDATION_SHARE = 0.1  # of the budget at most, however large the validation volumes
VALIDATION_VOXEL_CLASS_S = 2.5e-7  # BRATS 240x240x155, 5 classes, 2-core CPU: about 10 s beyond the network
BUDGET_USE = 0.85
DATA_OVERHEAD = (
    1.25  # loading, augmentation, handlers: hippocampus, 2-core CPU: 29 s epochs of 64 steps of 0.37 s
)
LEARNING_RATE = 2e-3
SLICES_PER_VOLUME = 4  # 2D: axial patches drawn from each volume per epoch


class PlanError(ValueError):
    """A plan that cannot be made (unknown network, bad dimensionality, dataset too small)."""


def _width_argument(network: str) -> str:
    """The argument that sizes ``network``: a width per level (``channels``, ``features``) or a base width
    (``init_features``: DenseUNet, whose blocks grow by ``growth_rate``)."""
    params = inspect.signature(get_network_class(network)).parameters
    for name in ("channels", "features", "init_features"):
        if name in params:
            return name
    raise PlanError(
        f"network {network!r} has no `channels`, `features` or `init_features` argument to size; plan with one "
        "that has (res_unet, attention_unet, unet, dense_unet) or set its arguments in the planned common.yaml"
    )


def _sized(width_arg: str, base: int, levels: int) -> dict[str, Any]:
    """The width (and, for a base width, depth) arguments of a network with ``levels`` resolutions."""
    if width_arg == "init_features":  # DenseUNet: `levels` counts its poolings, growth half the base width
        return {"init_features": base, "growth_rate": max(base // 2, 4), "levels": levels - 1}
    return {width_arg: _widths(base, levels)}


def _widths(base: int, levels: int) -> list[int]:
    return [min(base * 2**i, MAX_WIDTH) for i in range(levels)]


def _choose_width(
    network: str,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    patch: list[int],
    levels: int,
    batch: int,
    budget: ComputeBudget,
    regions: bool = False,
) -> tuple[dict[str, Any], float, list[dict[str, float]]]:
    """Network arguments of the widest base width that leaves :data:`MIN_STEPS` steps, its step time and
    every width tried."""
    width_arg = _width_argument(network)
    trials: list[dict[str, float]] = []
    chosen: tuple[dict[str, Any], float] = ({}, 0.0)
    for base in BASE_WIDTHS:
        args = {
            "spatial_dims": spatial_dims,
            "in_channels": in_channels,
            "out_channels": out_channels,
            **_sized(width_arg, base, levels),
        }
        step_s = measure_step_seconds(
            network, args, (batch, in_channels, *patch), out_channels, budget, regions=regions
        )
        steps = budget.time_budget_s * BUDGET_USE / (step_s * DATA_OVERHEAD)
        trials.append({"base_width": base, "step_s": round(step_s, 4), "steps_in_budget": int(steps)})
        chosen = (args, step_s)
        if steps >= MIN_STEPS:
            break
    return chosen[0], chosen[1], trials


def _schedule(
    n_train: int,
    n_val: int,
    batch: int,
    samples: int,
    step_s: float,
    windows: float,
    voxel_classes: float,
    budget: float,
) -> dict[str, Any]:
    """Epoch length, estimated epoch and validation seconds, ``max_epochs`` and ``val_interval`` for the budget.

    ``windows``: sliding windows per validation volume; ``voxel_classes``: its voxels times the classes
    (activation, one-hot and Dice cost per voxel and class)."""
    steps_per_epoch = max(math.ceil(n_train * samples / batch), MIN_STEPS_PER_EPOCH)
    epoch_s = steps_per_epoch * step_s * DATA_OVERHEAD
    # a patch's forward pass is a third of its step; then the whole volume's postprocessing and metrics
    validation_s = n_val * (windows * step_s / (3.0 * batch) + voxel_classes * VALIDATION_VOXEL_CLASS_S)
    usable = budget * BUDGET_USE
    epochs = max(1, int(usable / epoch_s))
    validations = min(VALIDATIONS, max(1, int(VALIDATION_SHARE * usable / max(validation_s, 1e-9))))
    interval = max(1, round(epochs / validations))
    epochs = max(1, int(usable / (epoch_s + validation_s / interval)))
    interval = max(1, min(interval, epochs))
    return {
        "steps_per_epoch": steps_per_epoch,
        "estimated_epoch_s": round(epoch_s, 2),
        "estimated_validation_s": round(validation_s, 2),
        "max_epochs": epochs,
        "val_interval": interval,
    }


def _normalise_reason(step: Mapping[str, Any]) -> str:
    target = step["_target_"]
    if target == "ScaleIntensityRanged":
        return "CT: clip to the foreground's 0.5-99.5 % over the dataset, z-score with its mean and std"
    if target.endswith("ForegroundZScored"):
        return "z-score per image inside the voxels above its minimum (constant non-zero background)"
    inside = "inside the non-zero voxels" if step.get("nonzero") else "over the whole image"
    return f"z-score per image {inside}"


def _notes(fingerprint: Mapping[str, Any]) -> list[str]:
    """Advice the plan cannot act on itself: channels of some cases on different grids."""
    cases = fingerprint.get("channel_grids_differ") or []
    if not cases:
        return []
    shown = ", ".join(map(str, cases[:5])) + (f" and {len(cases) - 5} more" if len(cases) > 5 else "")
    note = (
        f"channels come from different grids in {len(cases)} case(s) ({shown}): they are resampled onto the first "
        "channel's grid, which assumes they are aligned in scanner space; if they come from different sessions "
        "or scanners, align them first with `clinseg register FIXED MOVING OUT` (or a "
        "transforms.registration.RegisterToReferenced step)"
    )
    return [note]


def make_plan(
    fingerprint: Mapping[str, Any],
    budget: ComputeBudget,
    *,
    counts: Mapping[str, int],
    dims: str = "auto",
    network: str = DEFAULT_NETWORK,
    regions: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, Any]:
    """Plan a bundle for a fingerprinted dataset.

    Args:
        fingerprint: :func:`pipeline.planning.fingerprint.dataset_fingerprint` of the training split.
        budget: device and wall-clock budget of training.
        counts: cases per split, ``{"training": n, "validation": m}``.
        dims: ``"3d"``, ``"2d"`` (axial slices of the volumes) or ``"auto"`` (:func:`rules.prefers_2d`).
        network: a registered network with a ``channels`` or ``features`` width argument.
        regions: region name -> label values, outermost first (checked by
            :func:`pipeline.datasets.regions.validate_regions`): one sigmoid output per region instead of one
            softmax output per label; ``None`` trains on the labels.

    Returns:
        The plan: ``{"version", "spatial_dims", "spacing", "patch", "network", "normalise", "training",
        "sampling", "augmentation", "budget", "reasons", "notes", "regions"}`` (JSON-able).
    """
    if dims not in ("auto", "2d", "3d"):
        raise PlanError(f"dims must be 'auto', '2d' or '3d', got {dims!r}")
    if counts.get("training", 0) < 1 or counts.get("validation", 0) < 1:
        raise PlanError(f"a plan needs training and validation cases, the datalist has {dict(counts)}")
    spacing = target_spacing(fingerprint)
    median = resampled_shape(fingerprint, spacing)
    spatial_dims = 2 if dims == "2d" or (dims == "auto" and prefers_2d(spacing, median)) else 3
    patch, levels = patch_and_levels(median[:spatial_dims], budget.max_patch_voxels(spatial_dims))
    channels = dict(fingerprint["channels"])
    label_classes = 1 + len(fingerprint["labels"])
    out_channels = len(regions) if regions else label_classes
    batch = budget.batch_size(spatial_dims)
    network_args, step_s, trials = _choose_width(
        network, spatial_dims, len(channels), out_channels, patch, levels, batch, budget, bool(regions)
    )
    windows = math.prod(math.ceil(m / p) for m, p in zip(median, patch)) * (
        median[2] if spatial_dims == 2 else 1
    )
    samples = 1 if spatial_dims == 3 else SLICES_PER_VOLUME
    schedule = _schedule(
        counts["training"], counts["validation"], batch, samples, step_s, windows,
        math.prod(median) * out_channels, budget.time_budget_s,
    )  # fmt: skip
    anisotropic = is_anisotropic(spacing)
    has_mr = "MR" in channels.values()
    normalise = {
        key: normalisation_for(
            key,
            modality,
            fingerprint["intensity"][key],
            fingerprint["nonzero_fraction"][key],
            fingerprint.get("background_fraction", {}).get(key, 0.0),
        )
        for key, modality in channels.items()
    }
    return {
        "version": PLAN_VERSION,
        "spatial_dims": spatial_dims,
        "spacing": spacing if spatial_dims == 3 else spacing[:2],
        "median_shape_resampled": median,
        "patch": patch,
        "levels": levels,
        "channels": channels,
        "class_names": [fingerprint["labels"][str(v)] for v in range(1, label_classes)],
        "regions": _regions(regions),
        "network": {
            "name": network,
            "args": network_args,
            "step_s": round(step_s, 4),
            "width_trials": trials,
        },
        "normalise": normalise,
        "training": {
            "batch_size": batch,
            "samples_per_volume": samples,
            "learning_rate": LEARNING_RATE,
            "weight_decay": 1e-5,
            "optimizer": "AdamW, polynomial decay (power 0.9) over max_epochs",
            "loss": "Dice + binary cross-entropy per region (sigmoid)"
            if regions
            else "Dice + cross-entropy (softmax, background excluded from Dice)",
            **schedule,
            "time_budget_s": budget.time_budget_s,
        },
        "sampling": {
            "ratios": [1] * label_classes,
            "rule": "one patch centre per class, background included, equally often"
            + (" (by the labels, before they become regions)" if regions else ""),
        },
        "augmentation": {
            "rotate_deg": 15.0 if anisotropic or spatial_dims == 2 else 30.0,
            "scale": 0.15,
            "affine_prob": 0.2,
            "flip_prob": 0.5,
            "intensity_prob": 0.15,
            "mr_artifacts": has_mr and spatial_dims == 3,
        },
        "budget": {"device": budget.device, "time_budget_s": budget.time_budget_s, "threads": budget.threads},
        "reasons": {
            "spacing": "median spacing per axis"
            + ("; the coarse axis takes its 10th percentile (anisotropic)" if anisotropic else ""),
            "spatial_dims": f"{dims}: " + ("2D on axial slices" if spatial_dims == 2 else "3D patches"),
            "patch": f"median resampled shape {median} rounded to multiples of {2 ** (levels - 1)}, "
            f"at most {budget.max_patch_voxels(spatial_dims)} voxels on {budget.device}",
            "width": f"widest base width of {list(BASE_WIDTHS)} with at least {MIN_STEPS} steps in the budget",
            "normalise": {key: _normalise_reason(step) for key, step in normalise.items()},
            "augmentation": _augmentation_reason(has_mr, spatial_dims),
        },
        "notes": _notes(fingerprint),
    }


def _regions(regions: Mapping[str, Sequence[int]] | None) -> dict[str, Any] | None:
    """The plan's ``regions``: names, label values and the label each region gives back at inference."""
    if not regions:
        return None
    values = [sorted(int(v) for v in labels) for labels in regions.values()]
    return {
        "names": list(regions),
        "labels": values,
        "class_order": region_class_order(values),
        "rule": "one sigmoid output per region, outermost first; inference gives each voxel the label of the "
        "innermost region with probability > 0.5 (nnU-Net's regions_class_order)",
    }


def _augmentation_reason(has_mr: bool, spatial_dims: int) -> str:
    standard = "flips, rotation + scaling, gamma, noise, blur, intensity scale and shift"
    if not has_mr:
        return standard
    if spatial_dims == 2:
        return (
            f"{standard}; no MR artefacts: TorchIO's bias field, motion, ghosting and spike need 3D volumes"
        )
    return (
        f"{standard}; then MR artefacts (bias field, motion, ghosting, spike) on the stacked image, scanner "
        "variation that the standard augmentation does not imitate (its gamma serves both)"
    )
