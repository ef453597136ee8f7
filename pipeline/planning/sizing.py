"""Sizing to the budget: the network width from measured steps, the schedule, and what the budget cannot hold.

- **Width**: base widths are timed narrowest first (:data:`BASE_WIDTHS`); the plan keeps the widest whose step
  leaves at least :data:`MIN_STEPS` optimizer steps in the budget, and stops timing at the first that does not
  (a small budget costs one timing, not three). When even the narrowest leaves fewer, it is kept and the plan
  says so in its ``notes``, with the budget that would give it :data:`MIN_STEPS` steps.
- **Schedule**: epochs of ``ceil(cases * samples / batch)`` steps, at least :data:`MIN_STEPS_PER_EPOCH` (on a
  3-case set, 2-step epochs spent more time in per-epoch work than in steps); validation every ``val_interval``
  epochs (about :data:`VALIDATIONS` in all, fewer when they would take more than :data:`VALIDATION_SHARE` of the
  budget); ``max_epochs`` fills :data:`BUDGET_USE` of the budget at the step cost (plus data loading and
  validation estimates), so the polynomial learning-rate decay ends inside the budget.
- **Refusal**: a budget that cannot hold one epoch and one validation of the narrowest network is refused
  (:class:`PlanError`) with the minimum budget that can.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.core.duration import format_duration
from pipeline.planning.compute import ComputeBudget, StepTimer, StepTiming
from pipeline.planning.profile import step_key

__all__ = ["BASE_WIDTHS", "MIN_STEPS", "MIN_STEPS_PER_EPOCH", "PlanError", "WidthChoice", "choose_width", "schedule"]

logger = logging.getLogger(__name__)

BASE_WIDTHS = (8, 16, 32)
MIN_STEPS = 1500
MIN_STEPS_PER_EPOCH = 50
VALIDATIONS = 20
VALIDATION_SHARE = 0.1  # of the budget at most, however large the validation volumes
VALIDATION_VOXEL_CLASS_S = 2.5e-7  # BRATS 240x240x155, 5 classes, 2-core CPU: about 10 s beyond the network
BUDGET_USE = 0.85
DATA_OVERHEAD = 1.25  # loading, augmentation, handlers: hippocampus, 2-core CPU: 29 s epochs of 64 steps of 0.37 s


class PlanError(ValueError):
    """A plan that cannot be made (unknown network, bad dimensionality, dataset too small, budget too small)."""


@dataclass(frozen=True)
class WidthChoice:
    """The chosen network arguments, its timing, every width tried (JSON-able), the reason and any notes."""

    args: dict[str, Any]
    timing: StepTiming
    trials: list[dict[str, Any]]
    reason: str
    notes: list[str]


def steps_in_budget(step_s: float, budget_s: float) -> int:
    """Optimizer steps of ``step_s`` (plus data overhead) in :data:`BUDGET_USE` of ``budget_s``."""
    return int(budget_s * BUDGET_USE / (step_s * DATA_OVERHEAD))


def budget_for_steps(steps: float, step_s: float) -> float:
    """The budget (s, rounded up to 10 s, or to the minute past 2 min) that holds ``steps`` steps of ``step_s``."""
    seconds = steps * step_s * DATA_OVERHEAD / BUDGET_USE
    unit = 60.0 if seconds > 120 else 10.0
    return max(unit, math.ceil(seconds / unit) * unit)


def choose_width(
    network: str,
    args_for: Callable[[int], dict[str, Any]],
    batch_shape: list[int],
    out_channels: int,
    budget: ComputeBudget,
    timer: StepTimer,
    *,
    regions: bool = False,
) -> WidthChoice:
    """Time base widths narrowest first; keep the widest that leaves :data:`MIN_STEPS` steps.

    Args:
        network: registered network name.
        args_for: network arguments for a base width.
        batch_shape: ``(B, C, *patch)``.
        out_channels: classes including background, or regions.
        budget: device, threads and seconds.
        timer: :func:`~pipeline.planning.compute.measure_step` or a replayed profile.
        regions: time the region loss.
    """
    trials: list[dict[str, Any]] = []
    measured: list[tuple[dict[str, Any], StepTiming]] = []
    chosen = 0
    for index, base in enumerate(BASE_WIDTHS):
        args = args_for(base)
        logger.info("timing %s base width %d on %s, batch %s ...", network, base, budget.device, batch_shape)
        timing = timer(network, args, batch_shape, out_channels, budget, regions=regions)
        steps = steps_in_budget(timing.step_s, budget.time_budget_s)
        logger.info(
            "base width %d: %.4g s a step (%s %.4g s, wall %.4g s), %d steps in the budget",
            base, timing.step_s, timing.clock, timing.cpu_s, timing.wall_s, steps,
        )  # fmt: skip
        measured.append((args, timing))
        trials.append({
            "base_width": base, "step_s": timing.step_s, "steps_in_budget": steps,
            "measured": step_key(network, args, batch_shape, out_channels, budget.device, regions),
            "timing": timing.as_dict(),
        })  # fmt: skip
        if steps < MIN_STEPS:
            break
        chosen = index
    trials[chosen]["chosen"] = True
    args, timing = measured[chosen]
    return WidthChoice(args, timing, trials, *_width_reason(trials, trials[chosen], budget))


def _width_reason(
    trials: list[dict[str, Any]], kept: dict[str, Any], budget: ComputeBudget
) -> tuple[str, list[str]]:
    """The reason of the width choice, from the numbers measured, and a note when the budget is short."""
    base, step, steps = kept["base_width"], kept["step_s"], kept["steps_in_budget"]
    if steps < MIN_STEPS:
        needed = budget_for_steps(MIN_STEPS, step)
        reason = (
            f"base width {base}, the narrowest of {list(BASE_WIDTHS)}: its {step:g} s step leaves only {steps} "
            f"steps in the {format_duration(budget.time_budget_s)} budget, under the {MIN_STEPS} a wider one "
            "must leave"
        )
        note = (
            f"the budget holds {steps} training steps of the narrowest network (base width {base}, {step:g} s a "
            f"step); about {MIN_STEPS} are needed for a usable model: --time-budget {format_duration(needed)} or "
            "more gives them"
        )
        return reason, [note]
    wider = [t for t in trials if t["base_width"] > base]
    reason = (
        f"base width {base}: its {step:g} s step leaves {steps} steps in the budget (at least {MIN_STEPS})"
    )
    if wider:
        reason += f"; base width {wider[0]['base_width']} would leave {wider[0]['steps_in_budget']}"
    else:
        reason += f", the widest of {list(BASE_WIDTHS)}"
    return reason, []


def schedule(
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
    (activation, one-hot and Dice cost per voxel and class).

    Raises:
        PlanError: when one epoch and one validation do not fit, naming the minimum budget.
    """
    steps_per_epoch = max(math.ceil(n_train * samples / batch), MIN_STEPS_PER_EPOCH)
    epoch_s = steps_per_epoch * step_s * DATA_OVERHEAD
    # a patch's forward pass is a third of its step; then the whole volume's postprocessing and metrics
    validation_s = n_val * (windows * step_s / (3.0 * batch) + voxel_classes * VALIDATION_VOXEL_CLASS_S)
    usable = budget * BUDGET_USE
    if epoch_s + validation_s > usable:
        minimum = budget_for_steps((epoch_s + validation_s) / (step_s * DATA_OVERHEAD), step_s)
        raise PlanError(
            f"a {budget:g} s budget cannot hold one epoch: {steps_per_epoch} steps of {step_s:g} s "
            f"(about {epoch_s:.0f} s with data loading) and one validation of {n_val} case(s) (about "
            f"{validation_s:.0f} s) need {epoch_s + validation_s:.0f} s of the {usable:.0f} s ({BUDGET_USE:.0%}) a "
            f"plan fills; the minimum budget is --time-budget {format_duration(minimum)}"
        )
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
