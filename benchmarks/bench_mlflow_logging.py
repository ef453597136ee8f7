"""MLflow logging overhead per training epoch of the tiny bundle, on SQLite: one ``log_metric`` call per metric
versus one batched ``log_batch`` call per event (what MONAI's MLFlowHandler, and ours, do).

An epoch of the shipped bundle is timed on tiny synthetic data (6 patients, 48x44x16); then the metrics an epoch
logs (loss and lr per iteration, loss and per-class validation metrics per epoch) are logged both ways to a
fresh SQLite store and timed. Prints markdown rows.

    python benchmarks/bench_mlflow_logging.py --reps 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def epoch_seconds(work: Path, epochs: int) -> tuple[float, int]:
    """Median epoch time (s) of the bundle on tiny data and its iterations per epoch."""
    from pipeline.core.bundle import Bundle
    from pipeline.synthetic.phantoms import synthesize

    dataset = synthesize(work / "data", cases=6, seed=3, shape=(48, 44, 16), splits=(0.5, 0.2, 0.3))
    bundle = Bundle.at(Path(__file__).resolve().parents[1] / "bundles" / "ct_organ_resunet3d")
    times: list[float] = []
    workflow = bundle.workflow(
        "train", dataset_dir=str(dataset.parent), ckpt_dir=str(work / "ckpt"), max_epochs=epochs, val_interval=1,
        roi_size=[32, 32, 16], samples_per_volume=1, tracking_uri=f"sqlite:///{work / 'train.db'}",
    )  # fmt: skip
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    from ignite.engine import Events

    start = {}
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: start.__setitem__("t", time.perf_counter()))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: times.append(time.perf_counter() - start["t"]))
    workflow.run()
    workflow.finalize()
    return statistics.median(times[1:] or times), trainer.state.epoch_length


def logging_seconds(work: Path, iterations: int, epoch_metrics: int, reps: int) -> tuple[float, float]:
    """Median seconds to log one epoch's metrics: (log_metric per metric, log_batch per event)."""
    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{work / 'bench.db'}")
    exp = client.create_experiment("bench", artifact_location=(work / "mlruns").as_uri())
    run_id = client.create_run(exp).info.run_id
    single, batched = [], []
    for rep in range(reps + 1):
        now = int(time.time() * 1000)
        events = [[("train_loss", 0.5), ("lr", 1e-3)] for _ in range(iterations)]
        events.append([(f"val_metric_{i}", 0.1 * i) for i in range(epoch_metrics)])
        t0 = time.perf_counter()
        for step, event in enumerate(events):
            for key, value in event:
                client.log_metric(run_id, key, value, timestamp=now, step=rep * 1000 + step)
        t1 = time.perf_counter()
        for step, event in enumerate(events):
            metrics = [Metric(key, value, now, rep * 1000 + step) for key, value in event]
            client.log_batch(run_id, metrics=metrics)
        t2 = time.perf_counter()
        if rep:  # the first round warms up the store
            single.append(t1 - t0)
            batched.append(t2 - t1)
    return statistics.median(single), statistics.median(batched)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        epoch, iterations = epoch_seconds(work, args.epochs)
        epoch_metrics = 4  # train_loss (epoch mean), val_mean_dice, val_dice_organ, val_dice_lesion
        single, batched = logging_seconds(work, iterations, epoch_metrics, args.reps)
    n_metrics = 2 * iterations + epoch_metrics
    print(f"epoch of the tiny bundle: {epoch:.3f} s, {iterations} iterations, {n_metrics} metric values logged")
    print("| logging | calls/epoch | ms/epoch | ms/metric | fraction of epoch | ratio vs log_metric |")
    print("|---|---|---|---|---|---|")
    print(f"| log_metric per metric | {n_metrics} | {single * 1e3:.1f} | {single * 1e3 / n_metrics:.2f} "
          f"| {single / epoch:.2%} | 1.00 |")  # fmt: skip
    print(f"| log_batch per event | {iterations + 1} | {batched * 1e3:.1f} | {batched * 1e3 / n_metrics:.2f} "
          f"| {batched / epoch:.2%} | {batched / single:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
