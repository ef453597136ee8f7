"""A recorded step profile: the planner's measurements, replayed for an identical plan elsewhere.

Every width the planner times is kept in ``plan.json`` (``network.width_trials``: the measured network, batch
and :class:`~pipeline.planning.compute.StepTiming`). ``clinseg plan --profile OLD/configs/plan.json`` answers
the same questions from that record instead of timing, so the same dataset and budget give the same plan on
another machine, or on this one under another load.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.planning.compute import ComputeBudget, StepTiming

__all__ = ["ProfileError", "StepProfile", "step_key"]


class ProfileError(ValueError):
    """A profile file that cannot be read, or lacks a measurement the plan needs."""


def step_key(
    network_name: str,
    network_args: Mapping[str, Any],
    batch_shape: Sequence[int],
    out_channels: int,
    device: str,
    regions: bool,
) -> dict[str, Any]:
    """What a step measurement depends on (the JSON-able ``measured`` entry of a width trial)."""
    return {
        "network": network_name,
        "args": {k: network_args[k] for k in sorted(network_args)},
        "batch_shape": [int(n) for n in batch_shape],
        "out_channels": int(out_channels),
        "device": device,
        "regions": bool(regions),
    }


class StepProfile:
    """Step timings by :func:`step_key`, read from a plan's ``network.width_trials``; a
    :class:`~pipeline.planning.compute.StepTimer`."""

    def __init__(self, timings: Mapping[str, StepTiming], source: str) -> None:
        self.timings = dict(timings)
        self.source = source

    @classmethod
    def read(cls, path: str | Path) -> StepProfile:
        """The profile recorded in ``path`` (a ``plan.json`` written by ``clinseg plan``)."""
        path = Path(path)
        try:
            trials = json.loads(path.read_text())["network"]["width_trials"]
            timings = {
                json.dumps(t["measured"], sort_keys=True): StepTiming(**t["timing"]) for t in trials
            }
        except FileNotFoundError:
            raise ProfileError(f"profile {path}: no such file") from None
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ProfileError(
                f"profile {path}: not a plan.json with network.width_trials[].measured/timing "
                f"(written by clinseg plan): {type(error).__name__}: {error}"
            ) from None
        if not timings:
            raise ProfileError(f"profile {path}: network.width_trials is empty")
        return cls(timings, str(path))

    def __call__(
        self,
        network_name: str,
        network_args: Mapping[str, Any],
        batch_shape: Sequence[int],
        out_channels: int,
        budget: ComputeBudget,
        *,
        regions: bool = False,
    ) -> StepTiming:
        key = step_key(network_name, network_args, batch_shape, out_channels, budget.device, regions)
        found = self.timings.get(json.dumps(key, sort_keys=True))
        if found is None:
            raise ProfileError(
                f"profile {self.source} has no measurement of {network_name} {key['args']} on batch "
                f"{key['batch_shape']} ({budget.device}): it was recorded for another dataset, network, device "
                "or regions; plan without --profile to measure"
            )
        return found
