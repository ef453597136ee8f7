"""clinseg pipeline: engines, losses, metrics, MLflow tracking, prediction, reports and the command line."""

from __future__ import annotations

from typing import Any

__all__ = ["Predictor"]


def __getattr__(name: str) -> Any:
    """``pipeline.Predictor`` without importing torch and MONAI on ``import pipeline`` (PEP 562)."""
    if name == "Predictor":
        from pipeline.inference.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
