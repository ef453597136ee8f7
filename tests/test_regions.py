"""Region-based labels: label map -> region masks -> label map round trips, nnU-Net's innermost-region rule,
declaration checks (transforms.labels.regions, pipeline.datasets.regions) and per-region evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from pipeline.datasets.regions import parse_regions, resolve_regions, validate_regions
from pipeline.evaluation.evaluate import case_metrics
from pipeline.inference.restore import RestoreToInputd
from transforms.labels.regions import (
    LabelToRegions,
    LabelToRegionsd,
    RegionsToLabels,
    RegionsToLabelsd,
    region_class_order,
)

BRATS = [[1, 2, 3, 4], [1, 3, 4], [4]]  # whole tumour, core, enhancing
NNUNET = [[1, 2, 3], [2, 3], [3]]  # nnU-Net's BraTS example (regions_class_order [1, 2, 3])
DISJOINT = [[1], [2]]


def _labels(shape, values, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).choice(values, size=(1, *shape))).to(torch.uint8)


@pytest.mark.parametrize(
    "regions, order", [(BRATS, [2, 1, 4]), (NNUNET, [1, 2, 3]), (DISJOINT, [1, 2]), ([[2, 1]], [1])]
)
def test_class_order_is_the_label_no_later_region_holds(regions, order):
    assert region_class_order(regions) == order


@pytest.mark.parametrize("regions", [[[4], [1, 3, 4], [1, 2, 3, 4]], [[1, 2], [1, 2]], [[0, 1]], [[]], []])
def test_regions_inside_out_duplicated_or_empty_are_refused(regions):
    with pytest.raises(ValueError, match="region"):
        region_class_order(regions)


@pytest.mark.parametrize(
    "regions, values, expected_map",
    [
        (BRATS, [0, 1, 2, 3, 4], {0: 0, 1: 1, 2: 2, 3: 1, 4: 4}),  # 1 and 3 share every region: both -> 1
        (NNUNET, [0, 1, 2, 3], {0: 0, 1: 1, 2: 2, 3: 3}),
        (DISJOINT, [0, 1, 2], {0: 0, 1: 1, 2: 2}),
    ],
)
@pytest.mark.parametrize("shape", [(5, 6, 7), (9, 4)])
@pytest.mark.parametrize("kind", ["torch", "numpy", "meta"])
def test_label_to_regions_and_back(regions, values, expected_map, shape, kind):
    label = _labels(shape, values)
    data = {"torch": label, "numpy": label.numpy(), "meta": MetaTensor(label, affine=torch.eye(4) * 2)}[kind]
    masks = LabelToRegions(regions)(data)
    assert masks.shape == (len(regions), *shape) and masks.dtype == torch.float32
    for r, members in enumerate(regions):
        np.testing.assert_array_equal(masks[r].numpy() > 0, np.isin(label[0].numpy(), members))
    back = RegionsToLabels(regions)(masks)
    assert back.shape == (1, *shape) and back.dtype == torch.uint8
    expected = np.vectorize(expected_map.get)(label.numpy())
    np.testing.assert_array_equal(np.asarray(back), expected)
    if kind == "meta":  # the grid travels with the masks
        assert isinstance(masks, MetaTensor) and torch.equal(masks.affine, data.affine)


@pytest.mark.parametrize(
    "probs, label",
    [
        ([0.9, 0.8, 0.7], 4),  # every region: the innermost wins
        ([0.9, 0.8, 0.2], 1),  # whole and core: core's label
        ([0.9, 0.4, 0.2], 2),  # whole only: edema
        ([0.4, 0.9, 0.9], 4),  # inner regions win even when an outer one is below 0.5 (nnU-Net's rule)
        ([0.5, 0.1, 0.1], 0),  # 0.5 itself is outside
    ],
)
def test_each_voxel_takes_the_innermost_region_above_half(probs, label):
    out = RegionsToLabels(BRATS)(torch.tensor(probs).view(3, 1, 1))
    assert int(out) == label


def test_dictionary_versions_convert_their_keys_and_raise_on_missing_ones():
    label = _labels((4, 5, 6), [0, 1, 2, 4])
    d = LabelToRegionsd("label", BRATS)({"label": label, "image": label.float()})
    assert d["label"].shape == (3, 4, 5, 6) and torch.equal(d["image"], label.float())
    back = RegionsToLabelsd("label", BRATS)(d)["label"]
    np.testing.assert_array_equal(np.asarray(back), label.numpy())
    with pytest.raises(KeyError):
        LabelToRegionsd("seg", BRATS)({"label": label})
    assert "seg" not in LabelToRegionsd("seg", BRATS, allow_missing_keys=True)({"label": label})


@pytest.mark.parametrize("shape", [(2, 4, 4), (4, 5)])
def test_wrong_channel_counts_are_named(shape):
    with pytest.raises(ValueError, match="LabelToRegions: label must be"):
        LabelToRegions(BRATS)(torch.zeros(shape))
    with pytest.raises(ValueError, match=r"RegionsToLabels: expected \(3, ...\)"):
        RegionsToLabels(BRATS)(torch.zeros(shape))


LABELS = {"0": "background", "1": "necrosis", "2": "edema", "3": "non-enhancing", "4": "enhancing"}


def test_parse_keeps_declaration_order():
    spec = "whole_tumour=1,2,3,4; core=1,3,4;enhancing=4;"
    assert list(parse_regions(spec).items()) == [
        ("whole_tumour", [1, 2, 3, 4]),
        ("core", [1, 3, 4]),
        ("enhancing", [4]),
    ]


@pytest.mark.parametrize(
    "spec, match",
    [
        ("whole_tumour", "is not NAME=LABEL"),
        ("=1,2", "is not NAME=LABEL"),
        ("a=1;a=2", "declared twice"),
        ("a=1,x", "integer label values"),
        (";", "no region"),
    ],
)
def test_parse_errors_say_what_is_wrong(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_regions(spec)


@pytest.mark.parametrize(
    "regions, match",
    [
        (
            {"whole_tumour": [1, 2, 5]},
            r"label value\(s\) \[5\] that the dataset's labels \[1, 2, 3, 4\] lack",
        ),
        ({"enhancing": [4], "core": [1, 3, 4]}, "outermost to innermost"),
        ({"core": []}, "must list label values"),
    ],
)
def test_validation_names_the_source_and_the_problem(regions, match):
    with pytest.raises(ValueError, match=match) as err:
        validate_regions(regions, LABELS, "data/dataset.json")
    assert "data/dataset.json" in str(err.value)


@pytest.mark.parametrize(
    "spec, content, expected",
    [
        (None, {"labels": LABELS}, None),
        (
            None,
            {"labels": LABELS, "regions": {"wt": [1, 2, 3, 4], "et": [4]}},
            {"wt": [1, 2, 3, 4], "et": [4]},
        ),
        ("none", {"labels": LABELS, "regions": {"wt": [1, 2, 3, 4]}}, None),
        (
            "wt=4,3,2,1;core=1,3,4",
            {"labels": LABELS, "regions": {"et": [4]}},
            {"wt": [1, 2, 3, 4], "core": [1, 3, 4]},
        ),
    ],
)
def test_resolve_prefers_the_option_then_the_datalist(spec, content, expected):
    assert resolve_regions(spec, content, "dataset.json") == expected


def test_restore_turns_region_probabilities_into_labels_on_the_input_grid():
    affine = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0]))
    image = MetaTensor(torch.zeros(1, 4, 4, 4), affine=affine)
    image.meta.update(spatial_shape=[8, 8, 8], original_affine=torch.eye(4))
    probs = torch.zeros(3, 4, 4, 4)
    probs[:, 1:3, 1:3, 1:3] = torch.tensor([0.9, 0.8, 0.1]).view(3, 1, 1, 1)  # whole + core: label 1
    probs[0, 0, 0, 0] = 0.9  # whole only: label 2
    for mode in ("linear", "nearest"):
        out = RestoreToInputd("pred", "image", mode=mode, regions=BRATS)({"pred": probs, "image": image})[
            "pred"
        ]
        assert out.shape == (1, 8, 8, 8) and out.dtype == torch.uint8
        assert set(torch.unique(out).tolist()) <= {0, 1, 2}
        assert int(out[0, 4, 4, 4]) == 1 and int(out[0, 0, 0, 0]) == 2 and int(out[0, 7, 7, 7]) == 0
        torch.testing.assert_close(out.affine.double(), torch.eye(4, dtype=torch.float64))


def test_evaluation_scores_each_region_as_the_union_of_its_labels():
    label = torch.zeros(1, 6, 6, 6, dtype=torch.uint8)
    label[0, 1:5, 1:5, 1:5] = 2
    label[0, 2:4, 2:4, 2:4] = 3
    label[0, 2, 2, 2] = 4
    pred = label.clone()
    pred[label == 3] = 1  # necrosis for non-enhancing: the same core, another label
    regions = {"whole_tumour": [1, 2, 3, 4], "core": [1, 3, 4], "enhancing": [4]}
    rows = case_metrics(pred, label, [1.0, 1.0, 1.0], {int(k): v for k, v in LABELS.items() if k != "0"},
                        regions=regions)  # fmt: skip
    assert [(r["label"], r["name"]) for r in rows] == [
        ("1+2+3+4", "whole_tumour"),
        ("1+3+4", "core"),
        ("4", "enhancing"),
    ]
    assert [r["dice"] for r in rows] == pytest.approx([1.0, 1.0, 1.0])
    per_label = case_metrics(pred, label, [1.0, 1.0, 1.0], {int(k): v for k, v in LABELS.items() if k != "0"})
    assert {r["name"]: r["dice"] for r in per_label}["non-enhancing"] == 0.0


class _Predictor:
    """What evaluation reads of a Predictor to pick the structures it scores."""

    def __init__(self, regions):
        self.regions, self.bundle_name = regions, "b"
        self.label_names = {int(k): v for k, v in LABELS.items() if k != "0"}


@pytest.mark.parametrize(
    "bundle_regions, option, expected",
    [
        ({"wt": [1, 2, 3, 4]}, None, {"wt": [1, 2, 3, 4]}),  # a region bundle scores its regions
        ({"wt": [1, 2, 3, 4]}, {}, None),  # --regions none: per label
        (
            {},
            {"core": [1, 3, 4], "et": [4]},
            {"core": [1, 3, 4], "et": [4]},
        ),  # a label bundle scored by regions
        ({}, None, None),
    ],
)
def test_evaluation_scores_the_option_s_regions_else_the_bundle_s(bundle_regions, option, expected):
    from pipeline.evaluation.evaluate import EvaluationOptions, _regions

    assert _regions(_Predictor(bundle_regions), EvaluationOptions(regions=option)) == expected
    with pytest.raises(ValueError, match=r"\[9\]"):
        _regions(_Predictor({}), EvaluationOptions(regions={"x": [9]}))


def test_cli_takes_regions_for_plan_and_evaluate():
    from pipeline.cli import build_parser
    from pipeline.cli.evaluate import regions_option

    parser = build_parser()
    assert parser.parse_args(["plan", "d", "--out", "b", "--regions", "wt=1,2"]).regions == "wt=1,2"
    assert parser.parse_args(["evaluate", "b", "--regions", "none"]).regions == "none"
    assert regions_option("none") == {} and regions_option("wt=1,2;et=2") == {"wt": [1, 2], "et": [2]}
