"""Training-side checkpoint handlers on ignite/MONAI: save the trainer with the model, keep the best model's
ranking across resumes, resume from the newest readable epoch checkpoint.

The checkpoint format itself is :mod:`pipeline.core.checkpoint`, which imports no ignite.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from monai.handlers import CheckpointSaver

from pipeline.core.checkpoint import CheckpointError, epoch_checkpoints, load_checkpoint

logger = logging.getLogger(__name__)


class TrainingCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` that also stores the engine it is attached to (epoch, iteration).

    A bundle cannot list the trainer in its own handler's ``save_dict`` (a circular reference), so the
    engine is added when the handler is attached; ignite's ``Checkpoint`` keeps a reference to the dict.
    """

    def attach(self, engine: Engine) -> None:
        self.save_dict.setdefault("trainer", engine)
        super().attach(engine)


class EngineBestMetric:
    """An evaluator's best key-metric value and epoch as checkpointable state."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def state_dict(self) -> dict[str, Any]:
        return {"best_metric": float(self.engine.state.best_metric), "best_metric_epoch": int(self.engine.state.best_metric_epoch)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.engine.state.best_metric = state["best_metric"]
        self.engine.state.best_metric_epoch = state["best_metric_epoch"]


class BestCheckpointSaver(CheckpointSaver):
    """``CheckpointSaver`` of the best model that also stores the validator's best metric and its own ranking,
    so that after a resume a worse model never replaces the best one."""

    def __init__(self, save_dir: str, save_dict: dict, **kwargs: Any) -> None:
        kwargs.setdefault("save_key_metric", True)
        kwargs.setdefault("key_metric_save_state", True)
        super().__init__(save_dir, save_dict, **kwargs)

    def attach(self, engine: Engine) -> None:
        self.save_dict.setdefault("validation", EngineBestMetric(engine))
        super().attach(engine)


class ResumeHandler:
    """Restores a training run from the newest readable ``checkpoint_epoch=N.pt`` of ``ckpt_dir`` when started.

    MONAI's ``CheckpointSaver`` does not write atomically, so a run killed while saving can leave a truncated
    newest file: older checkpoints are tried next (keep ``n_saved >= 2``). Attach it before other handlers.

    Args:
        ckpt_dir: the run's checkpoint folder.
        load_dict: objects to restore, e.g. ``{"model": net, "optimizer": opt, "lr_scheduler": sched}``;
            the trainer itself is added when attached.
        enabled: resume only when True (bundle knob ``resume``).
        best_saver: the validator's :class:`BestCheckpointSaver`, whose ranking is restored from ``model.pt``.
        validator: the evaluator whose best metric and epoch are restored from ``model.pt``.
    """

    def __init__(
        self,
        ckpt_dir: str | Path,
        load_dict: dict[str, Any],
        enabled: bool = True,
        best_saver: CheckpointSaver | None = None,
        validator: Engine | None = None,
        best_filename: str = "model.pt",
    ) -> None:
        self.ckpt_dir = Path(ckpt_dir)
        self.load_dict = dict(load_dict)
        self.enabled = enabled
        self.best_saver = best_saver
        self.validator = validator
        self.best_filename = best_filename

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if not self.enabled:
            return
        for path in epoch_checkpoints(self.ckpt_dir):
            try:
                checkpoint = load_checkpoint(path, map_location=getattr(engine.state, "device", None) or "cpu")
            except CheckpointError as e:
                logger.warning("skipping unreadable checkpoint: %s", e)
                continue
            max_epochs = engine.state.max_epochs
            Checkpoint.load_objects(to_load={**self.load_dict, "trainer": engine}, checkpoint=checkpoint)
            engine.state.max_epochs = max_epochs  # the configured length wins: a resumed run may be extended
            self._restore_best()
            logger.info("resumed from %s at epoch %d (iteration %d)", path, engine.state.epoch, engine.state.iteration)
            return
        logger.info("resume asked but no checkpoint in %s: starting from scratch", self.ckpt_dir)

    def _restore_best(self) -> None:
        best_path = self.ckpt_dir / self.best_filename
        if not best_path.is_file():
            return
        best = load_checkpoint(best_path)
        if self.best_saver is not None and "checkpointer" in best:
            self.best_saver.load_state_dict(best["checkpointer"])
        if self.validator is not None and "validation" in best:
            EngineBestMetric(self.validator).load_state_dict(best["validation"])
