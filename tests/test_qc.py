"""Per-case QC: each check from small built cases, the score and flag, uncertainty from members, temperature
scaling on a built over-confident model, and the reference built from a datalist."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from pipeline.inference.uncertainty import member_labels, summarize_members, temperature_scaled
from pipeline.qc.assess import REVIEW_THRESHOLD, assess_case, combined_score
from pipeline.qc.calibration import expected_calibration_error, fit_temperature
from pipeline.qc.checks import Finding, input_findings, output_findings, severity_of_z, uncertainty_findings
from pipeline.qc.features import geometry_features, image_features, structure_features
from pipeline.qc.reference import build_reference, stats

torch.set_num_threads(1)


def _image(array: np.ndarray, affine: np.ndarray | None = None) -> MetaTensor:
    return MetaTensor(torch.as_tensor(array, dtype=torch.float32)[None], affine=torch.as_tensor(
        np.eye(4) if affine is None else affine, dtype=torch.float64))  # fmt: skip


def _summary(mean: float, std: float, low: float, high: float) -> dict:
    return {"mean": mean, "std": std, "min": low, "max": high, "n": 20}


REFERENCE = {
    "orientations": {"RAS": 20},
    "modalities": {"image": "MR"},
    "spacing": [_summary(1.0, 0.05, 0.9, 1.2)] * 3,
    "fov_mm": [_summary(40.0, 2.0, 36.0, 44.0)] * 3,
    "intensity": {"image": {"p99": _summary(100.0, 5.0, 90.0, 110.0)}},
    "structures": {
        "1": {"name": "organ", "present": 1.0, "volume_ml": stats([2.0, 2.2, 2.4, 1.8], log=True),
              "components": _summary(1, 0, 1, 1), "border_fraction": _summary(0, 0, 0, 0)},
    },  # fmt: skip
}


@pytest.mark.parametrize(
    ("affine", "codes", "spacing"),
    [
        (np.diag([1.0, 2.0, 3.0, 1.0]), "RAS", [1.0, 2.0, 3.0]),
        (np.diag([-1.0, -2.0, 3.0, 1.0]), "LPS", [1.0, 2.0, 3.0]),
        (np.array([[0, 0, 3.0, 0], [2.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]]), "ASR", [3.0, 2.0, 1.0]),
    ],
)
def test_geometry_is_given_in_ras_axis_order(affine, codes, spacing):
    found = geometry_features(_image(np.zeros((4, 5, 6)), affine))
    assert found["orientation"] == codes
    assert found["spacing"] == pytest.approx(spacing)
    assert np.prod(found["fov_mm"]) == pytest.approx(np.prod(spacing) * 4 * 5 * 6)


@pytest.mark.parametrize(
    ("geometry", "check", "words"),
    [
        ({"orientation": "LAS", "spacing": [1.0] * 3, "fov_mm": [40.0] * 3}, "orientation", "orientation LAS"),
        ({"orientation": "RAS", "spacing": [5.0, 1, 1], "fov_mm": [40.0] * 3}, "spacing", "spacing 5 mm along R"),
        ({"orientation": "RAS", "spacing": [1.0] * 3, "fov_mm": [40.0, 18, 40]}, "fov_mm", "field of view 18 mm"),
    ],
)
def test_geometry_outside_the_training_data_is_named(geometry, check, words):
    found = input_findings(REFERENCE, geometry, {}, {})
    assert [f.check for f in found] == [check]
    assert words in found[0].text and found[0].severity >= 0.5


def test_geometry_inside_the_training_range_raises_nothing():
    assert input_findings(REFERENCE, {"orientation": "RAS", "spacing": [1.1] * 3, "fov_mm": [42.0] * 3}, {}, {}) == []


def test_modality_and_intensity_outside_training_are_named():
    geometry = {"orientation": "RAS", "spacing": [1.0] * 3, "fov_mm": [40.0] * 3}
    found = input_findings(REFERENCE, geometry, {"image": {"p99": 130.0}}, {"image": "CT"})
    texts = {f.check: f.text for f in found}
    assert texts["modality"] == "input 'image': modality CT, trained on MR"
    assert "intensity 99th percentile 130 is 6.0 SD above training" in texts["intensity"]
    assert input_findings(REFERENCE, geometry, {"image": {"p99": 104.0}}, {"image": ""}) == []


@pytest.mark.parametrize(
    ("row", "check"),
    [
        ({"volume_ml": 0.0, "components": 0.0, "border_fraction": 0.0}, "empty"),
        ({"volume_ml": 9.0, "components": 1.0, "border_fraction": 0.0}, "volume"),
        ({"volume_ml": 2.1, "components": 4.0, "border_fraction": 0.0}, "components"),
        ({"volume_ml": 2.1, "components": 1.0, "border_fraction": 0.2}, "border"),
    ],
)
def test_each_output_check_names_its_structure(row, check):
    found = output_findings(REFERENCE, {1: row}, {1: "organ"})
    assert [f.check for f in found] == [check]
    assert found[0].text.startswith("organ: ")


def test_a_plausible_output_raises_nothing():
    row = {"volume_ml": 2.1, "components": 1.0, "border_fraction": 0.0}
    assert output_findings(REFERENCE, {1: row}, {1: "organ"}) == []


def test_structure_features_count_volume_components_and_border():
    labels = np.zeros((10, 10, 10), dtype=np.uint8)
    labels[2:4, 2:4, 2:4] = 1  # 8 voxels
    labels[6:8, 6:8, 6:8] = 1  # a second component
    labels[0, 0:3, 0:3] = 2  # on the border
    found = structure_features(labels, [1, 2, 3], voxel_ml=0.5)
    assert found[1] == {"volume_ml": 8.0, "components": 2.0, "border_fraction": 0.0}
    assert found[2]["border_fraction"] == 1.0 and found[3]["volume_ml"] == 0.0


def test_image_features_measure_noise_without_a_scale():
    rng = np.random.default_rng(0)
    smooth = np.tile(np.linspace(0, 100, 20), (20, 20, 1))
    noisy = smooth + rng.normal(0, 20, smooth.shape)
    mask = np.zeros(smooth.shape, dtype=bool)
    mask[5:15, 5:15, 5:15] = True
    quiet, loud = image_features(_image(smooth), mask)[0], image_features(_image(noisy), mask)[0]
    assert loud["roughness"] > 5 * quiet["roughness"]
    scaled = image_features(_image(smooth * 16), mask)[0]
    assert scaled["roughness"] == pytest.approx(quiet["roughness"]) and scaled["p99"] == pytest.approx(16 * quiet["p99"])
    assert image_features(_image(smooth), None)[0]["fg_p50"] is None


@pytest.mark.parametrize(("z", "low", "high"), [(0.0, 0.0, 0.0), (2.0, 0.0, 0.02), (4.0, 0.5, 0.5), (8.0, 0.99, 1.0)])
def test_severity_rises_with_the_distance_in_sd(z, low, high):
    assert low <= severity_of_z(z) <= high


def test_score_is_a_noisy_or_and_the_flag_follows_the_threshold():
    assert combined_score([]) == 0.0
    assert combined_score([Finding("a", "", 0.5), Finding("b", "", 0.5)]) == pytest.approx(0.75)
    members = [torch.zeros(6, 6, 6, dtype=torch.uint8)] * 2
    members[0][2:4, 2:4, 2:4] = 1
    probs = torch.stack([1 - (members[0] == 1).float() * 0.99, (members[0] == 1).float() * 0.99])
    image = _image(np.ones((6, 6, 6)))
    labels = MetaTensor(members[0][None].clone(), affine=image.affine)
    calm = assess_case(None, {"image": image}, labels, {1: "organ"}, summarize_members([members[0]] * 2, probs))
    assert calm.score < REVIEW_THRESHOLD and not calm.review and calm.as_dict()["findings"] == []
    split = summarize_members([members[0], torch.zeros_like(members[0])], probs)
    doubtful = assess_case(None, {"image": image}, labels, {1: "organ"}, split)
    assert doubtful.review and doubtful.as_dict()["findings"][0].startswith("organ: members agree at Dice 0.000")
    block = doubtful.as_dict()
    assert set(block) >= {"score", "review", "findings"} and 0 <= block["score"] <= 1


def test_member_agreement_and_entropy():
    a = torch.zeros(8, 8, dtype=torch.uint8)
    a[2:6, 2:6] = 1
    b = a.clone()
    b[2:6, 4:6] = 0  # half of a
    probs = torch.stack([1 - (a == 1).float() * 0.55, (a == 1).float() * 0.55])
    result = summarize_members([a, b], probs)
    assert result.members == 2
    assert result.agreement[1] == pytest.approx(2 * 8 / (16 + 8))
    assert result.entropy[1] == pytest.approx(0.9928, abs=1e-3)  # p = 0.55 / 0.45: nearly the most uncertain
    assert summarize_members([a, a], probs).agreement[1] == 1.0
    regions = member_labels(torch.tensor([[[0.9, 0.1]], [[0.6, 0.4]]]), "sigmoid")
    assert regions.dtype == torch.bool and regions.tolist() == [[[True, False]], [[True, False]]]


def test_uncertainty_findings_against_validation_norms():
    norms = {"uncertainty": {"agreement": {"1": _summary(0.93, 0.01, 0.9, 0.95)},
                             "foreground_entropy": _summary(0.2, 0.01, 0.18, 0.22)}}  # fmt: skip
    quiet = uncertainty_findings(norms, {"agreement": {"1": 0.93}, "foreground_entropy": 0.2}, {1: "organ"})
    assert quiet == []
    found = uncertainty_findings(norms, {"agreement": {"1": 0.80}, "foreground_entropy": 0.3}, {1: "organ"})
    assert {f.check for f in found} == {"agreement", "entropy"}
    assert all(f.severity > 0.9 for f in found)


def test_temperature_scaling_lowers_the_calibration_error_of_an_overconfident_model():
    rng = np.random.default_rng(0)
    n, classes = 20_000, 3
    labels = torch.as_tensor(rng.integers(0, classes, n))
    logits = torch.as_tensor(rng.normal(0, 1, (classes, n)), dtype=torch.float32)
    logits[labels, torch.arange(n)] += 1.5  # right about 70 % of the time
    probs = torch.softmax(logits * 4.0, dim=0)  # ... but sure of it: over-confident by a factor 4
    temperature = fit_temperature(probs, labels)
    assert temperature > 2.0
    before = expected_calibration_error(probs, labels)
    after = expected_calibration_error(temperature_scaled(probs, temperature), labels)
    assert after < 0.5 * before
    assert torch.equal(temperature_scaled(probs, temperature).argmax(0), probs.argmax(0))  # labels unchanged


def test_temperature_one_is_identity_and_bad_temperatures_are_refused():
    probs = torch.softmax(torch.randn(3, 10), 0)
    assert temperature_scaled(probs, 1.0) is probs
    with pytest.raises(ValueError, match="temperature"):
        temperature_scaled(probs, 0.0)


def test_reference_from_a_datalist_then_a_case_checked_against_it(tmp_path):
    rng = np.random.default_rng(0)
    entries = []
    for i in range(6):
        image = rng.normal(100, 5, (16, 16, 12)).astype(np.float32)
        label = np.zeros((16, 16, 12), dtype=np.uint8)
        label[5:10, 5:10, 4 + i % 2 : 8] = 1
        image[label > 0] += 50
        nib.save(nib.Nifti1Image(image, np.eye(4)), tmp_path / f"c{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), tmp_path / f"c{i}_seg.nii.gz")
        entries.append({"case": f"c{i}", "image": f"c{i}.nii.gz", "label": f"c{i}_seg.nii.gz"})
    datalist = tmp_path / "dataset.json"
    datalist.write_text(json.dumps({"training": entries[:5], "validation": [], "test": entries[5:]}))
    reference = build_reference(datalist, ["image"], {1: "organ"}, {"image": "MR"})
    assert reference["cases"] == 5 and reference["orientations"] == {"RAS": 5}
    assert reference["structures"]["1"]["present"] == 1.0
    assert math.exp(reference["structures"]["1"]["volume_ml"]["mean"]) == pytest.approx(0.1, rel=0.25)
    assert str(tmp_path) not in json.dumps(reference)
    image = _image(np.asarray(nib.load(tmp_path / "c5.nii.gz").dataobj))
    label = MetaTensor(torch.as_tensor(np.asarray(nib.load(tmp_path / "c5_seg.nii.gz").dataobj))[None])
    assert assess_case(reference, {"image": image}, label, {1: "organ"}).review is False
    huge = label.clone()
    huge[:, 2:14, 2:14, 2:10] = 1
    flagged = assess_case(reference, {"image": image * 3}, huge, {1: "organ"})
    assert flagged.review and {"volume", "intensity"} <= {f.check for f in flagged.findings}
