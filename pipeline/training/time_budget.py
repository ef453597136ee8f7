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

    Args:
        budget_s: the budget in seconds; ``None`` or ``0`` disables the stop.
        clock: seconds from an arbitrary origin (``time.monotonic``; tests pass a fake).
    """

    def __init__(self, budget_s: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        if budget_s is not None and budget_s < 0:
            raise ValueError(f"time budget must be >= 0 seconds (0 or null: no budget), got {budget_s}")
        self.budget_s = float(budget_s) if budget_s else None
        self.clock = clock
        self._start = 0.0
        self._epochs = 0

    def attach(self, engine: Engine) -> None:
        if self.budget_s:
            engine.add_event_handler(Events.STARTED, self.start)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def start(self, engine: Engine) -> None:
        self._start, self._epochs = self.clock(), 0

    def __call__(self, engine: Engine) -> None:
        self._epochs += 1
        elapsed = self.clock() - self._start
        mean_epoch = elapsed / self._epochs
        stop = elapsed + mean_epoch > self.budget_s
        if idist.get_world_size() > 1:
            stop = bool(idist.broadcast(torch.tensor(int(stop), device=idist.device()), src=0).item())
        if not stop or engine.state.epoch >= engine.state.max_epochs:
            return
        budget = format_duration(self.budget_s)
        engine.state.stop_reason = f"time budget {budget}"
        logger.info(
            "time budget %s: stopping after epoch %d/%d (%.0f s used, %.1f s per epoch)",
            budget, engine.state.epoch, engine.state.max_epochs, elapsed, mean_epoch,
        )  # fmt: skip
        engine.terminate()
