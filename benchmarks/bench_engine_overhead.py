"""Engine overhead: iterations/s of MONAI's SupervisedTrainer as the 3D bundle configures it vs a plain PyTorch loop.

Both train the bundle's ResUNet (``network_args`` of ``ct_organ_resunet3d``) with DiceCE and AdamW on the same
cached in-memory list of random ``(1, 64, 64, 32)`` patches, same batch size and number of iterations. "Ours"
is ``SupervisedTrainer`` with the handlers the bundle runs every iteration or epoch: the train-loss ``Average``
key metric, ``ResilientMLFlowHandler`` on SQLite (loss and lr per iteration, metrics per epoch), the progress
bar, ``EpochSeedHandler``, ``GradientClipHandler`` (off, as shipped), ``EpochSummaryHandler`` and a
``TrainingCheckpointSaver`` every epoch, fed by MONAI's ``DataLoader``. "Plain" is a bare loop over
``torch.utils.data.DataLoader``. Repetitions are interleaved (order alternating); the first pair is a warm-up. Wall-clock and process CPU
time are both reported: on a machine shared with other jobs, CPU time is less disturbed by waiting for a core.
``--profile`` adds ignite's ``HandlersTimeProfiler`` breakdown of one extra run of ours. Prints markdown rows.

    python benchmarks/bench_engine_overhead.py --reps 5
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

BATCH = 2
PATCH = (64, 64, 32)
NETWORK_ARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [8, 16, 32, 64]}


def make_data(count: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``count`` cached samples: image ``(1, 64, 64, 32)`` float32 in [0, 1], label ``(1, 64, 64, 32)`` in {0, 1, 2}."""
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.rand(1, *PATCH, generator=g),
            "label": torch.randint(0, 3, (1, *PATCH), generator=g).float(),
        }
        for _ in range(count)
    ]


def build(state: dict) -> tuple[torch.nn.Module, torch.nn.Module, torch.optim.Optimizer]:
    """The bundle's network (weights from ``state``), loss and optimizer."""
    from monai.losses import DiceCELoss

    import networks

    net = networks.build_network("res_unet", **NETWORK_ARGS)
    net.load_state_dict(state)
    loss = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    return net, loss, torch.optim.AdamW(net.parameters(), lr=0.003, weight_decay=1e-5)


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = _clock()
    return wall - start[0], cpu - start[1]


def run_plain(data: list[dict], state: dict, epochs: int) -> tuple[float, float]:
    """(wall, process CPU) seconds for ``epochs`` epochs of a bare PyTorch loop."""
    net, loss_fn, opt = build(state)
    loader = torch.utils.data.DataLoader(data, batch_size=BATCH, shuffle=True)
    net.train()
    t0 = _clock()
    for _ in range(epochs):
        for batch in loader:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(batch["image"]), batch["label"])
            loss.backward()
            opt.step()
    return _since(t0)


def make_ours(data: list[dict], state: dict, epochs: int, work: Path, rep: int):
    """``SupervisedTrainer`` wired as ``bundles/ct_organ_resunet3d/configs/train.yaml`` wires it (no validation)."""
    from ignite.handlers import ProgressBar
    from ignite.metrics import Average
    from monai.data import DataLoader
    from monai.engines import SupervisedTrainer
    from monai.handlers import from_engine

    from pipeline.core.checkpoint import NetworkSpec
    from pipeline.training.checkpoint_handlers import TrainingCheckpointSaver
    from pipeline.training.handlers import EpochSeedHandler, EpochSummaryHandler, GradientClipHandler
    from pipeline.tracking.mlflow_handler import ResilientMLFlowHandler

    net, loss_fn, opt = build(state)
    spec = NetworkSpec("res_unet", NETWORK_ARGS)
    handlers = [
        EpochSeedHandler(seed=0),
        GradientClipHandler(max_norm=0),
        EpochSummaryHandler(),
        ProgressBar(persist=False),
        TrainingCheckpointSaver(
            save_dir=str(work / f"ckpt{rep}"),
            save_dict={"model": net, "network": spec, "optimizer": opt},
            save_final=True,
            final_filename="model_final.pt",
            save_interval=1,
            n_saved=2,
            epoch_level=True,
        ),
        ResilientMLFlowHandler(
            journal_dir=str(work / f"ckpt{rep}" / "mlflow_journal"),
            tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
            experiment_name="bench",
            run_name=f"ours-{rep}",
            tag_name="train_loss_iter",
            output_transform=from_engine(["loss"], first=True),
            experiment_param={"network": "res_unet", "batch_size": str(BATCH)},
            close_on_complete=True,
        ),
    ]
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=DataLoader(data, batch_size=BATCH, shuffle=True),
        network=net,
        optimizer=opt,
        loss_function=loss_fn,
        key_train_metric={"train_loss": Average(output_transform=from_engine(["loss"], first=True))},
        train_handlers=handlers,
    )


def run_ours(data: list[dict], state: dict, epochs: int, work: Path, rep: int) -> tuple[float, float]:
    """(wall, process CPU) seconds of ``trainer.run()`` (MLflow run start and close included)."""
    trainer = make_ours(data, state, epochs, work, rep)
    t0 = _clock()
    trainer.run()
    return _since(t0)


def profile_ours(data: list[dict], state: dict, epochs: int, work: Path) -> str:
    """ignite's per-handler time breakdown of one run of ours, as text."""
    from ignite.handlers.time_profilers import HandlersTimeProfiler

    trainer = make_ours(data, state, epochs, work, rep=-1)
    profiler = HandlersTimeProfiler()
    profiler.attach(trainer)
    trainer.run()
    rows = profiler.get_results()
    return "\n".join(f"    {str(r[0])[:60]:60s} {r[1]!s:22s} total {r[2]}" for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reps", type=int, default=5, help="measured repetitions of each loop (after a warm-up)"
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--iters-per-epoch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="print ignite's per-handler timing of one run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    import networks

    torch.manual_seed(0)
    state = networks.build_network("res_unet", **NETWORK_ARGS).state_dict()
    data = make_data(args.iters_per_epoch * BATCH)
    iterations = args.epochs * args.iters_per_epoch
    runs: dict[str, list[tuple[float, float]]] = {"plain": [], "ours": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for rep in range(args.reps + 1):
            order = ("plain", "ours") if rep % 2 == 0 else ("ours", "plain")
            for which in order:
                if which == "plain":
                    seconds = run_plain(data, state, args.epochs)
                else:
                    seconds = run_ours(data, state, args.epochs, work, rep)
                if rep > 0:
                    runs[which].append(seconds)
        profile = profile_ours(data, state, args.epochs, work) if args.profile else ""
    print("| loop | clock | iterations/run | it/s median | it/s all | ratio ours/plain (median of pairs) |")
    print("|---|---|---|---|---|---|")
    notes = []
    for clock, index in (("wall", 0), ("process CPU", 1)):
        speeds = {k: [iterations / s[index] for s in v] for k, v in runs.items()}
        ratios = [o / p for o, p in zip(speeds["ours"], speeds["plain"])]
        for which, name in (
            ("plain", "plain PyTorch (reference)"),
            ("ours", "SupervisedTrainer + bundle handlers"),
        ):
            ratio = "1.00" if which == "plain" else f"{statistics.median(ratios):.3f}"
            print(
                f"| {name} | {clock} | {iterations} | {statistics.median(speeds[which]):.3f} | "
                f"{', '.join(f'{v:.3f}' for v in speeds[which])} | {ratio} |"
            )
        notes.append(f"{clock} pairwise ratios ours/plain: {', '.join(f'{r:.3f}' for r in ratios)}")
    print("\n" + "\n".join(notes))
    if profile:
        print("\nHandlersTimeProfiler (one run of ours):\n" + profile)


if __name__ == "__main__":
    main()
