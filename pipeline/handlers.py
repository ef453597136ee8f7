"""Small ignite handlers MONAI does not provide: a one-line summary per epoch, per-epoch reseeding."""

from __future__ import annotations

import logging
import time

from ignite.engine import Engine, Events
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
                    f"{name.split('_')[-1]} {float(v):.3f}"
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
