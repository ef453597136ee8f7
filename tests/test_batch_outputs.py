"""Per-case outputs of batch prediction: geometry, DICOM SEG read-back, volumes, previews, probabilities,
postprocessing, TTA and ensembles."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.core.atomic import COMPLETE_MARKER
from pipeline.batch.runner import QC_NAME, predict_folder
from pipeline.outputs.registry import (
    DICOM_SEG_NAME,
    PREVIEW_NAME,
    PROBABILITIES_NAME,
    RTSTRUCT_NAME,
    SEG_NAME,
    VOLUMES_NAME,
    OutputOptions,
)
from pipeline.outputs.dicom_seg import read_dicom_seg
from pipeline.inference.options import InferenceOptions, PostprocessOptions
from pipeline.inference.foreground_crop import case_box
from pipeline.inference.predictor import Predictor
from pipeline.outputs.contour_budget import MIN_COMPONENT_MM3, clean_labels
from pipeline.outputs.rtstruct_read import rtstruct_to_mask
from pipeline.inference.tta import flip_combinations
from tests.dicom_builders import to_enhanced
from tests.dicom_checks import dciodvfy_errors, dice, fill_each_contour
from tests.test_predictor import BUNDLE, random_checkpoint
from transforms.io.scan import load_scan

ROI = (32, 32, 16)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpts")
    return [random_checkpoint(folder / f"fold{i}.pt", seed=i) for i in range(2)]


@pytest.fixture(scope="module")
def predictor(checkpoints):
    return Predictor.from_bundle(BUNDLE, checkpoints[0], options=InferenceOptions(roi_size=ROI, device="cpu"))


@pytest.fixture(scope="module")
def source(tiny_dataset, tmp_path_factory):
    """case_000 as NIfTI, case_002 (oblique) as a DICOM series, case_003 as NIfTI."""
    patients = tiny_dataset.parent / "patients"
    src = tmp_path_factory.mktemp("src")
    for name in ("case_000", "case_003"):
        (src / name).mkdir()
        shutil.copy(patients / name / "ct.nii.gz", src / name / "ct.nii.gz")
    shutil.copytree(patients / "case_002" / "ct_dicom", src / "case_002")
    return src


@pytest.fixture(scope="module")
def run(predictor, source, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    report = predict_folder(predictor, source, out, outputs=OutputOptions(probabilities=True, rtstruct=True))
    return out, report


def test_every_case_is_ok_and_its_marker_lists_every_output(run):
    out, report = run
    assert report.counts() == {"ok": 3, "failed": 0, "skipped": 0}
    for result in report.results:
        listed = set(json.loads((out / result.case / COMPLETE_MARKER).read_text())["outputs"])
        expected = {SEG_NAME, VOLUMES_NAME, PREVIEW_NAME, PROBABILITIES_NAME, QC_NAME}
        assert listed == expected | ({DICOM_SEG_NAME, RTSTRUCT_NAME} if result.case == "case_002" else set())
        assert set(result.outputs) == listed
        assert not list((out / result.case).glob(".tmp-*"))


def test_report_times_each_stage_of_each_case_and_sums_them(run):
    out, _ = run
    report = json.loads((out / "report.json").read_text())
    stages = {"read", "preprocess", "network", "restore", "qc", "write_mask", "write_volumes", "write_preview",
              "write_probabilities"}  # fmt: skip
    for case in report["cases"]:
        dicom = {"write_dicom_seg", "write_rtstruct"} if case["case"] == "case_002" else set()
        assert set(case["timing"]) == stages | dicom and all(v >= 0 for v in case["timing"].values())
        assert sum(case["timing"].values()) <= case["seconds"] + 1e-3  # stages of the case's wall time
    totals = report["timing"]
    assert totals["network"] == pytest.approx(sum(c["timing"]["network"] for c in report["cases"]), abs=1e-2)
    assert list(totals.values()) == sorted(totals.values(), reverse=True)  # slowest stage first


@pytest.mark.parametrize("case", ["case_000", "case_002"])
def test_seg_and_probabilities_have_the_input_shape_and_affine(run, source, case):
    out, _ = run
    loaded = load_scan(source / case) if case == "case_002" else load_scan(source / case / "ct.nii.gz")
    seg = nib.load(out / case / SEG_NAME)
    assert seg.shape == tuple(loaded.shape[1:])
    np.testing.assert_allclose(seg.affine, loaded.affine.numpy(), atol=1e-4)
    probs = nib.load(out / case / PROBABILITIES_NAME)
    assert probs.shape == (*loaded.shape[1:], 3)
    np.testing.assert_allclose(probs.affine, loaded.affine.numpy(), atol=1e-4)
    p = probs.get_fdata()
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=0.02)
    agree = np.mean(np.argmax(p, axis=-1) == np.asarray(seg.dataobj))
    assert agree > 0.8  # linear vs nearest resampling differ at boundaries (many, with random weights)


def test_dicom_seg_reads_back_onto_the_source_files_equal_to_the_nifti(run, source, predictor):
    out, _ = run
    loaded = load_scan(source / "case_002")
    from_seg = read_dicom_seg(
        out / "case_002" / DICOM_SEG_NAME, loaded.meta["dicom_files"], predictor.label_names
    )
    mask = np.asarray(nib.load(out / "case_002" / SEG_NAME).dataobj)
    assert mask.any()
    np.testing.assert_array_equal(from_seg, mask)


def test_rtstruct_contours_fill_back_to_the_nifti_mask(run, source, predictor):
    out, _ = run
    files = load_scan(source / "case_002").meta["dicom_files"]
    seg = nib.load(out / "case_002" / SEG_NAME)
    mask = np.asarray(seg.dataobj).copy()  # random weights: specks, which the RTSTRUCT leaves out
    voxel_mm3 = abs(float(np.linalg.det(seg.affine[:3, :3])))
    clean_labels(mask, predictor.label_names, int(np.ceil(MIN_COMPONENT_MM3 / voxel_mm3)))
    filled = rtstruct_to_mask(out / "case_002" / RTSTRUCT_NAME, files, predictor.label_names)
    np.testing.assert_array_equal(filled, mask)
    union = fill_each_contour(out / "case_002" / RTSTRUCT_NAME, files)  # each contour filled on its own
    for lid, name in predictor.label_names.items():
        assert dice(union[name], mask == lid) >= 0.99, name


@pytest.mark.parametrize("name", [RTSTRUCT_NAME, DICOM_SEG_NAME])
def test_dicom_outputs_pass_dciodvfy(run, name):
    out, _ = run
    assert dciodvfy_errors(out / "case_002" / name) == []


def test_multiframe_input_gets_a_dicom_seg_on_its_frames(predictor, source, tmp_path):
    files = load_scan(source / "case_002").meta["dicom_files"]
    order = list(range(len(files)))[::-1]  # frames stored in reverse slice order
    (tmp_path / "src" / "mf").mkdir(parents=True)
    to_enhanced([Path(f) for f in files], tmp_path / "src" / "mf" / "ct.dcm", order)
    report = predict_folder(predictor, tmp_path / "src", tmp_path / "out", outputs=OutputOptions(rtstruct=True))
    assert report.counts()["ok"] == 1 and not (tmp_path / "out" / "mf" / RTSTRUCT_NAME).exists()
    loaded = load_scan(tmp_path / "src" / "mf")
    from_seg = read_dicom_seg(
        tmp_path / "out" / "mf" / DICOM_SEG_NAME,
        loaded.meta["dicom_files"],
        predictor.label_names,
        frame_numbers=loaded.meta["frame_numbers"],
    )
    mask = np.asarray(nib.load(tmp_path / "out" / "mf" / SEG_NAME).dataobj)
    assert mask.any()
    np.testing.assert_array_equal(from_seg, mask)


def test_volumes_are_voxel_count_times_voxel_volume_with_hu_statistics(run, source):
    out, _ = run
    with (out / "volumes.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted({r["case"] for r in rows}) == ["case_000", "case_002", "case_003"]
    assert [r["name"] for r in rows if r["case"] == "case_000"] == ["organ", "lesion"]
    for case in ("case_000", "case_002"):
        mask = np.asarray(nib.load(out / case / SEG_NAME).dataobj)
        image = load_scan(source / case if case == "case_002" else source / case / "ct.nii.gz").numpy()[0]
        voxel_ml = abs(np.linalg.det(nib.load(out / case / SEG_NAME).affine[:3, :3])) / 1000
        for row in (r for r in rows if r["case"] == case):
            inside = mask == int(row["label"])
            assert int(row["voxels"]) == inside.sum()
            assert float(row["volume_ml"]) == pytest.approx(inside.sum() * voxel_ml, abs=1e-4)
            if inside.any():
                assert float(row["mean_intensity"]) == pytest.approx(image[inside].mean(), abs=1e-2)
                assert float(row["min_intensity"]) == pytest.approx(image[inside].min(), abs=1e-3)
                assert float(row["max_intensity"]) == pytest.approx(image[inside].max(), abs=1e-3)
        per_case = json.loads((out / case / VOLUMES_NAME).read_text())
        assert [r["voxels"] for r in per_case] == [int(r["voxels"]) for r in rows if r["case"] == case]


def test_preview_is_a_png(run):
    out, _ = run
    with Image.open(out / "case_000" / PREVIEW_NAME) as img:
        assert img.format == "PNG" and img.size[0] > img.size[1]


def test_loaded_hu_image_is_kept_unchanged_for_statistics(predictor, source):
    data = predictor.load(source / "case_000" / "ct.nii.gz")
    kept = data.reference
    np.testing.assert_array_equal(kept.numpy(), load_scan(source / "case_000" / "ct.nii.gz").numpy())
    assert (
        float(torch.as_tensor(data.data["image"]).max()) <= 1.0
    )  # the network input is windowed, the kept one is HU
    assert float(kept.max()) > 100


def test_ensemble_averages_the_members_probabilities(checkpoints, source):
    # float32 both ways: bf16 sums differ with the batch's shape, and this checks the averaging
    options = InferenceOptions(roi_size=ROI, device="cpu", amp=False)
    members = [Predictor.from_bundle(BUNDLE, c, options=options) for c in checkpoints]
    ensemble = Predictor.from_bundle(BUNDLE, checkpoints, options=options)
    data = ensemble.load(source / "case_003" / "ct.nii.gz")
    probs = ensemble.probabilities(data)
    assert probs.shape == (3, *data.data["image"].shape[1:])
    expected = (members[0].probabilities(data) + members[1].probabilities(data)) / 2
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(members[0].probabilities(data), members[1].probabilities(data), atol=1e-3)
    seg = ensemble.segment(data).labels
    assert seg.shape == data.reference.shape


def test_flip_combinations_cover_every_axis_subset():
    assert flip_combinations(3)[0] == () and len(flip_combinations(3)) == 8 and len(flip_combinations(2)) == 4
    assert len(set(flip_combinations(3))) == 8 and max(map(len, flip_combinations(3))) == 3


def test_tta_and_crop_keep_the_input_grid(checkpoints, source):
    options = InferenceOptions(roi_size=ROI, device="cpu", tta=True, crop_foreground=True, crop_margin=2)
    predictor = Predictor.from_bundle(BUNDLE, checkpoints[0], options=options)
    path = source / "case_002"
    loaded = load_scan(path)
    result = predictor.segment(predictor.load(path), keep_probabilities=True)
    assert result.labels.shape == loaded.shape
    np.testing.assert_allclose(result.labels.affine.numpy(), loaded.affine.numpy(), atol=1e-5)
    assert result.probabilities.shape == (3, *loaded.shape[1:])
    torch.testing.assert_close(result.probabilities.sum(0), torch.ones(loaded.shape[1:]), atol=1e-3, rtol=0)


def test_crop_foreground_infers_the_body_box_with_the_uncropped_patches(checkpoints, tmp_path):
    hu = np.full((100, 72, 40), -1000.0, np.float32)  # already on the bundle's 1.6 x 1.6 x 2.5 mm grid
    hu[30:46, 28:40, 14:22] = 40.0
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(hu, np.diag([1.6, 1.6, 2.5, 1.0])), path)
    # float32 both ways: under bf16 the cropped run's smaller last batch changes sums by ~3e-3 (seen in CI)
    whole = Predictor.from_bundle(
        BUNDLE,
        checkpoints[0],
        options=InferenceOptions(roi_size=ROI, device="cpu", amp=False, crop_foreground=False),
    )
    cropped = Predictor.from_bundle(
        BUNDLE,
        checkpoints[0],
        options=InferenceOptions(roi_size=ROI, device="cpu", amp=False, crop_foreground=True, crop_margin=2),
    )
    data = cropped.load(path)
    box = case_box(data, cropped.options)
    assert case_box(data, whole.options) is None
    # body 30..45 / 28..39 / 14..21 plus 2 voxels, grown to the patch grid (stride 16, 16, 8; length roi + k stride);
    # a box reaching the whole-grid run's last patch (at size - roi: 68, 40, 24) runs to the end
    assert [(s.start, s.stop) for s in box] == [(16, 64), (16, 72), (8, 40)]
    p_crop, p_whole = cropped.probabilities(data), whole.probabilities(data)
    outside = torch.ones(p_crop.shape[1:], dtype=torch.bool)
    outside[box] = False
    assert bool((p_crop[0][outside] == 1).all()) and not p_crop[1:][:, outside].any()
    # a voxel whose every patch lies inside the box (roi - stride from the box's inner faces) is unchanged
    inner = tuple(slice(s.start + r - r // 2, s.stop - (r - r // 2)) for s, r in zip(box, ROI))
    torch.testing.assert_close(p_crop[(slice(None), *inner)], p_whole[(slice(None), *inner)], rtol=0, atol=1e-5)
    seg = cropped.segment(data).labels
    assert seg.shape == (1, *hu.shape) and not seg[0][outside].any()
    all_air = tmp_path / "air.nii.gz"
    nib.save(nib.Nifti1Image(np.full((20, 20, 8), -1000.0, np.float32), np.eye(4)), all_air)
    assert case_box(cropped.load(all_air), cropped.options) is None
    assert cropped.predict(all_air).labels.shape == (1, 20, 20, 8)  # no body: inferred whole


def test_postprocessing_keeps_the_largest_component(checkpoints, source):
    post = PostprocessOptions(keep_largest=(1, 2), min_size_ml=0.0, fill_holes=(1,))
    plain = Predictor.from_bundle(
        BUNDLE, checkpoints[0], options=InferenceOptions(roi_size=ROI, device="cpu")
    )
    cleaned = Predictor.from_bundle(
        BUNDLE, checkpoints[0], options=InferenceOptions(roi_size=ROI, device="cpu"), postprocess=post
    )
    assert cleaned.settings()["postprocess"] == post.as_dict() and plain.settings()["postprocess"] is None
    from scipy import ndimage

    seg = cleaned.predict(source / "case_000" / "ct.nii.gz").labels.numpy()[0]
    for label in (1, 2):
        _, n = ndimage.label(seg == label, structure=np.ones((3, 3, 3)))
        assert n <= 1


def test_postprocess_options_parse_and_validate():
    assert PostprocessOptions.parse_min_size_ml(["0.5"]) == 0.5
    assert PostprocessOptions.parse_min_size_ml(["1=5", "2=0.2"]) == {1: 5.0, 2: 0.2}
    with pytest.raises(ValueError, match="LABEL=ML"):
        PostprocessOptions.parse_min_size_ml(["1=x"])
    with pytest.raises(ValueError, match="unknown keys"):
        PostprocessOptions.from_config({"keep_biggest": [1]})
    assert PostprocessOptions.from_config({"min_size_ml": {1: 2}}).min_size_ml == {1: 2.0}
    with pytest.raises(ValueError, match="overlap"):
        InferenceOptions(overlap=1.0)


def test_bundle_label_postprocessing_knob_is_read(checkpoints):
    predictor = Predictor.from_bundle(
        BUNDLE, checkpoints[0], label_postprocessing={"keep_largest": [1], "min_size_ml": 0.5}
    )
    assert predictor.postprocess == PostprocessOptions(keep_largest=(1,), min_size_ml=0.5)
    assert predictor.settings()["postprocess"]["keep_largest"] == [1]


def test_linear_restore_equals_monai_invertd_then_argmax(checkpoints, source):
    from monai.data import MetaTensor
    from monai.transforms import Invertd

    options = InferenceOptions(roi_size=ROI, device="cpu")
    linear = Predictor.from_bundle(BUNDLE, checkpoints[0], options=options)
    data = linear.load(source / "case_002")  # oblique DICOM: resampling back is not a plain zoom
    probs = linear.probabilities(data)
    invert = Invertd(keys="pred", transform=linear.preprocessing, orig_keys="image", nearest_interp=False)
    every = torch.as_tensor(invert({**data.data, "pred": MetaTensor(probs, meta=dict(data.data["image"].meta))})["pred"])
    ours = linear.segment(data, keep_probabilities=True)
    torch.testing.assert_close(torch.as_tensor(ours.probabilities), every, rtol=0, atol=1e-5)
    expected = every.argmax(0, keepdim=True).to(torch.uint8)
    margin = every.topk(2, dim=0).values.diff(dim=0).abs()[0] > 1e-4  # voxels without a near-tie
    labels = torch.as_tensor(ours.labels)
    assert torch.equal(labels[0][margin], expected[0][margin]) and float((labels == expected).float().mean()) > 0.999
    nearest = Predictor.from_bundle(
        BUNDLE, checkpoints[0], options=InferenceOptions(roi_size=ROI, device="cpu", restore="nearest")
    )
    fast = nearest.segment(nearest.load(source / "case_002")).labels
    assert fast.shape == expected.shape and fast.dtype == torch.uint8
    np.testing.assert_allclose(fast.affine.numpy(), data.reference.affine.numpy(), atol=1e-5)
    assert 0.5 < float((torch.as_tensor(fast) == expected).float().mean()) < 1.0


def test_amp_keeps_shapes_and_mostly_the_same_labels(checkpoints, source):
    plain = Predictor.from_bundle(
        BUNDLE, checkpoints[0], options=InferenceOptions(roi_size=ROI, device="cpu", amp=False)
    )
    amp = Predictor.from_bundle(
        BUNDLE, checkpoints[0], options=InferenceOptions(roi_size=ROI, device="cpu", amp=True)
    )
    data = plain.load(source / "case_003" / "ct.nii.gz")
    p, q = plain.probabilities(data), amp.probabilities(amp.load(source / "case_003" / "ct.nii.gz"))
    assert q.dtype == torch.float32 and q.shape == p.shape
    assert float((p - q).abs().max()) < 0.1 and amp.settings()["amp"] and not plain.settings()["amp"]


def test_volumes_pooled_over_slabs_equal_the_whole_volume():
    from monai.data import MetaTensor

    from pipeline.outputs.slab_volumes import volumes_by_slab
    from pipeline.outputs.volumetry import structure_volumes

    rng = np.random.default_rng(0)
    seg = MetaTensor(torch.from_numpy(rng.integers(0, 3, (1, 10, 12, 70)).astype(np.uint8)))
    seg[..., 40:] = seg[..., 40:].clamp(max=1)  # label 2 absent from the last slabs
    image = MetaTensor(torch.from_numpy(rng.normal(40, 30, (1, 10, 12, 70)).astype(np.float32)))
    affine = np.diag([0.7, 0.8, 2.5, 1.0])
    labels = {1: "organ", 2: "lesion", 3: "absent"}
    whole = structure_volumes(seg, image, affine, labels)
    pooled = volumes_by_slab(seg, image, affine, labels)
    for a, b in zip(whole, pooled, strict=True):
        assert a["voxels"] == b["voxels"] and a["volume_ml"] == pytest.approx(b["volume_ml"])
        for key in ("mean_intensity", "std_intensity", "min_intensity", "max_intensity"):
            assert (a[key] is None and b[key] is None) or a[key] == pytest.approx(b[key], rel=1e-9)
