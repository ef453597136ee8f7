"""Train a bundle through MONAI's ConfigWorkflow and summarize the run (best metric, checkpoints, MLflow run)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.bundle import Bundle
from pipeline.tracking.store import default_tracking_uri

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a finished training run produced."""

    bundle: str
    run_name: str
    tracking_uri: str
    ckpt_dir: Path
    best_metric: float
    best_epoch: int
    epochs: int
    best_per_class: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    unsynced: str = ""  # MLflow records still only in the run's journal, e.g. "12 metrics records, 1 status"
    stop_reason: str = ""  # why training ended early, e.g. "time budget 30m"; "" when it ran max_epochs
    max_epochs: int = 0

    @property
    def best_checkpoint(self) -> Path:
        return self.ckpt_dir / "model.pt"

    def summary(self) -> str:
        per_class = ", ".join(f"{k} {v:.4f}" for k, v in self.best_per_class.items())
        return (
            f"{self.bundle}: best val_mean_dice {self.best_metric:.4f} at epoch {self.best_epoch}/{self.epochs}"
            + (f" ({per_class})" if per_class else "")
            + (
                f"\ntraining stopped on the {self.stop_reason} after {self.epochs} epoch{'s' * (self.epochs != 1)} "
                + f"(max_epochs {self.max_epochs})"
                if self.stop_reason
                else ""
            )
            + f"\ncheckpoints: {self.ckpt_dir}\nMLflow run {self.run_name} ({self.run_id or 'not created yet'}) "
            + f"in {self.tracking_uri}"
            + (
                f"\nwarning: not yet in MLflow: {self.unsynced}; replay with: clinseg tracking sync {self.ckpt_dir}"
                if self.unsynced
                else ""
            )
        )


def train_bundle(
    bundle: str | Path | Bundle,
    *,
    dataset_dir: str | Path | None = None,
    ckpt_dir: str | Path | None = None,
    tracking_uri: str | None = None,
    max_epochs: int | None = None,
    resume: bool = False,
    fold: int | None = None,
    folds: int = 5,
    fold_seed: int = 0,
    overrides: dict[str, Any] | None = None,
    config: str | Path | Sequence[str | Path] = "train",
    time_budget_s: float | None = None,
    qc_reference: bool = True,
) -> TrainResult:
    """Run a bundle's train config (exactly what ``python -m monai.bundle run`` runs) with overrides.

    ``config`` may list overlays after the base config, by name under ``configs/`` or as file paths, merged in
    order as ``monai.bundle run`` merges a list (e.g. ``["train", "cosine_warmup", "my_site.yaml"]``); the run
    writes its config as run, overlays and overrides applied, to ``<ckpt_dir>/config_run.json`` for MLflow.
    ``resume=True`` continues from the newest checkpoint in ``ckpt_dir`` and logs into the same MLflow run;
    ``ckpt_dir`` defaults to the bundle's (``runs/<bundle name>`` under the working directory for a shipped bundle).
    ``fold=k`` trains fold k of a deterministic patient-level ``folds``-fold split of the datalist's
    training + validation cases (the fold's datalist is written into ``ckpt_dir``; the run is tagged).
    ``time_budget_s`` ends training cleanly before an epoch that would overrun it (the bundle's ``time_budget_s``;
    see :class:`pipeline.training.time_budget.TimeBudgetStop`); a resumed run gets the budget anew.
    ``qc_reference`` writes the training data's QC reference and the temperature fitted on the validation split
    beside the best checkpoint when training ends (:func:`pipeline.qc.model_reference.write_model_reference`).
    """
    bundle = bundle if isinstance(bundle, Bundle) else Bundle.at(bundle)
    settings: dict[str, Any] = dict(overrides or {})
    if dataset_dir is not None:
        settings["dataset_dir"] = str(Path(dataset_dir).resolve())
    if ckpt_dir is not None:
        settings["ckpt_dir"] = str(Path(ckpt_dir).resolve())
    if max_epochs is not None:
        settings["max_epochs"] = max_epochs
    if time_budget_s is not None:
        settings["time_budget_s"] = time_budget_s
    if resume:
        settings["resume"] = True  # in ckpt_dir: the bundle's stable default (runs/<name>) unless given
    settings["tracking_uri"] = default_tracking_uri(tracking_uri or settings.get("tracking_uri"))
    if fold is not None:
        if ckpt_dir is None or dataset_dir is None:
            raise ValueError("cross-validation needs dataset_dir and a ckpt_dir per fold (e.g. runs/fold0)")
        from pipeline.core.splits import fold_datalist

        datalist = fold_datalist(
            Path(dataset_dir) / "dataset.json", fold, folds, fold_seed,
            out_path=Path(ckpt_dir) / f"dataset_fold{fold}of{folds}.json",
        )  # fmt: skip
        settings.update(datalist_file=str(datalist.resolve()), fold=fold)
    workflow = bundle.run(config, **settings)
    parser = workflow.parser
    evaluator = parser.get_parsed_content("validate#evaluator")
    trainer = parser.get_parsed_content("train#trainer")
    result = TrainResult(
        bundle=bundle.name,
        run_name=parser.get_parsed_content("run_name"),
        tracking_uri=parser.get_parsed_content("tracking_uri"),
        ckpt_dir=Path(parser.get_parsed_content("ckpt_dir")),
        best_metric=float(evaluator.state.best_metric),
        best_epoch=int(evaluator.state.best_metric_epoch),
        epochs=int(trainer.state.epoch),
        stop_reason=str(getattr(trainer.state, "stop_reason", "")),
        max_epochs=int(trainer.state.max_epochs),
    )
    if parser.get("tracking_journal") is not None:
        _read_back_run(result, Path(parser.get_parsed_content("tracking_journal")))
    if qc_reference and result.best_checkpoint.is_file():
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # one process of several: no rank may race the others
            logger.info("distributed run: write its QC reference afterwards with clinseg qc-reference")
        else:
            _write_qc_reference(bundle, result.best_checkpoint, parser)
    return result


def _write_qc_reference(bundle: Bundle, checkpoint: Path, parser: Any) -> None:
    """``qc_reference.json`` beside the best checkpoint (:mod:`pipeline.qc.model_reference`); a failure is a
    warning: the model stands, its predictions then get QC from their uncertainty only."""
    from pipeline.qc.model_reference import write_model_reference

    try:
        datalist = Path(parser.get_parsed_content("datalist_file"))
        path = write_model_reference(bundle, checkpoint, datalist)
        logger.info("QC reference of the training data and the fitted temperature: %s", path)
    except Exception as error:  # the trained model must survive a reference that cannot be built
        logger.warning("no QC reference written for %s: %s", checkpoint, error)


def _read_back_run(result: TrainResult, journal_dir: Path) -> None:
    """Fill the MLflow run id, the per-class validation metrics at the best epoch and what is still unsynced,
    from the run's journal on disk (no request to a tracking server that may be gone)."""
    from pipeline.tracking.journal import open_journal

    if not (journal_dir / "journal.jsonl").is_file():
        return
    journal = open_journal(journal_dir)
    result.run_id = journal.state.get("run_id")
    result.unsynced = journal.describe_pending()
    for key, history in sorted(journal.metric_histories().items()):
        if key.startswith("val_dice_"):
            at_best = [m.value for m in history if m.step == result.best_epoch]
            if at_best:
                result.best_per_class[key.removeprefix("val_dice_")] = at_best[-1]
