"""Plan reproducibility under CPU load: the planner's step cost (one-thread process CPU time, binned) against the
wall-clock timing it replaced, quiet and with a busy-loop process on every core, on the hippocampus set.

    python benchmarks/bench_plan_load.py --work /tmp/plan-load --budget 30m --threads 2

The dataset is imported (``clinseg import``, seed 0) and its training split fingerprinted once; then, for each
condition (quiet, loaded), the plan is made twice with the same fingerprint and budget: once with the product's
timer (:func:`pipeline.planning.compute.measure_step`) and once with the reference timer below (the wall time of
a step with ``--threads`` torch threads, fastest of 4 after a warm-up: the planner before issue 24). Prints and
writes ``WORK/results.json``: per width the step seconds, then the plan's width, epochs and validation interval.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import torch
from monai.losses import DiceCELoss

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import networks  # noqa: E402
from pipeline.core.datalist import read_datalist  # noqa: E402
from pipeline.core.duration import parse_duration  # noqa: E402
from pipeline.datasets.importer import import_dataset  # noqa: E402
from pipeline.planning.compute import ComputeBudget, StepTiming, measure_step  # noqa: E402
from pipeline.planning.fingerprint import dataset_fingerprint  # noqa: E402
from pipeline.planning.plan import PlanError, make_plan  # noqa: E402

SOURCE = REPO.parent / "shared" / "data" / "hippocampus"


def wall_step(
    network_name: str,
    network_args: Mapping[str, Any],
    batch_shape: Sequence[int],
    out_channels: int,
    budget: ComputeBudget,
    *,
    regions: bool = False,
) -> StepTiming:
    """The reference: wall seconds of a step on ``budget.threads`` threads, fastest of 4 after a warm-up."""
    torch.set_num_threads(budget.threads)
    net = networks.build_network(network_name, **network_args)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    loss = DiceCELoss(to_onehot_y=True, softmax=True)
    x = torch.randn(*batch_shape)
    y = torch.randint(0, out_channels, (batch_shape[0], 1, *batch_shape[2:]))
    walls, cpus = [], []
    for _ in range(5):
        start, start_cpu = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        loss(net(x), y).backward()
        optimizer.step()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
    return StepTiming(min(cpus[1:]), min(walls[1:]), budget.threads, 4, clock="wall")


def plan_once(fingerprint: dict, counts: dict, budget: ComputeBudget, timer: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        plan = make_plan(fingerprint, budget, counts=counts, timer=timer)
    except PlanError as refused:  # the budget could not hold one epoch at the measured step
        return {"seconds": round(time.perf_counter() - started, 1), "refused": str(refused)}
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "widths": {
            t["base_width"]: {"step_s": t["step_s"], "cpu_s": t["timing"]["cpu_s"], "wall_s": t["timing"]["wall_s"]}
            for t in plan["network"]["width_trials"]
        },
        "base_width": plan["network"]["args"]["channels"][0],
        "max_epochs": plan["training"]["max_epochs"],
        "val_interval": plan["training"]["val_interval"],
        "reason": plan["reasons"]["width"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/plan-load"))
    parser.add_argument("--budget", default="30m")
    parser.add_argument("--threads", type=int, default=2, help="training threads (the reference times with them)")
    parser.add_argument("--max-cases", type=int, default=32, help="training cases fingerprinted")
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 2, help="busy-loop processes when loaded")
    args = parser.parse_args()
    datalist = args.work / "hippo" / "dataset.json"
    if not datalist.is_file():
        import_dataset(SOURCE, datalist.parent)
    content = read_datalist(datalist)
    counts = {split: len(content.get(split) or []) for split in ("training", "validation", "test")}
    fingerprint = dataset_fingerprint(datalist, "training", max_cases=args.max_cases)
    budget = ComputeBudget("cpu", parse_duration(args.budget), args.threads)
    results: dict[str, Any] = {"date": date.today().isoformat(), "budget": args.budget, "threads": args.threads,
                               "counts": counts, "busy": args.busy}  # fmt: skip
    for condition in ("quiet", "loaded"):
        count = args.busy if condition == "loaded" else 0
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
        try:
            results[condition] = {
                "cpu (product)": plan_once(fingerprint, counts, budget, measure_step),
                "wall (reference)": plan_once(fingerprint, counts, budget, wall_step),
            }
        finally:
            for process in busy:
                process.kill()
                process.wait()
        print(condition, json.dumps(results[condition], indent=1), flush=True)
    for timer in ("cpu (product)", "wall (reference)"):
        quiet, loaded = results["quiet"][timer], results["loaded"][timer]
        results.setdefault("loaded_over_quiet", {})[timer] = {
            str(w): round(loaded["widths"][w]["step_s"] / quiet["widths"][w]["step_s"], 3)
            for w in quiet.get("widths", {}) if w in loaded.get("widths", {})
        }
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results["loaded_over_quiet"], indent=1))


if __name__ == "__main__":
    main()
