"""A corpus of bad inputs, each built in tmp_path: every one gets a named error or warning, nothing is silent.

``CORPUS`` maps a case name to (builder, expected outcome). Errors are asserted on the loader with ``match=``
(the file and the cause), and a batch over the whole corpus must record every case in ``report.json`` with its
status and reason, go on after each failure and exit non-zero. No header free text (SeriesDescription) and no
numpy reprs may reach a message.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from pipeline.batch.runner import predict_folder
from pipeline.cli import main
from pipeline.synthetic.dicom_series import write_dicom_series
from pipeline.inference.options import InferenceOptions
from pipeline.inference.input_checks import bundle_modalities
from pipeline.inference.predictor import Predictor
from tests.conftest import BUNDLES
from tests.test_predictor import BUNDLE, random_checkpoint
from transforms.io.inspect import inspect_path
from transforms.io.scan import ScanLoadError, load_scan

SECRET = "Jane Roe 1970"  # SeriesDescription of every series: must never appear in a message or report
AFFINE = np.diag([0.8, 0.9, 2.0, 1.0])
SHAPE = (8, 7, 4)


def _ct(shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(0).integers(-1000, 400, shape).astype(np.int16)


def _series(folder: Path, vol=None, affine=AFFINE, **kw) -> list[Path]:
    return write_dicom_series(_ct() if vol is None else vol, affine, folder, series_description=SECRET, **kw)


def _nifti(path: Path, data: np.ndarray, affine=AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def _with_voxel(value: float):
    def build(case: Path) -> Path:
        data = _ct().astype(np.float32)
        data[1, 2, 3] = value
        return _nifti(case / "ct.nii.gz", data)

    return build


def _bad_affine(affine: np.ndarray):
    def build(case: Path) -> Path:
        img = nib.Nifti1Image(_ct(), np.eye(4))
        img.set_sform(affine, code=1)
        img.set_qform(np.eye(4), code=0)
        case.mkdir(parents=True)
        nib.save(img, case / "ct.nii.gz")
        return case / "ct.nii.gz"

    return build


def _huge_header(case: Path) -> Path:
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape((30000, 30000, 30000))
    header.set_sform(AFFINE, code=1)
    header["vox_offset"] = 352
    case.mkdir(parents=True)
    path = case / "ct.nii.gz"
    path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4 + _ct().tobytes()))
    return path


def _huge_spacing(case: Path) -> Path:
    return _nifti(case / "ct.nii.gz", _ct((64, 64, 40)), np.diag([0.8, 0.9, 1e6, 1.0]))


def _truncated_gz(case: Path) -> Path:
    path = _nifti(case / "ct.nii.gz", _ct((30, 30, 20)))
    path.write_bytes(path.read_bytes()[:-100])
    return path


def _two_d(case: Path) -> Path:
    return _nifti(case / "ct.nii.gz", _ct()[:, :, 0])


def _dicom_cut(keep: int | None):
    """A series whose last file keeps ``keep`` bytes (``None``: its header, cut just before the pixel data)."""

    def build(case: Path) -> Path:
        last = _series(case)[-1]
        data = last.read_bytes()
        if keep is None:
            pydicom.dcmread(last, stop_before_pixels=True).save_as(last)
        else:
            last.write_bytes(data[:keep])
        return case

    return build


def _dicom_pixels_cut(case: Path) -> Path:
    last = _series(case)[-1]
    last.write_bytes(last.read_bytes()[:-20])
    return case


def _dicom_empty_slice(case: Path) -> Path:
    _series(case)
    (case / "slice_0004.dcm").write_bytes(b"")
    return case


def _dicom_edit(index: int | None, **changes):
    """A series with ``changes`` in file ``index`` (``None``: in every file)."""

    def build(case: Path) -> Path:
        paths = _series(case)
        for path in paths if index is None else [paths[index]]:
            ds = pydicom.dcmread(path)
            for key, value in changes.items():
                setattr(ds, key, value)
            ds.save_as(path)
        return case

    return build


def _dicom_single(case: Path) -> Path:
    _series(case, _ct((8, 7, 1)))
    return case


def _dicom_gap(case: Path) -> Path:
    _series(case, _ct((8, 7, 6)))[2].unlink()
    return case


def _dicom_mr(case: Path) -> Path:
    _series(case, np.abs(_ct()), modality="MR")
    return case


def _dicom_with_readme(case: Path) -> Path:
    _series(case)
    (case / "README.txt").write_text("scanned at night\n")
    return case


def _nifti_and_dicom(case: Path) -> Path:
    _series(case / "dicom")
    return _nifti(case / "ct.nii.gz", _ct())


def _mr_nifti(case: Path) -> Path:
    return _nifti(case / "ct.nii.gz", np.abs(_ct()))


def _self_link(case: Path) -> Path:
    os.symlink(case.name, case)
    return case


def _empty(case: Path) -> Path:
    case.mkdir()
    return case


# case -> (builder, status, regex on the error (failed) or on the warning (ok))
CORPUS = {
    "nifti_posinf": (
        _with_voxel(np.inf),
        "failed",
        r"ct\.nii\.gz: image contains non-finite voxels \(1 \+inf\)",
    ),
    "nifti_neginf": (
        _with_voxel(-np.inf),
        "failed",
        r"ct\.nii\.gz: image contains non-finite voxels \(1 -inf\)",
    ),
    "nifti_nan": (_with_voxel(np.nan), "failed", r"ct\.nii\.gz: image contains non-finite voxels \(1 NaN\)"),
    "nifti_singular_affine": (
        _bad_affine(np.diag([1.0, 1.0, 0.0, 1.0])),
        "failed",
        r"ct\.nii\.gz: degenerate affine: voxel axis 2 has zero length",
    ),
    "nifti_collinear_affine": (
        _bad_affine(np.array([[1.0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])),
        "failed",
        r"ct\.nii\.gz: degenerate affine: the voxel axes are collinear",
    ),
    "nifti_huge_header": (
        _huge_header,
        "failed",
        (
            r"ct\.nii\.gz: header declares shape \(30000, 30000, 30000\) of int16 \(54000\.0 GB\) but the file "
            r"holds 448 bytes of voxel data"
        ),
    ),
    "nifti_truncated": (_truncated_gz, "failed", r"ct\.nii\.gz: cannot read as NIfTI: Compressed file ended"),
    "nifti_2d": (
        _two_d,
        "failed",
        r"ct\.nii\.gz: 2D image of shape \(8, 7\) given to a 3D loader.*2D bundle",
    ),
    "dicom_last_file_header_only": (
        _dicom_cut(None),
        "failed",
        r"1 file\(s\) of the series cannot be read: .*slice_0003\.dcm has no pixel data \(truncated file\?\)",
    ),
    "dicom_last_file_cut_in_header": (
        _dicom_cut(200),
        "failed",
        r"slice_0003\.dcm has no SeriesInstanceUID \(truncated or corrupt header\)",
    ),
    "dicom_last_file_cut_in_pixels": (
        _dicom_pixels_cut,
        "failed",
        r"slice_0003\.dcm: pixel data truncated: the file ends after 92 of 112 bytes",
    ),
    "dicom_empty_dcm_file": (
        _dicom_empty_slice,
        "failed",
        r"slice_0004\.dcm named \.dcm but is not a DICOM file \(0 bytes, no DICM marker\)",
    ),
    "dicom_zero_spacing": (
        _dicom_edit(1, PixelSpacing=[0, 0.8]),
        "failed",
        r"degenerate PixelSpacing \(must be positive\): .*slice_0001\.dcm has \[0, 0\.8\]",
    ),
    "dicom_degenerate_orientation": (
        _dicom_edit(None, ImageOrientationPatient=[1, 0, 0, 1, 0, 0]),
        "failed",
        r"ImageOrientationPatient \[1, 0, 0, 1, 0, 0\] of .*slice_0000\.dcm is not two orthonormal vectors",
    ),
    "dicom_inconsistent_orientation": (
        _dicom_edit(2, ImageOrientationPatient=[0, 1, 0, 0, 0, -1]),
        "failed",
        (
            r"inconsistent orientation \(ImageOrientationPatient\): .*slice_0000\.dcm has \[-1, 0, 0, 0, -1, 0\] "
            r"but .*slice_0002\.dcm has \[0, 1, 0, 0, 0, -1\]"
        ),
    ),
    "dicom_single_slice": (
        _dicom_single,
        "failed",
        r"a single slice \(.*slice_0000\.dcm\) cannot form a 3D volume: segment it with a 2D bundle.*clinseg convert",
    ),
    "dicom_missing_slice": (
        _dicom_gap,
        "failed",
        r"missing slices: gap > 1\.5x .*slice_0001\.dcm and .*slice_0003\.dcm",
    ),
    "dicom_mr_in_ct_bundle": (
        _dicom_mr,
        "ok",
        r"the DICOM series is MR but bundle ct_organ_resunet3d expects CT",
    ),
    "mr_nifti_in_ct_bundle": (_mr_nifti, "ok", r"lowest intensity \d+ is above -500 HU \(no air\)"),
    "nifti_and_dicom": (_nifti_and_dicom, "ok", r"holds NIfTI and DICOM files; read the NIfTI ct\.nii\.gz"),
    "dicom_with_readme": (_dicom_with_readme, "ok", None),
    "self_link": (_self_link, "failed", r"self_link: broken or self-referencing symbolic link"),
    "empty_folder": (_empty, "failed", r"no NIfTI image or DICOM files found in .*empty_folder"),
    "huge_spacing": (
        _huge_spacing,
        "failed",
        r"huge_spacing/ct\.nii\.gz: header spacing 0\.8, 0\.9, 1e\+06 mm over \(64, 64, 40\) voxels would resample "
        r"to a .* grid .* the header's spacing or affine is wrong",
    ),
}
LOADER_CASES = [
    name for name, (_, status, _) in CORPUS.items() if status == "failed" and name[:4] in ("nift", "dico")
]


@pytest.mark.parametrize("name", LOADER_CASES)
def test_loader_names_the_file_and_the_cause(tmp_path, name):
    build, _, match = CORPUS[name]
    path = build(tmp_path / name)
    with pytest.raises(ScanLoadError, match=match) as info:
        load_scan(path)
    message = str(info.value)
    assert SECRET not in message and "np.float" not in message and "np.int" not in message


@pytest.mark.parametrize(
    "name", ["nifti_posinf", "nifti_singular_affine", "nifti_huge_header", "dicom_last_file_header_only"]
)
def test_inspect_reports_the_problem_and_exits_3(tmp_path, capsys, name):
    build, _, match = CORPUS[name]
    build(tmp_path / name)
    rows = inspect_path(tmp_path / name)
    assert any(re.search(match, problem) for row in rows for problem in row["problems"]), rows
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / name)]) == 3
    assert SECRET not in capsys.readouterr().out


def test_inspect_lists_nifti_notes_oblique_and_exits_0(tmp_path, capsys):
    _nifti(tmp_path / "case" / "ct.nii.gz", _ct())
    angle = np.deg2rad(18)
    oblique = np.eye(4)
    oblique[:3, :3] = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    _series(tmp_path / "case" / "dicom", affine=oblique @ AFFINE)
    rows = {r["path"]: r for r in inspect_path(tmp_path / "case")}
    assert rows["ct.nii.gz"]["kind"] == "nifti" and rows["ct.nii.gz"]["orientation"] == "RAS"
    assert rows["dicom"]["orientation"] == "RAS (oblique 18.0 deg)" and rows["dicom"]["problems"] == []
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "case")]) == 0
    out = capsys.readouterr().out
    assert "ct.nii.gz" in out and "oblique 18.0 deg" in out and SECRET not in out
    (tmp_path / "nothing").mkdir()
    assert main(["inspect", str(tmp_path / "nothing")]) == 3


def test_convert_writes_a_single_slice_series_as_a_one_slice_volume(tmp_path):
    vol = _ct((8, 7, 1))
    _series(tmp_path / "one", vol)
    assert main(["convert", str(tmp_path / "one"), str(tmp_path / "one.nii.gz")]) == 0
    img = nib.load(tmp_path / "one.nii.gz")
    assert img.shape == (8, 7, 1)
    np.testing.assert_array_equal(np.asarray(img.dataobj), vol)
    np.testing.assert_allclose(img.affine, AFFINE, atol=1e-5)


def test_bundle_modalities_from_metadata():
    meta = json.loads((BUNDLES / "ctmr_fusion_seg3d" / "configs" / "metadata.json").read_text())
    assert bundle_modalities(meta, ["image", "mr"]) == {"image": "CT", "mr": "MR"}
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    assert bundle_modalities(meta, ["image"]) == {"image": "CT"}
    assert (
        bundle_modalities({"network_data_format": {"inputs": {"image": {"modality": "CT+MR"}}}}, ["image"])
        == {}
    )


@pytest.mark.slow
def test_batch_records_every_bad_case_and_goes_on(tmp_path, caplog):
    source = tmp_path / "corpus"
    source.mkdir()
    for name, (build, _, _) in CORPUS.items():
        build(source / name)
    (source / "notes.txt").write_text("not a case\n")
    predictor = Predictor.from_bundle(
        BUNDLE,
        random_checkpoint(tmp_path / "model.pt"),
        options=InferenceOptions(roi_size=(32, 32, 16), device="cpu"),
    )
    report = predict_folder(predictor, source, tmp_path / "out")
    assert report.exit_code() == 3
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    cases = {c["case"]: c for c in saved["cases"]}
    assert set(cases) == set(CORPUS)
    for name, (_, status, match) in CORPUS.items():
        case = cases[name]
        assert case["status"] == status, (name, case)
        text = case["error"] if status == "failed" else " | ".join(case["warnings"])
        if match is None:
            assert case["warnings"] == [], case
        else:
            assert re.search(match, text), (name, text)
    assert cases["nifti_and_dicom"]["inputs"] == {"image": str(source / "nifti_and_dicom" / "ct.nii.gz")}
    assert cases["dicom_mr_in_ct_bundle"]["inputs"] == {"image": str(source / "dicom_mr_in_ct_bundle")}
    text = (tmp_path / "out" / "report.json").read_text() + (tmp_path / "out" / "summary.csv").read_text()
    assert SECRET not in text and "np.float" not in text and SECRET not in caplog.text
    assert "README.txt" in caplog.text and "notes.txt" in caplog.text  # skipped files are named in the log
    assert "DefaultCPUAllocator" not in cases["huge_spacing"]["error"]

    again = {r.case: r for r in predict_folder(predictor, source, tmp_path / "out").results}
    for name in ("dicom_mr_in_ct_bundle", "mr_nifti_in_ct_bundle", "nifti_and_dicom"):
        assert again[name].status == "skipped" and again[name].warnings == cases[name]["warnings"]


def test_huge_spacing_is_refused_before_allocating():
    from monai.data import MetaTensor

    from transforms.geometry.spacing import StableSpacing

    image = MetaTensor(torch.zeros(1, 64, 64, 40), affine=torch.diag(torch.tensor([0.8, 0.9, 1e6, 1.0])))
    image.meta["filename_or_obj"] = "/data/p1/ct.nii.gz"
    with pytest.raises(ValueError, match=r"/data/p1/ct\.nii\.gz: header spacing 0\.8, 0\.9, 1e\+06 mm"):
        StableSpacing((1.6, 1.6, 2.5))(image)
    normal = MetaTensor(torch.zeros(1, 8, 7, 4), affine=torch.diag(torch.tensor([0.8, 0.9, 2.0, 1.0])))
    assert StableSpacing((1.6, 1.6, 2.5))(normal).shape == (1, 5, 4, 3)  # 3.5-voxel span: rounded up


def test_a_hidden_case_folder_is_listed_as_skipped(tmp_path):
    source = tmp_path / "in"
    _nifti(source / "p1" / "ct.nii.gz", _ct())
    _nifti(source / ".p2" / "ct.nii.gz", _ct())
    (source / ".DS_Store").write_bytes(b"junk")
    predictor = Predictor.from_bundle(
        BUNDLE,
        random_checkpoint(tmp_path / "model.pt"),
        options=InferenceOptions(roi_size=(32, 32, 16), device="cpu", uncertainty=False),
    )
    report = predict_folder(predictor, source, tmp_path / "out")
    cases = {c["case"]: c for c in json.loads((tmp_path / "out" / "report.json").read_text())["cases"]}
    assert set(cases) == {"p1", "p2"} and cases["p1"]["status"] == "ok"
    assert cases["p2"]["status"] == "skipped"
    assert re.search(r"hidden folder \.p2/ .*not read", cases["p2"]["warnings"][0])
    assert report.exit_code() == 0
