"""The named QC checks: a case's inputs, outputs and uncertainty against its model's reference.

Each check gives :class:`Finding` s with a severity in [0, 1] (how likely the case is wrong because of it).
Continuous measures are turned into a severity by their distance from the training cases in standard
deviations, ``z``, through :func:`severity_of_z`: 0.5 at 4 SD, 0.12 at 3 SD, under 0.02 at 2 SD; a finding is
named in reports from :data:`NAMED_FROM` (about 3 SD) on. Hard mismatches (modality, orientation, an empty structure the
training data always had) have fixed severities.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.qc.reference import LOG_FEATURES

__all__ = ["MIN_COUNTED", "NAMED_FROM", "Finding", "input_findings", "output_findings", "severity_of_z", "uncertainty_findings"]

NAMED_FROM = 0.1
"""Severities from this on are named findings in reports; weaker ones still count in the score."""
MIN_COUNTED = 0.01
"""Severities up to this are dropped (a feature within about 2 SD of the training cases)."""
RANGE_TOLERANCE = 1.1
"""Spacing and field of view within this factor of the training range raise nothing."""
_STD_FLOOR = 0.05  # of the mean's magnitude: a feature constant over the training cases still gets a scale
_FEATURE_TEXT = {
    "p01": "intensity 1st percentile", "p50": "intensity median", "p99": "intensity 99th percentile",
    "roughness": "noise (neighbour difference over range)", "fg_p01": "structure intensity 1st percentile",
    "fg_p50": "structure intensity median", "fg_p99": "structure intensity 99th percentile",
    "fg_spread": "structure intensity spread", "fg_position": "structure contrast",
}  # fmt: skip


@dataclass(frozen=True)
class Finding:
    """One named QC observation: ``check`` (e.g. ``"spacing"``), readable ``text``, ``severity`` in [0, 1]."""

    check: str
    text: str
    severity: float


def severity_of_z(z: float) -> float:
    """``1 / (1 + exp(-2 (z - 4)))`` for a one-sided distance ``z`` in SD (0 or less: 0)."""
    return 0.0 if z <= 0 else 1.0 / (1.0 + math.exp(-2.0 * (z - 4.0)))


def _z(value: float, summary: Mapping[str, float], log: bool) -> float:
    x = math.log(max(value, 1e-6)) if log else value
    scale = max(summary["std"], _STD_FLOOR * abs(summary["mean"]), 1e-6)
    return (x - summary["mean"]) / scale


def _range_severity(value: float, summary: Mapping[str, float]) -> float:
    """0 inside the training range widened by :data:`RANGE_TOLERANCE`, then rising to 1 at a factor 2 outside."""
    ratio = max(summary["min"] / max(value, 1e-9), value / max(summary["max"], 1e-9))
    if ratio <= RANGE_TOLERANCE:
        return 0.0
    return min(1.0, 0.5 + math.log(ratio / RANGE_TOLERANCE) / math.log(2.0))


def _geometry(reference: Mapping[str, Any], geometry: Mapping[str, Any]) -> list[Finding]:
    found = []
    orientations = reference.get("orientations") or {}
    if orientations and geometry["orientation"] not in orientations:
        seen = "/".join(sorted(orientations))
        found.append(Finding("orientation", f"orientation {geometry['orientation']}, training data {seen}", 0.8))
    for name, unit_text in (("spacing", "spacing"), ("fov_mm", "field of view")):
        for axis, (value, summary) in enumerate(zip(geometry[name], reference.get(name) or [])):
            severity = 0.0 if summary is None else _range_severity(value, summary)
            if severity:
                found.append(Finding(
                    name, f"{unit_text} {value:.3g} mm along {'RAS'[axis]} is outside the training range "
                    f"{summary['min']:.3g}-{summary['max']:.3g} mm", severity,
                ))  # fmt: skip
    return found


def input_findings(
    reference: Mapping[str, Any],
    geometry: Mapping[str, Any],
    intensity: Mapping[str, Mapping[str, float | None]],
    modalities: Mapping[str, str],
) -> list[Finding]:
    """Geometry (of the output grid's input), modality and intensity features (per input key) against the
    reference. ``modalities``: input key -> the modality the scan declares (DICOM), empty when unknown."""
    found = _geometry(reference, geometry)
    trained = reference.get("modalities") or {}
    for key, got in modalities.items():
        want = trained.get(key)
        if got and want and got.upper() != want.upper():
            found.append(Finding("modality", f"input {key!r}: modality {got.upper()}, trained on {want}", 0.9))
    for key, features in intensity.items():
        summaries = (reference.get("intensity") or {}).get(key) or {}
        for name, value in features.items():
            summary = summaries.get(name)
            if value is None or summary is None:
                continue
            z = _z(value, summary, name in LOG_FEATURES)
            severity = severity_of_z(abs(z))
            if severity > MIN_COUNTED:
                side = "above" if z > 0 else "below"
                found.append(Finding(
                    "intensity", f"input {key!r}: {_FEATURE_TEXT.get(name, name)} {value:.4g} is {abs(z):.1f} SD "
                    f"{side} training ({_shown(summary, name)})", severity,
                ))  # fmt: skip
    return found


def _shown(summary: Mapping[str, float], name: str) -> str:
    if name in LOG_FEATURES:
        return f"median {math.exp(summary['mean']):.3g}"
    return f"{summary['mean']:.4g} ± {summary['std']:.2g}"


def output_findings(
    reference: Mapping[str, Any], structures: Mapping[int, Mapping[str, float]], names: Mapping[int, str]
) -> list[Finding]:
    """Per structure: empty, volume, connected components and field-of-view border against the training labels."""
    found = []
    for value, row in structures.items():
        ref = (reference.get("structures") or {}).get(str(value))
        name = names.get(value, str(value))
        if not ref:
            continue
        if row["volume_ml"] <= 0:
            if ref["present"] >= 0.9:
                found.append(Finding("empty", f"{name}: empty, present in {ref['present']:.0%} of training cases", 0.9))
            continue
        volume = ref.get("volume_ml")
        if volume:
            z = _z(row["volume_ml"], volume, log=True)
            severity = max(severity_of_z(abs(z)), _range_severity(row["volume_ml"], {
                "min": math.exp(volume["min"]) / 1.5, "max": math.exp(volume["max"]) * 1.5}))  # fmt: skip
            if severity > MIN_COUNTED:
                found.append(Finding(
                    "volume", f"{name}: volume {row['volume_ml']:.4g} mL is {abs(z):.1f} SD "
                    f"{'above' if z > 0 else 'below'} training (median {math.exp(volume['mean']):.4g} mL, range "
                    f"{math.exp(volume['min']):.4g}-{math.exp(volume['max']):.4g})", severity,
                ))  # fmt: skip
        components = ref.get("components")
        if components and row["components"] > components["max"] + 1:
            extra = row["components"] - components["max"]
            found.append(Finding(
                "components", f"{name}: {row['components']:.0f} connected components, training at most "
                f"{components['max']:.0f}", min(0.8, 0.2 + 0.1 * extra),
            ))  # fmt: skip
        border = ref.get("border_fraction") or {"max": 0.0}
        if row["border_fraction"] > max(2 * border["max"], 0.02):
            found.append(Finding(
                "border", f"{name}: {row['border_fraction']:.1%} of its voxels touch the field-of-view border "
                f"(training at most {border['max']:.1%})", min(0.7, 0.3 + row["border_fraction"]),
            ))  # fmt: skip
    return found


def _uncertainty_finding(
    check: str, text: str, value: float, summary: Mapping[str, float] | None, fixed: tuple[float, float],
    *, worse_when: str, min_sd: float,
) -> Finding | None:
    """A finding for ``value`` when it lies too far on its bad side (``worse_when``: ``"lower"`` or ``"higher"``)
    of the validation ``summary`` (mean, std; the std floored at ``min_sd``), else of ``fixed`` (centre, sd)."""
    centre, sd = (summary["mean"], max(summary["std"], min_sd)) if summary else fixed
    z = (centre - value if worse_when == "lower" else value - centre) / sd
    severity = severity_of_z(z)
    if severity <= MIN_COUNTED:
        return None
    side = "below" if worse_when == "lower" else "above"
    return Finding(check, text + (f", {z:.1f} SD {side} validation ({centre:.3f})" if summary else ""), severity)


def uncertainty_findings(
    reference: Mapping[str, Any], uncertainty: Mapping[str, Any], names: Mapping[int, str]
) -> list[Finding]:
    """Agreement between members (low is bad) and foreground entropy (high is bad), against the validation
    cases' values in the reference when it has them, else against fixed floors (agreement 0.9, entropy 0.2)."""
    norms = reference.get("uncertainty") or {}
    found = [
        _uncertainty_finding(
            "agreement", f"{names.get(int(key), key)}: members agree at Dice {agreement:.3f}", agreement,
            (norms.get("agreement") or {}).get(str(key)), (0.9, 0.025), worse_when="lower", min_sd=0.02,
        )
        for key, agreement in (uncertainty.get("agreement") or {}).items()
        if agreement is not None
    ]
    entropy = uncertainty.get("foreground_entropy")
    if entropy is not None:
        found.append(_uncertainty_finding(
            "entropy", f"mean entropy in the predicted foreground {entropy:.3f}", entropy,
            norms.get("foreground_entropy"), (0.2, 0.05), worse_when="higher", min_sd=0.01,
        ))  # fmt: skip
    return [f for f in found if f is not None]
