"""The output registry: one entry per output (an NRRD mask is one entry), the case writer and push derive from it;
a DICOM output that cannot be written is a warning of a case whose mask stands; marker settings list only the
outputs turned on."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch

from pipeline.batch.runner import predict_folder
from pipeline.inference.options import InferenceOptions
from pipeline.inference.predictor import Predictor
from pipeline.outputs.registry import (
    DICOM_SEG_NAME, OUTPUTS, SEG_NAME, OutputOptions, output_settings, pushed_names, required_outputs,
)  # fmt: skip
from tests.test_predictor import BUNDLE, random_checkpoint


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    torch.set_num_threads(1)
    ckpt = random_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")
    options = InferenceOptions(roi_size=(32, 32, 16), device="cpu", uncertainty=False)
    return Predictor.from_bundle(BUNDLE, ckpt, options=options)


@pytest.fixture()
def dicom_case(tiny_dataset, tmp_path):
    """``src/p1/``: one case's DICOM series."""
    case = json.loads(tiny_dataset.read_text())["test"][0]["case"]
    src = tmp_path / "src"
    shutil.copytree(tiny_dataset.parent / "patients" / case / "ct_dicom", src / "p1")
    return src


def test_every_entry_has_a_unique_name_file_and_flag():
    assert len({s.name for s in OUTPUTS}) == len({s.file_name for s in OUTPUTS}) == len(OUTPUTS)
    flags = [s.flag for s in OUTPUTS if s.default is not None]
    assert len(set(flags)) == len(flags) and all(f.startswith("--") for f in flags)
    assert OUTPUTS[0].file_name == SEG_NAME  # the mask first: the other outputs describe it


@pytest.mark.parametrize(
    "options, required, pushed",
    [
        (OutputOptions(), ["seg.nii.gz", "volumes.json", "preview.png"], ["seg.dcm"]),
        (OutputOptions(preview=False, nrrd=True, rtstruct=True), ["seg.nii.gz", "volumes.json", "seg.nrrd"],
         ["seg.dcm", "rtstruct.dcm"]),
        (OutputOptions(dicom_seg=False, probabilities=True), ["seg.nii.gz", "volumes.json", "preview.png",
                                                               "probabilities.nii.gz"], []),
    ],
)  # fmt: skip
def test_required_and_pushed_files_derive_from_the_options(options, required, pushed):
    assert required_outputs(options) == required
    assert pushed_names(options) == pushed


def test_marker_settings_name_only_the_outputs_turned_on():
    # an output added to the registry (off by default) must not change the settings of finished cases
    assert output_settings(OutputOptions()) == {"outputs": ["dicom_seg", "preview"]}
    assert output_settings(OutputOptions(nrrd=True))["outputs"] == ["dicom_seg", "nrrd", "preview"]


def test_nrrd_output_is_the_nifti_mask_in_lps(predictor, tiny_dataset, tmp_path):
    case = json.loads(tiny_dataset.read_text())["test"][0]["case"]
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(tiny_dataset.parent / "patients" / case / "ct.nii.gz", src / f"{case}.nii.gz")
    report = predict_folder(predictor, src, tmp_path / "out", outputs=OutputOptions(nrrd=True, preview=False))
    (result,) = report.results
    assert result.status == "ok" and "seg.nrrd" in result.outputs
    nifti = sitk.ReadImage(str(tmp_path / "out" / case / SEG_NAME))
    nrrd = sitk.ReadImage(str(tmp_path / "out" / case / "seg.nrrd"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(nrrd), sitk.GetArrayFromImage(nifti))
    np.testing.assert_allclose(nrrd.GetOrigin(), nifti.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(nrrd.GetDirection(), nifti.GetDirection(), atol=1e-5)


def test_a_series_without_sop_class_uid_is_ok_with_a_warning_naming_the_dicom_seg(predictor, dicom_case, tmp_path):
    for path in sorted((dicom_case / "p1").iterdir()):
        ds = pydicom.dcmread(path)
        del ds.SOPClassUID
        ds.save_as(path)
    report = predict_folder(predictor, dicom_case, tmp_path / "out", outputs=OutputOptions(preview=False))
    (result,) = report.results
    assert result.status == "ok", result.error
    assert SEG_NAME in result.outputs and DICOM_SEG_NAME not in result.outputs
    assert any(DICOM_SEG_NAME in w and "SOPClassUID" in w for w in result.warnings), result.warnings
    saved = json.loads((tmp_path / "out" / "report.json").read_text())["cases"][0]
    assert {SEG_NAME, "volumes.json"} <= set(saved["outputs"]) and DICOM_SEG_NAME not in saved["outputs"]
    assert not (tmp_path / "out" / "p1" / DICOM_SEG_NAME).exists()


def test_a_failing_dicom_writer_is_a_warning_and_the_mask_stands(predictor, dicom_case, tmp_path, monkeypatch):
    import pipeline.outputs.dicom_seg as dicom_seg

    def broken(*args, **kwargs):
        raise KeyError("")

    monkeypatch.setattr(dicom_seg, "write_dicom_seg", broken)
    report = predict_folder(predictor, dicom_case, tmp_path / "out", outputs=OutputOptions(preview=False))
    (result,) = report.results
    assert result.status == "ok" and SEG_NAME in result.outputs
    assert any(w.startswith(f"no {DICOM_SEG_NAME} (dicom_seg): KeyError") for w in result.warnings), result.warnings
