"""Evaluate checkpoints case by case on each input's own grid: Dice, IoU, HD95, mean surface distance and
surface Dice per label, or per region for region bundles (MONAI metrics, distances in mm from the voxel spacing), written as CSV/JSON and logged to
MLflow as an evaluation run with the per-case table as an MLflow table artifact.

Empty structures: when neither prediction nor reference holds a label, Dice, IoU and surface Dice are 1 and the
distances are nan; when exactly one holds it, Dice, IoU and surface Dice are 0 and the distances are nan (MONAI
would give inf or nan). Summaries skip nan values and report how many values they used (``n``).

Missing structures: a datalist entry's ``missing_labels`` (structures not contoured in that case, imported with
``--allow-missing``) are not scored: every metric of those labels, and of regions holding one, is nan for the case.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import DiceMetric, MeanIoU

from pipeline.core.bundle import Bundle
from pipeline.core.datalist import load_datalist
from pipeline.core.progress import progress_bar
from pipeline.core.splits import fold_of_entries
from pipeline.datasets.regions import validate_regions
from pipeline.evaluation.result import EvaluationResult, summarize
from pipeline.evaluation.surface import surface_scores
from pipeline.evaluation.evaluated_model import EvaluatedModel
from pipeline.evaluation.tables import log_evaluation, write_tables
from pipeline.inference.nnunet_folder import is_nnunet_uri
from pipeline.inference.options import InferenceOptions, PostprocessOptions
from pipeline.inference.predictor import Predictor
from pipeline.qc.assess import REVIEW_THRESHOLD, assess_case
from transforms.io.scan import load_scan

logger = logging.getLogger(__name__)


def voxel_spacing(affine: torch.Tensor | np.ndarray, spatial_dims: int) -> list[float]:
    """Voxel size in mm along each array axis: the column norms of the affine's rotation-scale block."""
    matrix = np.asarray(affine, dtype=np.float64)[:spatial_dims, :spatial_dims]
    return [float(v) for v in np.linalg.norm(matrix, axis=0)]


def case_metrics(
    pred: torch.Tensor,
    label: torch.Tensor,
    spacing: Sequence[float],
    label_names: Mapping[int, str],
    *,
    surface_tolerance_mm: float = 1.0,
    regions: Mapping[str, Sequence[int]] | None = None,
    missing: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Per-label (or per-region) metrics of one case.

    Args:
        pred: predicted label map ``(1, X, Y[, Z])`` with integer values.
        label: reference label map, same shape.
        spacing: voxel size in mm per spatial axis.
        label_names: foreground label value -> structure name, e.g. ``{1: "organ", 2: "lesion"}``.
        surface_tolerance_mm: tolerance of the surface Dice, mm.
        regions: region name -> label values (BRATS: ``{"whole_tumour": [1, 2, 3, 4], "core": [1, 3, 4],
            "enhancing": [4]}``): one row per region, scoring the union of its labels, instead of per label.
        missing: names of structures the reference lacks (the entry's ``missing_labels``): their rows, and
            those of regions holding one, have nan metrics.

    Returns:
        One row per label: ``label, name, dice, iou, hd95_mm, msd_mm, surface_dice, pred_voxels, label_voxels``;
        with ``regions`` one per region, ``label`` its values joined by ``+`` (``"1+3+4"``).
    """
    if pred.shape != label.shape or pred.shape[0] != 1:
        raise ValueError(
            f"pred and label must both be (1, X, Y[, Z]) of one shape, got {pred.shape} and {label.shape}"
        )
    if len(spacing) != pred.ndim - 1:
        raise ValueError(f"spacing needs one value per spatial axis ({pred.ndim - 1}), got {list(spacing)}")
    if any(not (math.isfinite(float(s)) and float(s) > 0) for s in spacing):
        raise ValueError(f"spacing must be positive finite mm values, got {list(spacing)}")
    values = sorted(label_names)
    pred_l, label_l = torch.as_tensor(pred).long(), torch.as_tensor(label).long()
    for name, tensor in (("prediction", pred_l), ("reference", label_l)):
        unknown = sorted(set(torch.unique(tensor).tolist()) - {0, *values})
        if unknown:
            raise ValueError(
                f"{name} holds label values {unknown} that label_names {dict(label_names)} lacks"
            )
    spacing = [float(s) for s in spacing]
    if regions:
        structures = [(_region_id(vs), name, [int(v) for v in vs]) for name, vs in regions.items()]
    else:
        structures = [(v, label_names[v], [v]) for v in values]
    unknown_missing = sorted(set(missing) - set(label_names.values()))
    if unknown_missing:
        raise ValueError(f"missing labels {unknown_missing} are not among label_names {dict(label_names)}")
    unscored = {v for v in values if label_names[v] in set(missing)}
    rows = []
    for key, name, members in structures:
        inside = torch.tensor(members)
        pv, yv = torch.isin(pred_l, inside).float()[None], torch.isin(label_l, inside).float()[None]
        row = _mask_metrics(pv, yv, spacing, surface_tolerance_mm)
        if unscored & set(members):
            row.update(dict.fromkeys(_SCORES, math.nan))
        rows.append({"label": key, "name": name, **row})
    return rows


def _region_id(values: Sequence[int]) -> str:
    """A region's ``label`` column: its label values joined by ``+`` (``"1+3+4"``)."""
    return "+".join(str(int(v)) for v in values)


_SCORES = ("dice", "iou", "hd95_mm", "msd_mm", "surface_dice")


def _mask_metrics(pv: torch.Tensor, yv: torch.Tensor, spacing: list[float], tolerance_mm: float) -> dict[str, Any]:
    """Metrics of one structure, masks ``(1, 1, X, Y[, Z])``: Dice, IoU, HD95, MSD, surface Dice, voxel counts."""
    n_pred, n_label = int(pv.sum()), int(yv.sum())
    row: dict[str, Any] = {}
    if n_pred and n_label:
        common = {"include_background": True, "reduction": "none"}  # the single channel is the structure
        row["dice"] = float(DiceMetric(**common)(pv, yv))
        row["iou"] = float(MeanIoU(**common)(pv, yv))
        row.update(surface_scores(pv[0, 0], yv[0, 0], spacing, tolerance_mm))
    else:
        score = 1.0 if n_pred == n_label else 0.0  # both empty: perfect; one empty: total miss
        row.update(dice=score, iou=score, hd95_mm=math.nan, msd_mm=math.nan, surface_dice=score)
    row.update(pred_voxels=n_pred, label_voxels=n_label)
    return row


@dataclass(frozen=True)
class EvaluationOptions:
    """Settings of an evaluation.

    Attributes:
        surface_tolerance_mm: tolerance of the surface Dice, mm.
        inference: the Predictor's inference options (sliding window, device, TTA, crop, AMP, restore), as
            ``clinseg predict``'s; ``None`` fields keep the bundle's.
        postprocess: label clean-up replacing the bundle's (``None``: the bundle's).
        config: the bundle's inference config and overlays merged after it, by name under ``configs/`` or as
            file paths, as ``monai.bundle run`` merges a list.
        overrides: config ids to override (``spacing=[1, 1, 2]``), after the overlays.
        label_key: datalist key of the reference label map.
        experiment_name: MLflow experiment of the evaluation run.
        train_run_id: MLflow run that trained the checkpoint (found by its checkpoint folder tag when None).
        qc_threshold: QC score from which a case is flagged for review; each row gets the case's
            ``qc_score``, ``qc_review`` and ``qc_findings`` (:mod:`pipeline.qc.assess`), so QC can be checked
            against the metrics.
        progress: show a progress bar (cases done, last case's mean Dice) on stderr when it is a terminal.
        regions: score these regions (name -> label values) instead of the labels; ``None``: the bundle's own
            ``regions`` (a region bundle), else per label; ``{}``: per label even for a region bundle.
    """

    surface_tolerance_mm: float = 1.0
    inference: InferenceOptions | None = None
    postprocess: PostprocessOptions | None = None
    config: tuple[str, ...] = ("inference",)
    overrides: Mapping[str, Any] = field(default_factory=dict)
    label_key: str = "label"
    experiment_name: str = "clinseg"
    train_run_id: str | None = None
    qc_threshold: float = REVIEW_THRESHOLD
    progress: bool = False
    regions: Mapping[str, Sequence[int]] | None = None


def evaluate_entries(
    predictor: Predictor,
    entries: Sequence[Mapping[str, Any]],
    *,
    options: EvaluationOptions,
    fold: int | None = None,
) -> list[dict[str, Any]]:
    """Predict and score each datalist entry (absolute paths) on its input grid; one row per case and label."""
    rows = []
    names = predictor.label_names
    regions = _regions(predictor, options)
    desc = None if fold is None else f"fold {fold}"
    with progress_bar(entries, enabled=options.progress, unit="case", desc=desc) as bar:
        for entry in bar:
            case_rows = _evaluate_entry(predictor, entry, names, regions, options)
            extra = {"case": entry["case"], **({"fold": fold} if fold is not None else {})}
            rows.extend({**extra, **row} for row in case_rows)
            scored = [r["dice"] for r in case_rows if not math.isnan(r["dice"])]
            bar.set_postfix(dice=f"{np.mean(scored):.3f}" if scored else "n/a")
    return rows


def _regions(predictor: Predictor, options: EvaluationOptions) -> dict[str, list[int]] | None:
    """The regions scored: the options', else the bundle's; checked against the bundle's labels."""
    regions = predictor.regions if options.regions is None else options.regions
    if not regions:
        return None
    return validate_regions(regions, predictor.label_names, f"regions to evaluate of {predictor.bundle_name}")


def _evaluate_entry(
    predictor: Predictor,
    entry: Mapping[str, Any],
    names: Mapping[int, str],
    regions: Mapping[str, Sequence[int]] | None,
    options: EvaluationOptions,
) -> list[dict[str, Any]]:
    """Predict one datalist entry and score it on its input grid: one row per label (or region)."""
    if options.label_key not in entry:
        raise ValueError(f"case {entry.get('case')!r} has no {options.label_key!r} to evaluate against")
    segmentation = predictor.predict({k: entry[k] for k in predictor.input_keys})
    pred = segmentation.labels
    qc = assess_case(
        predictor.qc_reference, segmentation.inputs, pred, predictor.label_names, segmentation.uncertainty,
        threshold=options.qc_threshold,
    )  # fmt: skip
    label = load_scan(entry[options.label_key], label=True, spatial_dims=pred.ndim - 1)
    if tuple(label.shape) != tuple(pred.shape) or not np.allclose(label.affine, pred.affine, atol=1e-3):
        raise ValueError(
            f"case {entry['case']!r}: label grid {tuple(label.shape)} does not match the image grid "
            f"{tuple(pred.shape)} (shape or affine differ)"
        )
    spacing = voxel_spacing(pred.affine, pred.ndim - 1)
    rows = case_metrics(
        pred, label, spacing, names, surface_tolerance_mm=options.surface_tolerance_mm, regions=regions,
        missing=entry.get("missing_labels", ()),
    )  # fmt: skip
    findings = " | ".join(qc.as_dict()["findings"])
    verdict = {"qc_score": round(qc.score, 4), "qc_review": qc.review, "qc_findings": findings}
    logger.debug("evaluated %s", entry["case"])
    return [{**row, **verdict} for row in rows]


def evaluate_checkpoint(
    bundle: str | Path | Bundle,
    checkpoints: str | Path | Sequence[str | Path],
    datalist: str | Path,
    split: str = "validation",
    out_dir: str | Path = "evaluation",
    tracking_uri: str | None = None,
    *,
    options: EvaluationOptions | None = None,
) -> EvaluationResult:
    """Evaluate one checkpoint (or an ensemble) of a bundle on a datalist split; write tables; log to MLflow if
    asked.

    Args:
        bundle: bundle folder (its inference config gives preprocessing and sliding window).
        checkpoints: weights, or several for an ensemble.
        datalist: ``dataset.json`` with ``image`` and ``label`` per entry.
        split: datalist split to evaluate.
        out_dir: folder for ``per_case.csv``, ``summary.csv``, ``summary.json``.
        tracking_uri: MLflow store to log an evaluation run to; None logs nothing.
        options: metric, inference and tracking settings.

    Raises:
        ValueError: ``bundle`` is an ``nnunet:PATH`` model folder (its folds are no checkpoints of a bundle:
            :func:`evaluate_predictor` evaluates it).
    """
    if not isinstance(bundle, Bundle) and is_nnunet_uri(bundle):
        raise ValueError(
            f"{bundle}: an nnU-Net model folder is evaluated by evaluate_predictor(Predictor.from_bundle("
            f"{str(bundle)!r}, folds=...), EvaluatedModel.of_nnunet(predictor.folder), datalist, split)"
        )
    options = options or EvaluationOptions()
    bundle = bundle if isinstance(bundle, Bundle) else Bundle.at(bundle)
    predictor = _predictor(bundle, checkpoints, options)
    return evaluate_predictor(
        predictor, EvaluatedModel.of_bundle(bundle), datalist, split, out_dir, tracking_uri, options=options,
        params=config_params(options),
    )  # fmt: skip


def evaluate_predictor(
    predictor: Any,
    model: EvaluatedModel,
    datalist: str | Path,
    split: str = "validation",
    out_dir: str | Path = "evaluation",
    tracking_uri: str | None = None,
    *,
    options: EvaluationOptions | None = None,
    params: Mapping[str, Any] | None = None,
) -> EvaluationResult:
    """Evaluate a built predictor on a datalist split: a bundle's
    :class:`~pipeline.inference.predictor.Predictor` or an nnU-Net model folder's
    :class:`~pipeline.inference.nnunet_predictor.NnunetPredictor` (as ``clinseg predict`` builds them), scored
    alike; write tables; log to MLflow if asked.

    Args:
        predictor: the model; its ``settings()["checkpoints"]`` are logged (and find the training run).
        model: name, metadata and folder the MLflow run is tagged with.
        datalist: ``dataset.json`` whose entries hold the predictor's ``input_keys`` and the label.
        params: further MLflow params (a bundle's ``config`` overlays, an nnU-Net model's folds).
    """
    started_ms = int(time.time() * 1000)
    options = options or EvaluationOptions()
    keys = (*predictor.input_keys, options.label_key)
    entries = load_datalist(datalist, split, required_keys=keys)
    rows = evaluate_entries(predictor, entries, options=options)
    ckpts = list(predictor.settings()["checkpoints"])
    run_params = {"split": split, **(params or {})}
    return _finish(model, rows, out_dir, tracking_uri, options, datalist, run_params, ckpts, started_ms)


def config_params(options: EvaluationOptions) -> dict[str, Any]:
    """MLflow params of a bundle's config: ``config`` (the overlays) and ``set.<id>`` per override."""
    return {"config": list(options.config), **{f"set.{k}": v for k, v in options.overrides.items()}}


def evaluate_folds(
    bundle: str | Path | Bundle,
    checkpoint_pattern: str,
    datalist: str | Path,
    folds: int,
    seed: int = 0,
    out_dir: str | Path = "evaluation",
    tracking_uri: str | None = None,
    *,
    patient_key: str = "case",
    options: EvaluationOptions | None = None,
) -> EvaluationResult:
    """Pool out-of-fold predictions: each case of the cross-validation pool is scored by the model that held
    it out (see :func:`pipeline.core.splits.split_folds`; same ``folds``, ``seed`` and ``patient_key``).

    Args:
        checkpoint_pattern: path with a ``{fold}`` field, e.g. ``runs/fold{fold}/model.pt``.
    """
    if "{fold}" not in checkpoint_pattern:
        raise ValueError(f"checkpoint_pattern must contain '{{fold}}', got {checkpoint_pattern!r}")
    started_ms = int(time.time() * 1000)
    options = options or EvaluationOptions()
    bundle = bundle if isinstance(bundle, Bundle) else Bundle.at(bundle)
    keys = ("image", options.label_key)
    entries = [e for s in ("training", "validation") for e in load_datalist(datalist, s, required_keys=keys)]
    assignment = fold_of_entries(entries, folds, seed, patient_key=patient_key)
    ckpts = [Path(checkpoint_pattern.format(fold=k)) for k in range(folds)]
    missing = [str(c) for c in ckpts if not c.is_file()]
    if missing:
        raise FileNotFoundError(
            f"checkpoint_pattern {checkpoint_pattern!r}: missing fold checkpoints {missing}"
        )
    rows: list[dict[str, Any]] = []
    for k, ckpt in enumerate(ckpts):
        held_out = [e for e in entries if assignment[str(e[patient_key])] == k]
        predictor = _predictor(bundle, ckpt, options)
        rows.extend(evaluate_entries(predictor, held_out, options=options, fold=k))
    params = {"split": "out_of_fold", "folds": folds, "fold_seed": seed, **config_params(options)}
    model = EvaluatedModel.of_bundle(bundle)
    return _finish(model, rows, out_dir, tracking_uri, options, datalist, params, ckpts, started_ms)


def _predictor(
    bundle: Bundle, checkpoints: str | Path | Sequence[str | Path], options: EvaluationOptions
) -> Predictor:
    return Predictor.from_bundle(
        bundle, checkpoints, options=options.inference, postprocess=options.postprocess,
        config=list(options.config), **options.overrides,
    )  # fmt: skip


def _finish(
    model: EvaluatedModel,
    rows: list[dict[str, Any]],
    out_dir: str | Path,
    tracking_uri: str | None,
    options: EvaluationOptions,
    datalist: str | Path,
    params: dict[str, Any],
    checkpoints: Sequence[str | Path],
    started_ms: int,
) -> EvaluationResult:
    result = EvaluationResult(rows, summarize(rows), Path(out_dir))
    files = write_tables(result.rows, result.summary, result.out_dir)
    if tracking_uri:
        result.tracking_uri = tracking_uri
        params = {**params, "surface_tolerance_mm": options.surface_tolerance_mm}
        result.run_id = log_evaluation(
            model, result, files, tracking_uri, datalist=datalist, checkpoints=checkpoints, params=params,
            experiment_name=options.experiment_name, train_run_id=options.train_run_id, start_time_ms=started_ms,
        )  # fmt: skip
    logger.info("%s", result.summary_line())
    return result
