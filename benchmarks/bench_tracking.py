"""Cost of durable tracking per training iteration: the journaling ``ResilientMLFlowHandler`` vs MONAI's
``MLFlowHandler``, both logging to a fresh SQLite store.

An ignite engine whose step does no work (a constant loss, an SGD optimizer for the lr) runs ``--epochs`` epochs
of ``--iters`` iterations with one handler attached, logging what the bundles log every iteration (loss and lr)
and every epoch (the epoch loss). The reference is MONAI's handler; ours journals every call (fsync'd JSONL
beside the checkpoints) and replays it to the same kind of store. Repetitions are interleaved (order alternating)
after one warm-up pair; the script prints markdown rows: ms per iteration for each and their ratio.

    python benchmarks/bench_tracking.py --reps 5
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch


def run_once(kind: str, work: Path, epochs: int, iters: int) -> float:
    """Seconds per iteration of an engine that does nothing but log, with the ``kind`` handler attached."""
    from ignite.engine import Engine
    from monai.handlers import MLFlowHandler

    from pipeline.tracking.mlflow_handler import ResilientMLFlowHandler

    uri = f"sqlite:///{work / 'mlflow.db'}"
    parameter = torch.nn.Parameter(torch.zeros(1))
    engine = Engine(lambda engine, batch: {"loss": torch.tensor(0.5)})
    engine.optimizer = torch.optim.SGD([parameter], lr=0.01)
    common = dict(
        tracking_uri=uri, experiment_name="bench", run_name=f"{kind}-{work.name}", tag_name="train_loss_iter",
        output_transform=lambda output: output["loss"], close_on_complete=True,
    )  # fmt: skip
    if kind == "ours":
        handler = ResilientMLFlowHandler(journal_dir=str(work / "mlflow_journal"), **common)
    else:
        handler = MLFlowHandler(**common)
    handler.attach(engine)
    start = time.perf_counter()
    engine.run(range(iters), max_epochs=epochs)
    return (time.perf_counter() - start) / (epochs * iters)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--iters", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    times: dict[str, list[float]] = {"monai": [], "ours": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps + 1):  # the first pair warms up imports and SQLite
            order = ("monai", "ours") if rep % 2 == 0 else ("ours", "monai")
            for kind in order:
                work = Path(tmp) / f"{kind}-{rep}"
                work.mkdir()
                seconds = run_once(kind, work, args.epochs, args.iters)
                if rep:
                    times[kind].append(seconds)
    ratios = [o / m for o, m in zip(times["ours"], times["monai"], strict=True)]
    print(f"{args.epochs} epochs x {args.iters} iterations, median of {args.reps} after one warm-up pair\n")
    print("| handler | ms/iteration median | all | ratio vs MONAI (median of pairs) |")
    print("|---|---|---|---|")
    for kind, label in (("monai", "MONAI MLFlowHandler (reference)"), ("ours", "ResilientMLFlowHandler (journal)")):
        values = ", ".join(f"{1000 * t:.1f}" for t in times[kind])
        ratio = "1.00" if kind == "monai" else f"{statistics.median(ratios):.2f}"
        print(f"| {label} | {1000 * statistics.median(times[kind]):.1f} | {values} | {ratio} |")


if __name__ == "__main__":
    main()
