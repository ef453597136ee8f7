"""``qc_reference.json`` for a trained model: the training split's reference, plus the temperature and the
uncertainty norms fitted on the validation split; written beside the checkpoint (``clinseg train`` does this
when training ends, ``clinseg qc-reference`` for a run trained otherwise, e.g. by ``monai.bundle run``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline.core.atomic import atomic_write_json
from pipeline.core.bundle import Bundle
from pipeline.core.datalist import load_datalist, read_datalist
from pipeline.inference.options import InferenceOptions
from pipeline.inference.predictor import Predictor
from pipeline.inference.qc_reference_file import QC_REFERENCE_NAME
from pipeline.qc.calibration import calibrate_on_validation
from pipeline.qc.reference import build_reference

__all__ = ["write_model_reference"]

logger = logging.getLogger(__name__)


def write_model_reference(
    bundle: str | Path | Bundle,
    checkpoint: str | Path,
    datalist: str | Path,
    *,
    max_cases: int = 100,
    max_validation_cases: int = 30,
    device: str | None = None,
) -> Path:
    """Build the reference of ``datalist``'s training split, calibrate ``checkpoint`` on its validation split
    (at most ``max_validation_cases``, evenly spaced), and write ``qc_reference.json`` beside the checkpoint.

    Raises:
        ValueError: the datalist has no training cases, or a case cannot be read (file and case named).
    """
    bundle = bundle if isinstance(bundle, Bundle) else Bundle.at(bundle)
    checkpoint = Path(checkpoint)
    predictor = Predictor.from_bundle(
        bundle, checkpoint, options=InferenceOptions(device=device, uncertainty=True)
    )
    content = read_datalist(Path(datalist))
    channels = content.get("channels") or {}
    modalities = {k: channels[k] for k in predictor.input_keys if k in channels} or predictor.input_modalities
    reference: dict[str, Any] = build_reference(
        datalist, predictor.input_keys, predictor.label_names, modalities, max_cases=max_cases
    )
    validation = load_datalist(datalist, "validation", required_keys=(*predictor.input_keys, "label"))
    if len(validation) > max_validation_cases:
        step = len(validation) / max_validation_cases
        validation = [validation[int(i * step)] for i in range(max_validation_cases)]
    if validation:
        reference.update(calibrate_on_validation(predictor, validation))
        calibration = reference["calibration"]
        if "ece_before" in calibration:
            logger.info(
                "temperature %.3f fitted on %d validation cases: ECE %.4f -> %.4f",
                reference["temperature"], calibration["cases"], calibration["ece_before"], calibration["ece_after"],
            )  # fmt: skip
    else:
        logger.warning("%s has no validation split: the QC reference keeps temperature 1 (uncalibrated)", datalist)
    return atomic_write_json(checkpoint.parent / QC_REFERENCE_NAME, reference)
