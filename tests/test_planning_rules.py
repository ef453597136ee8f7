"""clinseg plan's rules and plan on fingerprints with known answers: spacing, patch, depth, normalisation,
width against a (stubbed) measured step, schedule inside the budget."""

from __future__ import annotations

import math

import pytest

from pipeline.planning import plan as plan_module
from pipeline.planning.compute import ComputeBudget
from pipeline.planning.plan import PlanError, make_plan
from pipeline.planning.rules import (
    normalisation_for,
    patch_and_levels,
    prefers_2d,
    resampled_shape,
    target_spacing,
)
from pipeline.planning.sizing import MIN_STEPS, MIN_STEPS_PER_EPOCH
from tests.planning_fixtures import fake_fingerprint, step_timing


def _fingerprint(spacing, p10, shape, modality="MR", nonzero=1.0, labels=("a", "b")):
    return fake_fingerprint(spacing, p10, shape, {"image": modality}, nonzero=nonzero, labels=labels)


@pytest.mark.parametrize(
    "median, p10, expected",
    [
        ([1.0, 1.0, 1.0], [0.9, 0.9, 0.9], [1.0, 1.0, 1.0]),  # isotropic: the median
        ([0.8, 0.8, 2.0], [0.7, 0.7, 1.5], [0.8, 0.8, 2.0]),  # ratio 2.5: still the median
        (
            [0.7, 0.7, 5.0],
            [0.6, 0.6, 3.0],
            [0.7, 0.7, 3.0],
        ),  # anisotropic: coarse axis from its 10th percentile
    ],
)
def test_target_spacing_follows_the_anisotropy_rule(median, p10, expected):
    assert target_spacing(_fingerprint(median, p10, [64, 64, 64])) == pytest.approx(expected)


def test_resampled_shape_scales_by_spacing():
    fp = _fingerprint([0.5, 0.5, 2.0], [0.5, 0.5, 2.0], [200, 100, 30])
    assert resampled_shape(fp, [1.0, 1.0, 1.0]) == [100, 50, 60]


@pytest.mark.parametrize(
    "shape, budget",
    [
        ([35, 50, 36], 96_000),
        ([512, 512, 120], 128**3),
        ([256, 256, 40], 64**3),
        ([400, 300], 160 * 160),
        ([9, 9, 9], 10**6),
    ],
)
def test_patch_fits_the_budget_and_pools_evenly(shape, budget):
    patch, levels = patch_and_levels(shape, budget)
    step = 2 ** (levels - 1)
    assert len(patch) == len(shape)
    assert math.prod(patch) <= budget
    assert all(p % step == 0 for p in patch)
    assert all(p // step >= 2 for p in patch)
    assert 3 <= levels <= 5


def test_patch_covers_a_small_image_whole():
    patch, levels = patch_and_levels([35, 50, 36], 96_000)
    assert patch == [40, 56, 40] and levels == 4  # nnU-Net's own hippocampus patch


@pytest.mark.parametrize(
    "spacing, shape, expected",
    [
        ([1.0, 1.0, 1.0], [64, 64, 64], False),
        ([0.7, 0.7, 6.0], [300, 300, 25], True),
        ([1.0, 1.0, 1.0], [64, 64, 8], True),
    ],
)
def test_prefers_2d_for_thick_or_short_volumes(spacing, shape, expected):
    assert prefers_2d(spacing, shape) is expected


def test_ct_normalisation_clips_to_foreground_percentiles_then_z_scores():
    step = normalisation_for("ct", "CT", {"p00_5": -100.0, "p99_5": 200.0, "mean": 40.0, "std": 20.0}, 1.0)
    assert step["_target_"] == "ScaleIntensityRanged" and step["clip"] is True
    assert (step["a_min"], step["a_max"]) == (-100.0, 200.0)
    assert (step["b_min"], step["b_max"]) == pytest.approx(((-100 - 40) / 20, (200 - 40) / 20))


@pytest.mark.parametrize(
    "modality, nonzero, at_minimum, masked",
    [("MR", 0.4, 0.6, True), ("MR", 0.99, 0.001, False), ("OT", 0.5, 0.5, True)],
)
def test_mr_and_other_channels_are_z_scored_per_image(modality, nonzero, at_minimum, masked):
    step = normalisation_for("t1", modality, {}, nonzero, at_minimum)
    assert step == {
        "_target_": "NormalizeIntensityd",
        "keys": ["t1"],
        "nonzero": masked,
        "channel_wise": True,
    }


def test_a_constant_non_zero_background_is_left_out_of_the_z_score():
    step = normalisation_for("flair", "MR", {}, nonzero_fraction=1.0, background_fraction=0.8)
    assert step == {"_target_": "transforms.intensity.foreground_zscore.ForegroundZScored", "keys": ["flair"]}


@pytest.fixture
def stub_step(monkeypatch):
    """measure_step replaced by a table of seconds per base width (no timing in tests)."""
    table: dict[int, float] = {}

    def fake(name, args, batch_shape, out_channels, budget, *, regions=False):
        widths = args.get("channels") or args.get("features")
        return step_timing(table[widths[0]])

    monkeypatch.setattr(plan_module, "measure_step", fake)
    return table


@pytest.mark.parametrize(
    "seconds, expected_base",
    [({32: 0.1, 16: 0.05, 8: 0.02}, 32), ({32: 5.0, 16: 0.5, 8: 0.2}, 16), ({32: 9.0, 16: 8.0, 8: 7.0}, 8)],
)
def test_width_is_the_widest_that_leaves_enough_steps(stub_step, seconds, expected_base):
    stub_step.update(seconds)
    fp = _fingerprint([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [35, 50, 36])
    plan = make_plan(fp, ComputeBudget("cpu", 1800.0), counts={"training": 128, "validation": 32})
    assert plan["network"]["args"]["channels"][0] == expected_base
    (trial,) = [t for t in plan["network"]["width_trials"] if t.get("chosen")]
    assert trial["base_width"] == expected_base
    assert trial["steps_in_budget"] >= MIN_STEPS or expected_base == 8


@pytest.mark.parametrize("budget_s", [300.0, 1800.0, 7200.0])
def test_schedule_fits_the_budget(stub_step, budget_s):
    stub_step.update({32: 0.4, 16: 0.2, 8: 0.1})
    fp = _fingerprint([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [35, 50, 36])
    plan = make_plan(fp, ComputeBudget("cpu", budget_s), counts={"training": 100, "validation": 20})
    t = plan["training"]
    planned = t["max_epochs"] * (t["estimated_epoch_s"] + t["estimated_validation_s"] / t["val_interval"])
    assert planned <= budget_s
    assert t["time_budget_s"] == budget_s and t["steps_per_epoch"] == 50
    assert 1 <= t["val_interval"] <= t["max_epochs"]


def test_a_few_cases_still_get_long_epochs(stub_step):
    stub_step.update({32: 0.1, 16: 0.1, 8: 0.1})
    fp = _fingerprint([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [35, 50, 36])
    plan = make_plan(fp, ComputeBudget("cpu", 300.0), counts={"training": 3, "validation": 1})
    assert plan["training"]["steps_per_epoch"] == MIN_STEPS_PER_EPOCH  # not ceil(3 * samples / batch)


def test_ct_and_mr_sets_get_their_own_normalisation_and_grid(stub_step):
    stub_step.update({32: 0.1, 16: 0.1, 8: 0.1})
    ct = make_plan(
        _fingerprint([0.8, 0.8, 5.0], [0.7, 0.7, 2.5], [512, 512, 60], modality="CT"),
        ComputeBudget("cpu", 600.0),
        counts={"training": 8, "validation": 2},
        dims="3d",
    )
    mr = make_plan(
        _fingerprint([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [35, 50, 36], modality="MR", nonzero=0.3),
        ComputeBudget("cpu", 600.0),
        counts={"training": 8, "validation": 2},
    )
    assert ct["spacing"] == pytest.approx([0.8, 0.8, 2.5])
    assert ct["normalise"]["image"]["_target_"] == "ScaleIntensityRanged"
    assert (
        ct["augmentation"]["rotate_deg"] < mr["augmentation"]["rotate_deg"]
    )  # anisotropic: gentler rotation
    assert mr["spacing"] == [1.0, 1.0, 1.0] and mr["spatial_dims"] == 3
    assert mr["normalise"]["image"] == {
        "_target_": "NormalizeIntensityd",
        "keys": ["image"],
        "nonzero": True,
        "channel_wise": True,
    }
    assert mr["class_names"] == ["a", "b"] and mr["sampling"]["ratios"] == [1, 1, 1]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dims": "4d"}, "dims must be"),
        ({"network": "fusion_seg_net"}, "no `channels`, `features` or `init_features`"),
        ({"counts": {"training": 4, "validation": 0}}, "needs training and validation"),
    ],
)
def test_bad_plan_requests_are_named(stub_step, kwargs, message):
    stub_step.update({32: 0.1, 16: 0.1, 8: 0.1})
    args = {"counts": {"training": 4, "validation": 1}, **kwargs}
    with pytest.raises(PlanError, match=message):
        make_plan(_fingerprint([1.0] * 3, [1.0] * 3, [32, 32, 32]), ComputeBudget("cpu", 60.0), **args)


def test_budget_rejects_impossible_devices_and_budgets():
    with pytest.raises(ValueError, match="positive"):
        ComputeBudget.detect(0)
    with pytest.raises(ValueError, match="cpu' or 'cuda"):
        ComputeBudget.detect(60, device="tpu")


@pytest.mark.parametrize("cases, noted", [([], False), (["p1", "p2"], True)])
def test_channels_on_different_grids_are_noted_with_clinseg_register(stub_step, cases, noted):
    stub_step.update({32: 0.1, 16: 0.1, 8: 0.1})
    fp = {**_fingerprint([1.0] * 3, [1.0] * 3, [32, 32, 32]), "channel_grids_differ": cases}
    plan = make_plan(fp, ComputeBudget("cpu", 600.0), counts={"training": 4, "validation": 1})
    assert len(plan["notes"]) == int(noted)
    if noted:
        assert "2 case(s) (p1, p2)" in plan["notes"][0] and "clinseg register" in plan["notes"][0]
