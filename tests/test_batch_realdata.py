"""Real scans from ../shared/data predict onto their own grids: JPEG 2000 CT series, LPS MR, 3-slice CT."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from pipeline.batch.runner import predict_folder
from pipeline.outputs.registry import DICOM_SEG_NAME, SEG_NAME, OutputOptions
from pipeline.outputs.dicom_seg import read_dicom_seg
from pipeline.inference.options import InferenceOptions
from pipeline.inference.predictor import Predictor
from tests.test_predictor import BUNDLE, random_checkpoint
from transforms.io.scan import load_scan


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    checkpoint = random_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")
    # coarse spacing and no overlap keep the 512x512 series cheap on the network grid
    options = InferenceOptions(roi_size=(32, 32, 16), overlap=0.0, device="cpu")
    return Predictor.from_bundle(BUNDLE, checkpoint, options=options, spacing=[6.0, 6.0, 6.0])


@pytest.mark.parametrize("relative", ["totalseg/ct_dicom", "totalseg/mr_sm.nii.gz", "dcmqi/ct_3slice"])
def test_real_scan_predicts_onto_its_own_grid(shared_data, predictor, relative):
    data = predictor.load(shared_data / relative)
    loaded = data.reference  # what transforms.io.scan.load_scan returns, read once
    assert (
        loaded.shape[1:]
        == {
            "totalseg/ct_dicom": (512, 512, 20),
            "totalseg/mr_sm.nii.gz": (117, 91, 20),
            "dcmqi/ct_3slice": (512, 512, 3),
        }[relative]
    )
    seg = predictor.segment(data).labels
    assert seg.shape == loaded.shape
    np.testing.assert_allclose(seg.affine.numpy(), loaded.affine.numpy(), atol=1e-5)


def test_real_dicom_series_gets_a_dicom_seg_equal_to_the_nifti(shared_data, predictor, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    (source / "ct3").symlink_to(shared_data / "dcmqi" / "ct_3slice", target_is_directory=True)
    report = predict_folder(predictor, source, tmp_path / "out", outputs=OutputOptions(preview=False))
    assert report.counts()["ok"] == 1, report.results
    loaded = load_scan(shared_data / "dcmqi" / "ct_3slice")
    seg = nib.load(tmp_path / "out" / "ct3" / SEG_NAME)
    np.testing.assert_allclose(seg.affine, loaded.affine.numpy(), atol=1e-4)
    mask = np.asarray(seg.dataobj)
    back = read_dicom_seg(
        tmp_path / "out" / "ct3" / DICOM_SEG_NAME, loaded.meta["dicom_files"], predictor.label_names
    )
    np.testing.assert_array_equal(back, mask)
