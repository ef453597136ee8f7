"""The time-based stop: ``--time-budget`` parsing, the stop decision on a fake clock, and a budgeted bundle run."""

from __future__ import annotations

from types import SimpleNamespace

import mlflow
import pytest
import torch
from ignite.engine import Engine

from pipeline.core.duration import format_duration, parse_duration
from pipeline.training.time_budget import TimeBudgetStop


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90.0), ("30m", 1800.0), ("1.5h", 5400.0), ("45", 45.0), (" 2H ", 7200.0), (".5m", 30.0)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "30 min", "-5m", "0s", "1h30m", "abc", "1.5d"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"), [(5400, "1.5h"), (1800, "30m"), (90, "1.5m"), (45, "45s"), (100, "100s")]
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_cli_parses_time_budget():
    from pipeline.cli import build_parser

    args = build_parser().parse_args(["train", "bundles/x", "--time-budget", "1.5h"])
    assert args.time_budget == 5400.0
    assert build_parser().parse_args(["train", "bundles/x"]).time_budget is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "bundles/x", "--time-budget", "soon"])


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _engine(epoch: int, max_epochs: int = 10) -> SimpleNamespace:
    engine = SimpleNamespace(state=SimpleNamespace(epoch=epoch, max_epochs=max_epochs), terminated=False)
    engine.terminate = lambda: setattr(engine, "terminated", True)
    return engine


@pytest.mark.parametrize(
    ("budget", "epoch_lengths", "stopped_after"),
    [
        (100.0, [30, 30, 30, 30], 3),  # 90 s used + 30 s > 100 s: stop after 3
        (120.0, [30, 30, 30, 30], 4),  # 4 fit exactly (120 s); stop before a 5th
        (85.0, [40, 20, 20], 2),  # the mean (30 s), not the last epoch (20 s): 60 + 30 > 85
        (10.0, [30], 1),  # the first epoch always runs
        (1000.0, [30] * 10, None),  # max_epochs reached first: no stop reason
    ],
)
def test_stop_decision_from_mean_epoch_time(budget, epoch_lengths, stopped_after):
    clock = FakeClock()
    handler = TimeBudgetStop(budget, clock=clock)
    engine = _engine(epoch=0)
    handler.start(engine)
    for length in epoch_lengths:
        engine.state.epoch += 1
        clock.now += length
        handler(engine)
        if engine.terminated:
            break
    if stopped_after is None:
        assert not engine.terminated and not hasattr(engine.state, "stop_reason")
    else:
        assert engine.terminated and engine.state.epoch == stopped_after
        assert engine.state.stop_reason == f"time budget {format_duration(budget)}"


def test_budget_counts_from_start_of_this_invocation():
    """A resumed run (trainer state at epoch 7) gets the whole budget anew, timed by its own epochs."""
    clock = FakeClock()
    handler = TimeBudgetStop(100.0, clock=clock)
    engine = _engine(epoch=7)
    clock.now += 5000  # time before the run started (a previous invocation, data caching) does not count
    handler.start(engine)
    for _ in range(2):
        engine.state.epoch += 1
        clock.now += 40
        handler(engine)
    assert engine.terminated and engine.state.epoch == 9


@pytest.mark.parametrize("budget", [None, 0])
def test_no_budget_attaches_nothing(budget):
    engine = Engine(lambda e, b: None)
    TimeBudgetStop(budget).attach(engine)
    assert not engine._event_handlers or not any(engine._event_handlers.values())


def test_negative_budget_is_an_error():
    with pytest.raises(ValueError, match="time budget must be >= 0"):
        TimeBudgetStop(-1)


def test_terminate_ends_an_ignite_run_with_completed():
    """On a real engine: the stop fires after the epoch's other handlers, then COMPLETED (final checkpoint, MLflow)."""
    from ignite.engine import Events

    clock = FakeClock()
    engine = Engine(lambda e, b: setattr(clock, "now", clock.now + 10))
    seen: list[str] = []
    TimeBudgetStop(25.0, clock=clock).attach(engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append(f"saved {e.state.epoch}"))
    engine.add_event_handler(Events.COMPLETED, lambda e: seen.append("completed"))
    engine.run([0], max_epochs=10)
    assert engine.state.epoch == 2 and seen == ["saved 1", "saved 2", "completed"]


@pytest.mark.parametrize(
    ("epoch_s", "max_epochs", "expected_epochs"), [(10, 10, 10), (20, 10, 5), (40, 10, 2), (1, 10, 10), (1, 1, 1)]
)
def test_polynomial_decay_is_fitted_to_the_measured_epochs(epoch_s, max_epochs, expected_epochs):
    """Planned for ``max_epochs`` in 100 s; slower epochs shrink the run and the decay still ends at 0, faster
    ones never extend it past ``max_epochs`` (a 1-epoch smoke run in a long budget stays 1 epoch)."""
    from ignite.engine import Events

    clock = FakeClock()
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=max_epochs, power=0.9)
    started = clock.now

    def step(engine: Engine, batch: int) -> None:
        optimizer.step()
        clock.now += epoch_s

    engine = Engine(step)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: scheduler.step())
    lrs: list[float] = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: lrs.append(optimizer.param_groups[0]["lr"]))
    TimeBudgetStop(100.0, lr_scheduler=scheduler, clock=clock).attach(engine)
    engine.run([0], max_epochs=max_epochs)
    assert engine.state.epoch == expected_epochs and clock.now - started <= 100.0
    assert lrs[-1] == pytest.approx(0.0, abs=1e-9) and all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert scheduler.total_iters == expected_epochs


def test_a_scheduler_without_a_horizon_is_refused():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
    with pytest.raises(ValueError, match="ReduceLROnPlateau has no total_iters"):
        TimeBudgetStop(100.0, lr_scheduler=plateau)


@pytest.mark.slow
def test_budgeted_bundle_run_stops_early_finishes_and_resumes(tiny_dataset, tmp_path):
    from pipeline.core.checkpoint import load_checkpoint
    from pipeline.training.train import train_bundle
    from tests.conftest import BUNDLES

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    small = {"val_interval": 1, "batch_size": 2, "samples_per_volume": 1, "roi_size": [32, 32, 16]}
    kwargs = {
        "dataset_dir": tiny_dataset.parent,
        "ckpt_dir": tmp_path / "ckpt",
        "tracking_uri": uri,
        "max_epochs": 20,
    }
    bundle = BUNDLES / "ct_organ_resunet3d"
    # 10 ms are overrun by any step: stop after the first, mid-epoch, however fast the machine; still a model
    first = train_bundle(bundle, time_budget_s=0.01, overrides=small, **kwargs)
    assert first.epochs == 1 and first.stop_reason == "time budget 0.01s"
    assert "training stopped on the time budget 0.01s after 1 epoch (max_epochs 20)" in first.summary()
    ckpt = tmp_path / "ckpt"
    assert (ckpt / "model.pt").is_file() and not (ckpt / "checkpoint_epoch=1.pt").exists()
    assert load_checkpoint(ckpt / "model_final.pt")["trainer"]["iteration"] == 1  # 1 of the epoch's 2 steps
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and "val_mean_dice" in run.data.metrics

    unbudgeted = {k: v for k, v in kwargs.items() if k != "max_epochs"}
    whole = train_bundle(bundle, max_epochs=1, overrides=small, **unbudgeted)
    assert whole.epochs == 1 and whole.stop_reason == "" and (ckpt / "checkpoint_epoch=1.pt").is_file()
    resumed = train_bundle(bundle, time_budget_s=0.01, resume=True, overrides=small, **kwargs)
    assert resumed.epochs == 2 and resumed.stop_reason == "time budget 0.01s"
    assert resumed.run_id == whole.run_id and client.get_run(whole.run_id).info.status == "FINISHED"
    assert load_checkpoint(ckpt / "model_final.pt")["trainer"]["iteration"] == 3  # epoch 1, then 1 step

    unlimited = train_bundle(bundle, max_epochs=3, resume=True, overrides=small, **unbudgeted)
    assert unlimited.epochs == 3 and unlimited.stop_reason == "" and "time budget" not in unlimited.summary()


STEP_S, STEPS, VALIDATION_S, SAVE_S = 1.0, 10, 5.0, 0.5


def _budgeted_run(budget_s: float, slow_from: int = 0, slow_step_s: float = STEP_S) -> tuple[Engine, float]:
    """A trainer on a fake clock: 10 steps of 1 s an epoch (``slow_step_s`` from iteration ``slow_from`` on: other
    work arrives), each epoch validated (5 s) and saved (0.5 s); a stop within an epoch validates once more and
    saves (``FinalValidation`` and the final checkpoint). Returns the engine and the seconds used."""
    from ignite.engine import Events

    clock = FakeClock()
    started = clock.now

    def step(e: Engine, batch: int) -> None:
        clock.now += slow_step_s if slow_from and e.state.iteration > slow_from else STEP_S

    engine = Engine(step)
    validated = []

    def validate(e):
        clock.now += VALIDATION_S
        validated.append(e.state.epoch)

    engine.add_event_handler(Events.EPOCH_COMPLETED, validate)  # ValidationHandler comes first
    TimeBudgetStop(budget_s, clock=clock).attach(engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: setattr(clock, "now", clock.now + SAVE_S))

    def final(e):
        if not validated or validated[-1] != e.state.epoch:
            validate(e)
        clock.now += SAVE_S

    engine.add_event_handler(Events.COMPLETED, final)
    engine.run(list(range(STEPS)), max_epochs=20)
    return engine, clock.now - started


@pytest.mark.parametrize(
    ("budget_s", "slow_from", "slow_step_s", "iteration"),
    [
        (60.0, 0, STEP_S, 30),  # epochs of 15.5 s: a 4th would overrun, stop after 3 (between epochs)
        (95.0, 0, STEP_S, 60),
        (60.0, 20, 3.0, 28),  # steps slow down 3x in epoch 3: stopped within it, room kept for its end
        (60.0, 20, 8.0, 23),
        (95.0, 35, 4.0, 40),  # slowed in epoch 4: its mean epoch leaves no room for a 5th
    ],
)
def test_stop_within_an_epoch_keeps_the_end_inside_the_budget(budget_s, slow_from, slow_step_s, iteration):
    """The hard stop: training, the last validation and the final save end within one step of the budget."""
    engine, used = _budgeted_run(budget_s, slow_from, slow_step_s)
    assert engine.state.stop_reason == f"time budget {format_duration(budget_s)}"
    assert engine.state.iteration == iteration
    assert used <= budget_s + slow_step_s


def test_a_budget_shorter_than_an_epoch_stops_after_a_step():
    """Before any epoch has ended its validation time is unknown: the steps stop inside the budget, then the
    weights are validated once and saved (the only overrun, and the run still has a model)."""
    engine, used = _budgeted_run(7.5)
    assert engine.state.epoch == 1 and engine.state.iteration == 7
    assert used == pytest.approx(7 * STEP_S + VALIDATION_S + SAVE_S)


@pytest.mark.parametrize(("max_epochs", "interval", "validated"), [(5, 2, [2, 4, 5]), (4, 2, [2, 4]), (3, 10, [3])])
def test_final_validation_scores_the_last_epoch_once(max_epochs, interval, validated):
    """An end off the interval (or before the first validation) is validated once more; an end on it is not."""
    from ignite.engine import Events
    from monai.engines import SupervisedEvaluator
    from monai.handlers import ValidationHandler

    from pipeline.training.handlers import FinalValidation

    batch = [{"image": torch.zeros(1, 1, 2, 2), "label": torch.zeros(1, 1, 2, 2)}]
    validator = SupervisedEvaluator(torch.device("cpu"), batch, torch.nn.Identity())
    runs: list[int] = []
    validator.add_event_handler(Events.COMPLETED, lambda e: runs.append(e.state.epoch))
    trainer = Engine(lambda e, b: None)
    ValidationHandler(interval=interval, validator=validator, epoch_level=True).attach(trainer)
    FinalValidation(validator).attach(trainer)
    trainer.run([0], max_epochs=max_epochs)
    assert runs == validated
