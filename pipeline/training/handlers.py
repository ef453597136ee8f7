"""Small ignite handlers MONAI does not provide: a one-line summary per epoch, per-epoch reseeding."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from monai.transforms import Randomizable
from monai.utils import set_determinism

logger = logging.getLogger(__name__)


class EpochSummaryHandler:
    """Logs ``epoch 5/60 | loss 0.4321 | lr 3.0e-03 | val_mean_dice 0.8123 (organ 0.95, lesion 0.67) | 12.3 s``.

    Args:
        validator: the evaluator run by ``ValidationHandler``; its metrics are shown on epochs it ran.
        loss_metric: name of the trainer metric holding the epoch-mean loss.
    """

    def __init__(self, validator: Engine | None = None, loss_metric: str = "train_loss") -> None:
        self.validator = validator
        self.loss_metric = loss_metric
        self._epoch_start = 0.0
        self._last_val_iteration: int | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._start)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._summary)

    def _start(self, engine: Engine) -> None:
        self._epoch_start = time.perf_counter()

    def _summary(self, engine: Engine) -> None:
        parts = [f"epoch {engine.state.epoch}/{engine.state.max_epochs}"]
        loss = engine.state.metrics.get(self.loss_metric)
        if loss is not None:
            parts.append(f"loss {float(loss):.4f}")
        optimizer = getattr(engine, "optimizer", None)
        if optimizer is not None:
            parts.append(f"lr {optimizer.param_groups[0]['lr']:.1e}")
        if self.validator is not None and self.validator.state.epoch == engine.state.epoch:
            metrics = self.validator.state.metrics
            key = self.validator.state.key_metric_name
            if key in metrics:
                per_class = ", ".join(
                    f"{name.removeprefix('val_dice_')} {float(v):.3f}"
                    for name, v in metrics.items()
                    if name.startswith("val_dice_") and not isinstance(v, dict)
                )
                best = self.validator.state.best_metric
                parts.append(f"{key} {float(metrics[key]):.4f}" + (f" ({per_class})" if per_class else ""))
                parts.append(f"best {best:.4f} @ epoch {self.validator.state.best_metric_epoch}")
        parts.append(f"{time.perf_counter() - self._epoch_start:.1f} s")
        logger.info(" | ".join(parts))


class EpochSeedHandler:
    """Reseeds torch, numpy, Python and the random transforms at every epoch start from ``(seed, epoch)``.

    Every epoch is then a pure function of the seed and the restored state, so a run killed mid-epoch and
    resumed from its last epoch checkpoint replays the interrupted epoch exactly as an uninterrupted run.

    Args:
        seed: the run's base seed.
        transform: the training transform chain (``Compose``) whose random transforms are reseeded.
    """

    def __init__(self, seed: int, transform: Randomizable | None = None) -> None:
        self.seed = int(seed)
        self.transform = transform

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        epoch_seed = (self.seed * 1_000_003 + engine.state.epoch) % (2**32)
        set_determinism(seed=epoch_seed)
        if self.transform is not None:
            self.transform.set_random_state(seed=epoch_seed)


def _steps_this_iteration(engine: Engine) -> bool:
    """Whether ``SupervisedTrainer`` calls ``optimizer.step()`` at the current iteration (gradient accumulation)."""
    acc = getattr(engine, "accumulation_steps", 1)
    if acc <= 1:
        return True
    epoch_length = engine.state.epoch_length
    if epoch_length is None:
        return engine.state.iteration % acc == 0
    local = (engine.state.iteration - 1) % epoch_length + 1
    return local % acc == 0 or local == epoch_length


class GradientClipHandler:
    """Clips the global gradient norm after backward and before the optimizer step (MONAI has no such option).

    Runs only on iterations where the trainer steps, so accumulated gradients are clipped once, after AMP's
    scaler has unscaled them.

    Args:
        max_norm: maximum L2 norm of all gradients; ``0`` or ``None`` disables clipping.
    """

    def __init__(self, max_norm: float | None) -> None:
        if max_norm is not None and max_norm < 0:
            raise ValueError(f"max_norm must be >= 0 (0 disables clipping), got {max_norm}")
        self.max_norm = max_norm

    def attach(self, engine: Engine) -> None:
        if self.max_norm:
            engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not _steps_this_iteration(engine):
            return
        if getattr(engine, "amp", False) and getattr(engine, "scaler", None) is not None:
            engine.scaler.unscale_(engine.optimizer)
        torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.max_norm)


class EpochLrSchedulerHandler:
    """Steps an epoch-level LR scheduler after each training epoch.

    ``ReduceLROnPlateau`` is stepped with the validator's key metric, and only on epochs where validation ran;
    any other scheduler (e.g. MONAI's ``WarmupCosineSchedule``) is stepped every epoch. MONAI's
    ``LrScheduleHandler`` steps on every event of one engine, which cannot express both.

    Args:
        lr_scheduler: the scheduler of the trainer's optimizer.
        validator: the evaluator run by ``ValidationHandler`` (attach this handler after it).
    """

    def __init__(self, lr_scheduler: Any, validator: Engine | None = None) -> None:
        self.lr_scheduler = lr_scheduler
        self.validator = validator

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if isinstance(self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            validator = self.validator
            if validator is None or validator.state.epoch != engine.state.epoch:
                return
            self.lr_scheduler.step(float(validator.state.metrics[validator.state.key_metric_name]))
        else:
            self.lr_scheduler.step()


class FinalValidation:
    """Validates once more when training ends on an epoch that was not validated.

    A time budget (``TimeBudgetStop``, which may also shorten ``max_epochs``) or a ``max_epochs`` off the
    validation interval can end training after the last validation, or before the first: the last epochs'
    weights would never be scored and the best checkpoint (``model.pt``, written by the validator's handlers)
    might not exist at all. Attach it right after MONAI's ``ValidationHandler``, before the checkpoint
    savers and the MLflow handler, whose ``COMPLETED`` handlers then see the final validation.

    Args:
        validator: the evaluator ``ValidationHandler`` runs.
    """

    def __init__(self, validator: Engine) -> None:
        self.validator = validator

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if self.validator.state.epoch != engine.state.epoch:
            logger.info("final validation after epoch %d", engine.state.epoch)
            self.validator.run(engine.state.epoch)


class ValidationEarlyStopping:
    """Stops training after ``patience`` validations without improvement of the validator's key metric.

    Attached to the trainer (after ``ValidationHandler``) rather than to the validator like MONAI's
    ``EarlyStopHandler``, which needs the trainer object: in a bundle that is a reference cycle.

    Args:
        validator: the evaluator run by ``ValidationHandler``.
        patience: validations without improvement before stopping; ``0`` disables early stopping.
        min_delta: smallest increase that counts as an improvement.
    """

    def __init__(self, validator: Engine, patience: int = 0, min_delta: float = 0.0) -> None:
        if patience < 0:
            raise ValueError(f"patience must be >= 0 (0 disables early stopping), got {patience}")
        self.validator = validator
        self.patience = patience
        self.min_delta = min_delta
        self._best = -float("inf")
        self._bad = 0

    def attach(self, engine: Engine) -> None:
        if self.patience:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if self.validator.state.epoch != engine.state.epoch:
            return
        score = float(self.validator.state.metrics[self.validator.state.key_metric_name])
        if score > self._best + self.min_delta:
            self._best, self._bad = score, 0
            return
        self._bad += 1
        if self._bad >= self.patience:
            logger.info("early stopping at epoch %d: no improvement in %d validations", engine.state.epoch, self._bad)
            engine.state.stop_reason = "early stopping"
            engine.terminate()
