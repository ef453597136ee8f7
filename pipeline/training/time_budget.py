"""A time-based stop: end training cleanly before an epoch that would overrun a wall-clock budget."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events

from pipeline.core.duration import format_duration

logger = logging.getLogger(__name__)


class TimeBudgetStop:
    """Terminates the trainer after an epoch when one more epoch of the mean length so far would exceed the budget.

    The clock starts when the trainer starts (after a resumed run's checkpoint is loaded: the budget is per
    invocation) and each epoch's length counts everything attached before this handler, validation included, so
    attach it after ``ValidationHandler``. Stopping uses ``engine.terminate()``: the epoch's checkpoint, the final
    checkpoint and the MLflow run end as on a run that reached ``max_epochs``. The reason is kept in
    ``engine.state.stop_reason``. Under torch.distributed, rank 0's decision is broadcast so all ranks stop together.

    With ``lr_scheduler`` (an epoch-stepped scheduler with ``total_iters``, e.g. ``PolynomialLR``), the schedule
    also follows the measured epoch length: after each epoch ``max_epochs`` and the scheduler's ``total_iters``
    become the epochs that fit in the budget at the mean length so far (never more than the planned
    ``max_epochs``), so a decay to 0 ends inside the budget however far the planned epoch time was off (a
    plan's estimate misses data loading and validation costs it cannot see; a shared machine is slower).

    Args:
        budget_s: the budget in seconds; ``None`` or ``0`` disables the stop.
        lr_scheduler: scheduler whose horizon is fitted to the budget, or ``None`` (stop only).
        clock: seconds from an arbitrary origin (``time.monotonic``; tests pass a fake).
    """

    def __init__(
        self,
        budget_s: float | None,
        lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if budget_s is not None and budget_s < 0:
            raise ValueError(f"time budget must be >= 0 seconds (0 or null: no budget), got {budget_s}")
        if lr_scheduler is not None and not hasattr(lr_scheduler, "total_iters"):
            raise ValueError(
                f"TimeBudgetStop: {type(lr_scheduler).__name__} has no total_iters to fit to the budget "
                "(use PolynomialLR or LinearLR, or leave lr_scheduler unset)"
            )
        self.budget_s = float(budget_s) if budget_s else None
        self.lr_scheduler = lr_scheduler
        self.clock = clock
        self._start = 0.0
        self._epochs = 0
        self._planned_epochs = 0

    def attach(self, engine: Engine) -> None:
        if self.budget_s:
            engine.add_event_handler(Events.STARTED, self.start)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def start(self, engine: Engine) -> None:
        self._start, self._epochs = self.clock(), 0
        self._planned_epochs = engine.state.max_epochs

    def __call__(self, engine: Engine) -> None:
        self._epochs += 1
        elapsed = self.clock() - self._start
        mean_epoch = elapsed / self._epochs
        stop = elapsed + mean_epoch > self.budget_s
        fitting = 0  # epochs that fit in the budget: only a schedule to refit needs them
        if self.lr_scheduler is not None and mean_epoch > 0:
            fitting = engine.state.epoch + int(max(self.budget_s - elapsed, 0.0) // mean_epoch)
        if idist.get_world_size() > 1:
            decided = torch.tensor([int(stop), fitting], device=idist.device())
            stop, fitting = (int(v) for v in idist.broadcast(decided, src=0).tolist())
        if self.lr_scheduler is not None and not stop:
            self._fit_schedule(engine, min(max(fitting, engine.state.epoch + 1), self._planned_epochs))
        if not stop or engine.state.epoch >= engine.state.max_epochs:
            return
        budget = format_duration(self.budget_s)
        engine.state.stop_reason = f"time budget {budget}"
        logger.info(
            "time budget %s: stopping after epoch %d/%d (%.0f s used, %.1f s per epoch)",
            budget, engine.state.epoch, engine.state.max_epochs, elapsed, mean_epoch,
        )  # fmt: skip
        engine.terminate()

    def _fit_schedule(self, engine: Engine, epochs: int) -> None:
        """Set ``max_epochs`` and the scheduler's horizon to ``epochs`` (the scheduler's decay continues from its
        current rate and reaches its end value at the new last epoch)."""
        if epochs == engine.state.max_epochs:
            return
        logger.info(
            "time budget %s: schedule fitted to the measured epoch length, %d epochs instead of %d",
            format_duration(self.budget_s), epochs, engine.state.max_epochs,
        )  # fmt: skip
        engine.state.max_epochs = epochs
        self.lr_scheduler.total_iters = epochs
