"""Hand-made dataset fingerprints with known answers, for the planning tests (the shape of
:func:`pipeline.planning.fingerprint.dataset_fingerprint`'s result)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pipeline.planning.compute import StepTiming

FOREGROUND_STATS = {"mean": 40.0, "std": 20.0, "p00_5": -100.0, "p99_5": 200.0, "min": -1000.0, "max": 3000.0,
                    "median": 40.0}  # fmt: skip


def fake_fingerprint(
    spacing: Sequence[float],
    p10: Sequence[float],
    shape: Sequence[int],
    channels: Mapping[str, str] | None = None,
    *,
    nonzero: float = 1.0,
    background: float = 0.0,
    labels: Sequence[str] = ("a", "b"),
) -> dict:
    """A fingerprint of median ``spacing`` / ``shape`` (10th-percentile spacing ``p10``) over ``channels``
    (name -> modality, default one MR ``image``), every channel with :data:`FOREGROUND_STATS`."""
    channels = dict(channels or {"image": "MR"})
    return {
        "datalist": "/data/dataset.json",
        "cases": 10,
        "channels": channels,
        "labels": {str(i + 1): n for i, n in enumerate(labels)},
        "spacing": {"median": list(spacing), "p10": list(p10), "min": list(p10), "max": list(spacing)},
        "shape": {"median": list(shape), "p10": list(shape), "min": list(shape), "max": list(shape)},
        "intensity": {k: dict(FOREGROUND_STATS) for k in channels},
        "nonzero_fraction": {k: nonzero for k in channels},
        "background_fraction": {k: background for k in channels},
    }


def step_timing(seconds: float) -> StepTiming:
    """A measured step of ``seconds`` process CPU seconds on one thread, for a stubbed timer."""
    return StepTiming(cpu_s=seconds, wall_s=seconds, threads=1, repeats=1)
