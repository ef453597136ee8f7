"""One QC verdict per case: the checks of :mod:`pipeline.qc.checks` combined into a score and a review flag.

The score is a noisy OR of the findings' severities, ``1 - prod(1 - s_i)``: the probability that at least one
of them makes the case wrong if each alone would with probability ``s_i``. One finding at 4 SD from the
training cases (severity 0.5), or two at about 3.7 SD, reach the default review threshold
:data:`REVIEW_THRESHOLD`; lower it to review more cases (``--qc-threshold``; ``benchmarks/bench_qc.py``
measures what each threshold flags).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.inference.uncertainty import Uncertainty
from pipeline.qc.checks import NAMED_FROM, Finding, input_findings, output_findings, uncertainty_findings
from pipeline.qc.features import geometry_features, image_features, structure_features

__all__ = ["REVIEW_THRESHOLD", "CaseQC", "assess_case", "combined_score"]

REVIEW_THRESHOLD = 0.5


@dataclass
class CaseQC:
    """A case's QC: ``score`` in [0, 1] (higher: more likely wrong), ``review`` (score at or above the
    threshold), every counted finding, and the uncertainty measured."""

    score: float
    review: bool
    findings: list[Finding] = field(default_factory=list)
    uncertainty: dict[str, Any] | None = None
    reference: bool = True

    def as_dict(self) -> dict[str, Any]:
        """The ``qc`` block of ``report.json``: named findings (severity >= :data:`NAMED_FROM`) as text, worst
        first, and every counted check with its severity."""
        ordered = sorted(self.findings, key=lambda f: -f.severity)
        return {
            "score": round(self.score, 4),
            "review": self.review,
            "findings": [f.text for f in ordered if f.severity >= NAMED_FROM],
            "checks": [{"check": f.check, "text": f.text, "severity": round(f.severity, 4)} for f in ordered],
            "uncertainty": self.uncertainty,
            "reference": self.reference,
        }


def combined_score(findings: list[Finding]) -> float:
    """``1 - prod(1 - severity)`` over ``findings``."""
    keep = 1.0
    for finding in findings:
        keep *= 1.0 - min(max(finding.severity, 0.0), 1.0)
    return 1.0 - keep


def assess_case(
    reference: Mapping[str, Any] | None,
    inputs: Mapping[str, Any],
    labels: Any,
    names: Mapping[int, str],
    uncertainty: Uncertainty | None = None,
    *,
    threshold: float = REVIEW_THRESHOLD,
) -> CaseQC:
    """QC of one predicted case.

    Args:
        reference: the model's training reference (:func:`pipeline.qc.reference.build_reference`), ``None``
            when it has none: then only the uncertainty is checked, against fixed floors.
        inputs: input key -> image as read ``(C, X, Y[, Z])`` MetaTensor (scan units), the output grid's first;
            empty: the input and output checks are skipped.
        labels: predicted label map ``(1, X, Y[, Z])`` on the first input's grid.
        names: label value -> structure name.
        uncertainty: the prediction's :class:`~pipeline.inference.uncertainty.Uncertainty`, if measured.
    """
    findings: list[Finding] = []
    if reference is not None and inputs:
        first = next(iter(inputs.values()))
        geometry = geometry_features(first)
        label_map = np.asarray(labels.as_tensor() if hasattr(labels, "as_tensor") else labels)[0]
        mask = label_map > 0
        intensity = {k: image_features(v, mask)[0] for k, v in inputs.items()}
        modalities = {k: str((getattr(v, "meta", {}) or {}).get("modality") or "") for k, v in inputs.items()}
        findings += input_findings(reference, geometry, intensity, modalities)
        voxel_ml = float(np.prod(geometry["spacing"])) / 1000.0
        findings += output_findings(reference, structure_features(label_map, names, voxel_ml), names)
    if uncertainty is not None:
        findings += uncertainty_findings(reference or {}, uncertainty.as_dict(), names)
    score = combined_score(findings)
    return CaseQC(
        score=score,
        review=score >= threshold,
        findings=findings,
        uncertainty=None if uncertainty is None else uncertainty.as_dict(),
        reference=reference is not None and bool(inputs),
    )
