"""A plan: everything a planned bundle needs, chosen from a fingerprint and a compute budget, with its reasons.

The plan is plain JSON (``plan.json`` in the bundle); :mod:`pipeline.planning.bundle_writer` turns it into
``configs/common.yaml``. Grid, patch, depth and normalisation follow :mod:`pipeline.planning.rules`; the
network width and the schedule follow the budget:

- **Width and schedule**: :mod:`pipeline.planning.sizing` (narrowest base width first, the widest that leaves
  enough steps; epochs and validations that fill the budget; a budget too small for one epoch is refused with
  the minimum). The step cost comes from :mod:`pipeline.planning.compute` (CPU time, so load does not change the
  plan) or a replayed profile (:mod:`pipeline.planning.profile`); ``network.width_trials`` records each
  measurement (CPU and wall seconds, threads, repeats, clock) and ``measurement`` how it was taken.
- **The budget in training**: the plan's ``max_epochs`` is what the step cost gives on this kind of machine,
  whatever else runs while it is measured; the budget itself is wall-clock, so training keeps refitting
  ``max_epochs`` and the decay to the epoch length it measures (``TimeBudgetStop(lr_scheduler=...)``) and stops
  within a step of the budget: a loaded machine trains the same network for fewer epochs, and says so.
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
from pipeline.planning.compute import STEP_BIN, ComputeBudget, StepTimer, StepTiming, measure_step
from pipeline.planning.rules import (
    is_anisotropic,
    normalisation_for,
    patch_and_levels,
    prefers_2d,
    resampled_shape,
    target_spacing,
)
from pipeline.planning.sizing import PlanError, choose_width, schedule
from transforms.labels.regions import region_class_order

__all__ = ["PLAN_VERSION", "PlanError", "make_plan"]

PLAN_VERSION = 2  # 2: width_trials record their measurement, `measurement` says how
DEFAULT_NETWORK = "res_unet"
MAX_WIDTH = 320
LEARNING_RATE = 2e-3
SLICES_PER_VOLUME = 4  # 2D: axial patches drawn from each volume per epoch


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
        "transforms.geometry.registration.RegisterToReferenced step)"
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
    timer: StepTimer | None = None,
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
        "sampling", "augmentation", "budget", "measurement", "reasons", "notes", "regions"}`` (JSON-able).
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
    width_arg = _width_argument(network)
    common_args = {"spatial_dims": spatial_dims, "in_channels": len(channels), "out_channels": out_channels}
    width = choose_width(
        network, lambda base: {**common_args, **_sized(width_arg, base, levels)}, [batch, len(channels), *patch],
        out_channels, budget, timer or measure_step, regions=bool(regions),
    )  # fmt: skip
    network_args, step_s, trials = width.args, width.timing.step_s, width.trials
    windows = math.prod(math.ceil(m / p) for m, p in zip(median, patch)) * (
        median[2] if spatial_dims == 2 else 1
    )
    samples = 1 if spatial_dims == 3 else SLICES_PER_VOLUME
    planned = schedule(
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
            **planned,
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
        "budget": {"device": budget.device, "time_budget_s": budget.time_budget_s, "threads": width.timing.threads},
        "measurement": _measurement(width.timing, timer),
        "reasons": {
            "spacing": "median spacing per axis"
            + ("; the coarse axis takes its 10th percentile (anisotropic)" if anisotropic else ""),
            "spatial_dims": f"{dims}: " + ("2D on axial slices" if spatial_dims == 2 else "3D patches"),
            "patch": f"median resampled shape {median} rounded to multiples of {2 ** (levels - 1)}, "
            f"at most {budget.max_patch_voxels(spatial_dims)} voxels on {budget.device}",
            "width": width.reason,
            "normalise": {key: _normalise_reason(step) for key, step in normalise.items()},
            "augmentation": _augmentation_reason(has_mr, spatial_dims),
        },
        "notes": width.notes + _notes(fingerprint),
    }


def _measurement(timing: StepTiming, timer: StepTimer | None) -> dict[str, Any]:
    """How the step cost was obtained: clock, threads, repeats, binning, and the profile it was replayed from."""
    how = (
        "process CPU time of a training step on one torch thread, fastest of the repeats after a warm-up, divided "
        "by the training threads"
        if timing.clock == "process_cpu"
        else "synchronised wall time of a training step, fastest of the repeats after a warm-up"
    )
    return {
        "clock": timing.clock,
        "threads": timing.threads,
        "repeats": timing.repeats,
        "bin": f"step seconds rounded to the nearest power of {STEP_BIN:.4f} (2^(1/4))",
        "how": how,
        "replayed_from": getattr(timer, "source", None),
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
