"""The planner sized to the budget: reasons that carry the measured numbers, narrowest width first, a refusal
naming the minimum budget, the same plan under CPU load, recorded measurements replayed by ``--profile``."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.planning import plan as plan_module
from pipeline.planning.compute import ComputeBudget, StepTiming
from pipeline.planning.plan import PlanError, make_plan
from pipeline.planning.profile import ProfileError, StepProfile
from pipeline.planning.sizing import BUDGET_USE, MIN_STEPS
from tests.planning_fixtures import fake_fingerprint, step_timing

COUNTS = {"training": 128, "validation": 32}


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _fingerprint(shape=(35, 50, 36)):
    return fake_fingerprint([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], list(shape))


def _table_timer(table: dict[int, float], timed: list[int]):
    def timer(name, args, batch_shape, out_channels, budget, *, regions=False):
        timed.append(args["channels"][0])
        return step_timing(table[args["channels"][0]])

    return timer


@pytest.mark.parametrize(
    ("table", "budget_s", "base", "timed", "wording"),
    [
        ({8: 0.02, 16: 0.05, 32: 0.1}, 1800.0, 32, [8, 16, 32], "the widest of [8, 16, 32]"),
        ({8: 0.2, 16: 0.5, 32: 5.0}, 1800.0, 16, [8, 16, 32], "base width 32 would leave"),
        ({8: 7.0, 16: 8.0, 32: 9.0}, 1800.0, 8, [8], "leaves only"),  # one timing, not three
    ],
)
def test_width_reason_carries_the_measured_numbers(table, budget_s, base, timed, wording):
    seen: list[int] = []
    plan = make_plan(_fingerprint(), ComputeBudget("cpu", budget_s), counts=COUNTS, timer=_table_timer(table, seen))
    assert seen == timed and plan["network"]["args"]["channels"][0] == base
    trials = plan["network"]["width_trials"]
    (kept,) = [t for t in trials if t.get("chosen")]
    reason = plan["reasons"]["width"]
    assert wording in reason and f"base width {base}" in reason
    assert f"{kept['step_s']:g} s step" in reason and str(kept["steps_in_budget"]) in reason
    if kept["steps_in_budget"] >= MIN_STEPS:
        assert f"at least {MIN_STEPS}" in reason and plan["notes"] == []
    else:  # the plan is kept, and says what budget would give it enough steps
        assert f"only {kept['steps_in_budget']} steps" in reason
        assert "about 1500 are needed" in plan["notes"][0] and "--time-budget" in plan["notes"][0]


def test_a_budget_without_room_for_one_epoch_is_refused_with_a_minimum_that_holds():
    """The issue's case: a 90 s budget and an epoch of 1,539 s. The minimum it names does plan."""
    timer = _table_timer({8: 19.7, 16: 40.0, 32: 80.0}, [])
    with pytest.raises(PlanError, match=r"a 90 s budget cannot hold one epoch: 64 steps of") as refused:
        make_plan(_fingerprint(), ComputeBudget("cpu", 90.0), counts=COUNTS, timer=timer)
    minimum = re.search(r"minimum budget is --time-budget (\S+)", str(refused.value)).group(1)
    from pipeline.core.duration import parse_duration

    plan = make_plan(_fingerprint(), ComputeBudget("cpu", parse_duration(minimum)), counts=COUNTS, timer=timer)
    assert plan["training"]["max_epochs"] == 1 and plan["notes"]


@pytest.mark.parametrize(("threads", "clock", "step_s"), [(1, "process_cpu", 0.7071), (2, "process_cpu", 0.3536),
                                                          (2, "wall", 0.5)])  # fmt: skip
def test_step_cost_is_cpu_seconds_per_training_thread_in_bins(threads, clock, step_s):
    """1.4 CPU s on one thread, 0.5 s wall: CPU per thread (GPU: wall), on a power of 2^(1/4)."""
    timing = StepTiming(cpu_s=0.74, wall_s=0.52, threads=threads, repeats=4, clock=clock)
    assert timing.step_s == pytest.approx(step_s, rel=1e-3)
    assert StepTiming(cpu_s=0.72, wall_s=3.0, threads=threads, repeats=4, clock=clock).step_s == timing.step_s or (
        clock == "wall"
    )


def _busy(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


@pytest.mark.slow
def test_the_same_plan_under_cpu_load():
    """Planned quiet, then with a busy loop on every core: the same network and schedule."""
    fingerprint, counts = _fingerprint((24, 24, 24)), {"training": 4, "validation": 1}
    probe = make_plan(fingerprint, ComputeBudget("cpu", 60.0, threads=1), counts=counts)["training"]
    # one and a half epochs: a step cost off by a whole bin (19 %) still plans one epoch
    budget = ComputeBudget("cpu", 1.5 * (probe["estimated_epoch_s"] + probe["estimated_validation_s"]) / BUDGET_USE, 1)
    quiet = make_plan(fingerprint, budget, counts=counts)
    busy = _busy(os.cpu_count() or 2)
    try:
        loaded = make_plan(fingerprint, budget, counts=counts)
    finally:
        for process in busy:
            process.kill()
            process.wait()
    schedule = ("batch_size", "steps_per_epoch", "max_epochs", "val_interval")
    assert loaded["network"]["args"] == quiet["network"]["args"]
    assert {k: loaded["training"][k] for k in schedule} == {k: quiet["training"][k] for k in schedule}
    cpu = [p["network"]["width_trials"][0]["timing"]["cpu_s"] for p in (quiet, loaded)]
    assert 0.75 < cpu[1] / cpu[0] < 1.33  # the CPU time of a step, unlike its wall time, ignores the load
    assert loaded["measurement"]["clock"] == "process_cpu" and loaded["measurement"]["threads"] == 1


def _datalist(root) -> str:
    """Three tiny MR cases, 2 training and 1 validation."""
    rng = np.random.default_rng(0)
    entries = []
    for i in range(3):
        label = np.zeros((20, 22, 18), np.uint8)
        label[5:15, 6:16, 4:14] = 1
        for key, data in (("image", rng.normal(size=label.shape).astype(np.float32) + label), ("label", label)):
            nib.save(nib.Nifti1Image(data, np.eye(4)), root / f"{key}{i}.nii.gz")
        entries.append({"case": f"case{i}", **{k: str(root / f"{k}{i}.nii.gz") for k in ("image", "label")}})
    content = {"channels": {"image": "MR"}, "labels": {"0": "background", "1": "organ"}, "training": entries[:2],
               "validation": entries[2:], "test": []}  # fmt: skip
    (root / "dataset.json").write_text(json.dumps(content))
    return str(root / "dataset.json")


def test_cli_plan_reports_progress_and_replays_its_profile(tmp_path, caplog):
    from pipeline.cli import main

    caplog.set_level(logging.INFO)
    args = ["plan", _datalist(tmp_path), "--time-budget", "10m", "--threads", "1"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert "fingerprinting 2 training case(s)" in caplog.text and "timing res_unet base width 8" in caplog.text
    first = json.loads((tmp_path / "a" / "configs" / "plan.json").read_text())
    assert first["measurement"]["replayed_from"] is None
    caplog.clear()
    profile = tmp_path / "a" / "configs" / "plan.json"
    assert main([*args, "--out", str(tmp_path / "b"), "--profile", str(profile)]) == 0
    assert "timings replayed from" in caplog.text
    second = json.loads((tmp_path / "b" / "configs" / "plan.json").read_text())
    assert second["measurement"].pop("replayed_from") == str(profile)
    first["measurement"].pop("replayed_from")
    assert second == first


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("{not json", "not a plan.json"),
        (json.dumps({"network": {"name": "res_unet"}}), "not a plan.json with network.width_trials"),
        (json.dumps({"network": {"width_trials": []}}), "width_trials is empty"),
    ],
)
def test_bad_profiles_name_the_file(tmp_path, content, message):
    path = tmp_path / "plan.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ProfileError, match=f"profile {re.escape(str(path))}.*{message}"):
        StepProfile.read(path)


def test_a_profile_of_another_dataset_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(plan_module, "measure_step", lambda *a, **k: step_timing(0.05))
    plan = make_plan(_fingerprint(), ComputeBudget("cpu", 600.0), counts=COUNTS)
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    profile = StepProfile.read(tmp_path / "plan.json")
    with pytest.raises(ProfileError, match=r"plan.json has no measurement of res_unet .* batch \[2, 1, 24, 24, 24\]"):
        make_plan(_fingerprint((24, 24, 24)), ComputeBudget("cpu", 600.0), counts=COUNTS, timer=profile)
