"""The compute a plan is sized for: the device, its patch budget, and the measured cost of a training step.

A plan has to fit a wall-clock budget on *this* kind of machine, so rather than guess from a table, the planner
times a few real training steps (forward, Dice+CE — softmax, or sigmoid per region for a region plan —
backward, optimizer step) of each candidate network width on the target device.

The same data and budget must give the same plan on a quiet and on a loaded machine, so on CPU the cost is the
step's **process CPU time on one torch thread** (``time.process_time``: the work done, which other processes do
not stretch the way they stretch wall time; with two or more threads, threads that wait for a descheduled
sibling spin and bill CPU time, so one thread is timed), the fastest of a few repeats, divided by the threads
training will use (2 threads ran a step 1.9x faster than 1 on this project's 2-core CPU), then rounded to the
nearest power of :data:`STEP_BIN` (19 % apart) so the plan's discrete choices do not follow the last per cent of
noise. On a GPU the cost is the synchronised wall time (a GPU is not time-shared the way CPU cores are). Both
clocks are recorded (:class:`StepTiming`); the figures, quiet against loaded, are in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
from monai.losses import DiceCELoss

import networks

__all__ = ["STEP_BIN", "ComputeBudget", "StepTimer", "StepTiming", "measure_step"]

STEP_BIN = 2**0.25  # step seconds are rounded to the nearest power of this factor
MEASURE_S = 20.0  # timed seconds per width at most, after the warm-up step (1 repeat at least)
_PATCH_VOXELS = {"cpu": 96_000, "cuda": 128 * 128 * 128}
_PATCH_VOXELS_2D = {"cpu": 160 * 160, "cuda": 512 * 512}
_BATCH = {"cpu": 2, "cuda": 2}
_BATCH_2D = {"cpu": 8, "cuda": 12}


@dataclass(frozen=True)
class ComputeBudget:
    """Where and for how long training will run.

    Attributes:
        device: ``cpu`` or ``cuda`` (the kind; the bundle picks ``cuda:0`` when present).
        time_budget_s: wall-clock seconds of training (validation included).
        threads: torch CPU threads training will use (the step is timed on one; ``None``: torch's default).
    """

    device: str
    time_budget_s: float
    threads: int | None = None

    @classmethod
    def detect(
        cls, time_budget_s: float, device: str | None = None, threads: int | None = None
    ) -> ComputeBudget:
        """``device`` as given, else ``cuda`` when a GPU is visible, else ``cpu``."""
        kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if kind not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if kind == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but no GPU is visible to torch")
        if time_budget_s <= 0:
            raise ValueError(f"the time budget must be positive, got {time_budget_s} s")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        return cls(kind, float(time_budget_s), threads)

    def max_patch_voxels(self, spatial_dims: int) -> int:
        """The largest training patch this device gets, in voxels (pixels in 2D)."""
        return (_PATCH_VOXELS if spatial_dims == 3 else _PATCH_VOXELS_2D)[self.device]

    def batch_size(self, spatial_dims: int) -> int:
        """Patches per training step."""
        return (_BATCH if spatial_dims == 3 else _BATCH_2D)[self.device]


def _bin(seconds: float) -> float:
    """``seconds`` rounded to the nearest power of :data:`STEP_BIN` (4 significant digits)."""
    if seconds <= 0:
        return 0.0
    binned = STEP_BIN ** round(math.log(seconds, STEP_BIN))
    return float(f"{binned:.4g}")


@dataclass(frozen=True)
class StepTiming:
    """One network's measured training step.

    Attributes:
        cpu_s: process CPU seconds of the fastest repeat (one torch thread on CPU).
        wall_s: wall seconds of the fastest repeat.
        threads: torch threads training will use: the CPU seconds are divided among them.
        repeats: timed steps after the warm-up step.
        clock: ``process_cpu`` (CPU: the plan uses ``cpu_s / threads``) or ``wall`` (GPU: ``wall_s``).
    """

    cpu_s: float
    wall_s: float
    threads: int
    repeats: int
    clock: str = "process_cpu"

    @property
    def step_s(self) -> float:
        """The step cost the plan is sized on, binned to a power of :data:`STEP_BIN`."""
        return _bin(self.cpu_s / self.threads if self.clock == "process_cpu" else self.wall_s)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cpu_s": round(self.cpu_s, 4), "wall_s": round(self.wall_s, 4)}


class StepTimer(Protocol):
    """What the planner calls for a step cost: :func:`measure_step`, or a recorded profile's replay."""

    def __call__(
        self,
        network_name: str,
        network_args: Mapping[str, Any],
        batch_shape: Sequence[int],
        out_channels: int,
        budget: ComputeBudget,
        *,
        regions: bool = False,
    ) -> StepTiming: ...


def measure_step(
    network_name: str,
    network_args: Mapping[str, Any],
    batch_shape: Sequence[int],
    out_channels: int,
    budget: ComputeBudget,
    *,
    regions: bool = False,
    repeats: int = 4,
) -> StepTiming:
    """Time one training step on ``budget.device``: the fastest of ``repeats`` after a warm-up step.

    The minimum, as ``timeit`` reports, because other work on a shared machine only ever adds time. On CPU the
    step runs on one torch thread and ``threads`` records ``budget.threads`` (default: torch's thread count).

    Args:
        network_name, network_args: as ``networks.build_network``.
        batch_shape: ``(B, C, H, W[, D])`` of the training input.
        out_channels: classes including background, or regions.
        budget: device and CPU threads.
        regions: time the region loss (sigmoid Dice + BCE on ``out_channels`` region masks) instead of
            softmax Dice + CE on integer labels.
        repeats: timed steps (fewer when the warm-up step shows they would take over :data:`MEASURE_S`).
    """
    previous_threads = torch.get_num_threads()
    threads = budget.threads or previous_threads
    device = torch.device("cuda:0" if budget.device == "cuda" else "cpu")
    torch.set_num_threads(threads if device.type == "cuda" else 1)
    try:
        net = networks.build_network(network_name, **network_args).to(device)
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
        x = torch.randn(*batch_shape, device=device)
        if regions:
            loss = DiceCELoss(sigmoid=True)
            y = torch.randint(0, 2, (batch_shape[0], out_channels, *batch_shape[2:]), device=device).float()
        else:
            loss = DiceCELoss(to_onehot_y=True, softmax=True)
            y = torch.randint(0, out_channels, (batch_shape[0], 1, *batch_shape[2:]), device=device)
        cpu, wall = [], []
        while len(wall) < repeats + 1:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, start_cpu = time.perf_counter(), time.process_time()
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                value = loss(net(x), y)
            value.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
            if len(wall) == 1:  # slow steps get fewer repeats: timing a width takes about MEASURE_S
                repeats = max(1, min(repeats, int(MEASURE_S / max(wall[0], 1e-9))))
        clock = "wall" if device.type == "cuda" else "process_cpu"
        return StepTiming(min(cpu[1:]), min(wall[1:]), threads, repeats, clock)
    finally:
        torch.set_num_threads(previous_threads)
