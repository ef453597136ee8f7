"""A time-based stop: end training cleanly inside a wall-clock budget, between epochs when it can, within a step
when it must."""

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
    """Ends training inside a wall-clock budget: a hard stop within one training step, the end's work counted.

    The clock starts when the trainer starts (after a resumed run's checkpoint is loaded: the budget is per
    invocation). Two checks, both by wall time:

    - **between epochs** (attach after ``ValidationHandler``, so an epoch's length includes its validation): stop
      when one more epoch of the mean length so far would overrun the budget;
    - **after every step**: stop when one more step (the mean so far) plus the epoch-end work would overrun it.
      The epoch-end work is the longest gap seen from an epoch's last step to the next epoch's start
      (validation, checkpoints, handlers): after a stop, ``FinalValidation`` validates the last weights and the
      final checkpoint is written, so that time is kept free. Before the first epoch has ended it is unknown, so
      a budget shorter than one epoch ends after its step, plus one validation and the final save.

    Stopping uses ``engine.terminate()``: the final checkpoint and the MLflow run end as on a run that reached
    ``max_epochs``; a stop within an epoch leaves no ``checkpoint_epoch`` file for it, so a resumed run repeats
    that epoch. The reason is kept in ``engine.state.stop_reason``. Under torch.distributed, rank 0's decision is
    broadcast so all ranks stop together.

    With ``lr_scheduler`` (an epoch-stepped scheduler with ``total_iters``, e.g. ``PolynomialLR``), the schedule
    also follows the measured epoch length: after each epoch ``max_epochs`` and the scheduler's ``total_iters``
    become the epochs that fit in the budget at the mean length so far (never more than the planned
    ``max_epochs``), so a decay to 0 ends inside the budget however far the planned epoch time was off (a plan
    is sized on CPU time, the same on a quiet and a loaded machine; the budget is wall time, which load stretches).

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
        self._mark = 0.0  # the last step's end (or the epoch's start)
        self._steps = 0
        self._step_total = 0.0
        self._end_cost = 0.0  # the longest epoch end seen: validation, checkpoints, handlers

    def attach(self, engine: Engine) -> None:
        if self.budget_s:
            engine.add_event_handler(Events.STARTED, self.start)
            engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.step_completed)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def start(self, engine: Engine) -> None:
        self._start, self._epochs = self.clock(), 0
        self._mark, self._steps, self._step_total, self._end_cost = self._start, 0, 0.0, 0.0
        self._planned_epochs = engine.state.max_epochs

    def epoch_started(self, engine: Engine) -> None:
        now = self.clock()
        if self._steps:  # since the previous epoch's last step: its validation, checkpoints and handlers
            self._end_cost = max(self._end_cost, now - self._mark)
        self._mark = now

    def step_completed(self, engine: Engine) -> None:
        """Stop when one more step of the mean length, and the end's work, would overrun the budget (the last step
        of an epoch is left to the epoch's end, which :meth:`__call__` judges after validation)."""
        now = self.clock()
        self._steps += 1
        self._step_total += now - self._mark
        self._mark = now
        length = engine.state.epoch_length
        if length and engine.state.iteration % length == 0:
            return
        elapsed = now - self._start
        stop = elapsed + self._next_step_s() > self.budget_s
        if idist.get_world_size() > 1:
            stop = bool(idist.broadcast(torch.tensor([int(stop)], device=idist.device()), src=0).item())
        if not stop:
            return
        self._stop(
            engine,
            "time budget %s: stopping within epoch %d/%d after iteration %d (%.1f s used, %.2f s a step, "
            "%.1f s kept for validation and the final save)",
            engine.state.epoch, engine.state.max_epochs, engine.state.iteration, elapsed,
            self._step_total / self._steps, self._end_cost,
        )  # fmt: skip

    def _next_step_s(self) -> float:
        """Seconds one more step and the end's work take: the mean step so far plus the longest epoch end."""
        return self._step_total / max(self._steps, 1) + self._end_cost

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
        self._stop(
            engine, "time budget %s: stopping after epoch %d/%d (%.0f s used, %.1f s per epoch)",
            engine.state.epoch, engine.state.max_epochs, elapsed, mean_epoch,
        )  # fmt: skip

    def _stop(self, engine: Engine, message: str, *args: object) -> None:
        budget = format_duration(self.budget_s)
        engine.state.stop_reason = f"time budget {budget}"
        logger.info(message, budget, *args)
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
