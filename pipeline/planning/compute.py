"""The compute a plan is sized for: the device, its patch budget, and the measured cost of a training step.

A plan has to fit a wall-clock budget on *this* machine, so rather than guess from a table, the planner times
a few real training steps (forward, Dice+CE — softmax, or sigmoid per region for a region plan — backward,
optimizer step) of each candidate network width on
the target device and keeps the widest that leaves enough optimizer steps in the budget.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from monai.losses import DiceCELoss

import networks

__all__ = ["ComputeBudget", "measure_step_seconds"]

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
        threads: torch CPU threads while timing steps (``None``: torch's default).
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
        return cls(kind, float(time_budget_s), threads)

    def max_patch_voxels(self, spatial_dims: int) -> int:
        """The largest training patch this device gets, in voxels (pixels in 2D)."""
        return (_PATCH_VOXELS if spatial_dims == 3 else _PATCH_VOXELS_2D)[self.device]

    def batch_size(self, spatial_dims: int) -> int:
        """Patches per training step."""
        return (_BATCH if spatial_dims == 3 else _BATCH_2D)[self.device]


def measure_step_seconds(
    network_name: str,
    network_args: Mapping[str, Any],
    batch_shape: Sequence[int],
    out_channels: int,
    budget: ComputeBudget,
    repeats: int = 4,
    *,
    regions: bool = False,
) -> float:
    """Seconds of one training step on ``budget.device``: the fastest of ``repeats`` after a warm-up step.

    The minimum, as ``timeit`` reports, because other work on a shared machine only ever adds time; a
    plan sized on a slowed step would train far fewer epochs than the machine can run.

    Args:
        network_name, network_args: as ``networks.build_network``.
        batch_shape: ``(B, C, H, W[, D])`` of the training input.
        out_channels: classes including background, or regions.
        budget: device and CPU threads.
        repeats: timed steps.
        regions: time the region loss (sigmoid Dice + BCE on ``out_channels`` region masks) instead of
            softmax Dice + CE on integer labels.
    """
    previous_threads = torch.get_num_threads()
    if budget.threads:
        torch.set_num_threads(budget.threads)
    device = torch.device("cuda:0" if budget.device == "cuda" else "cpu")
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
        times = []
        for _ in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                value = loss(net(x), y)
            value.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return float(min(times[1:]))
    finally:
        torch.set_num_threads(previous_threads)
