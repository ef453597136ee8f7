"""transforms.dicom.series / transforms.io.scan on tiny synthetic series written with pipeline.synthetic.dicom_series."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

from pipeline.synthetic.dicom_series import write_dicom_series
from tests.dicom_builders import to_enhanced
from transforms.dicom.discovery import SeriesRule
from transforms.io.scan import ScanLoadError, load_scan

SHAPE = (9, 8, 6)


def _oblique() -> np.ndarray:
    c, s = np.cos(0.4), np.sin(0.4)
    affine = np.eye(4)
    affine[:3, :3] = (
        np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
        @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
        @ np.diag([0.7, 0.8, 2.5])
    )
    affine[:3, 3] = [12.0, -30.25, 7.5]
    return affine


AFFINES = {
    "ras": np.diag([0.7, 0.8, 2.0, 1.0]),
    "lps": np.diag([-0.9, -0.9, 3.0, 1.0]),
    "oblique": _oblique(),
}


def _vol(shape=SHAPE, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1024, 1500, size=shape).astype(np.int16)


def _series(folder: Path, vol=None, affine=None, **kw) -> list[Path]:
    vol = _vol() if vol is None else vol
    return write_dicom_series(vol, np.eye(4) if affine is None else affine, folder, **kw)


def _edit(path: Path, **changes) -> None:
    ds = pydicom.dcmread(path)
    for key, value in changes.items():
        setattr(ds, key, value)
    ds.save_as(path)


@pytest.mark.parametrize("name", list(AFFINES))
def test_round_trip_matches_nifti_with_shuffled_names(tmp_path, name):
    vol, affine = _vol(), AFFINES[name]
    names = [f"{n:08x}" for n in np.random.default_rng(1).permutation(2**20)[: SHAPE[2]]]
    _series(tmp_path / "dcm", vol, affine, file_names=names)
    nib.save(nib.Nifti1Image(vol, affine), tmp_path / "vol.nii.gz")
    from_dicom, from_nifti = load_scan(tmp_path / "dcm"), load_scan(tmp_path / "vol.nii.gz")
    assert from_dicom.shape == (1, *SHAPE) and from_dicom.dtype == from_nifti.dtype
    np.testing.assert_array_equal(from_dicom.numpy(), from_nifti.numpy())
    np.testing.assert_allclose(from_dicom.affine.numpy(), from_nifti.affine.numpy(), atol=1e-4)
    np.testing.assert_allclose(from_dicom.affine.numpy(), affine, atol=1e-4)
    files = from_dicom.meta["dicom_files"]
    assert [Path(f).name for f in files] == names
    assert len(from_dicom.meta["sop_instance_uids"]) == SHAPE[2]


def test_matches_simpleitk_series_reader(tmp_path):
    _series(tmp_path, _vol(), AFFINES["oblique"])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path)))
    image = reader.Execute()
    lps = np.eye(4)
    lps[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    ours = load_scan(tmp_path)
    np.testing.assert_array_equal(ours.numpy()[0], sitk.GetArrayFromImage(image).transpose(2, 1, 0))
    np.testing.assert_allclose(ours.affine.numpy(), np.diag([-1.0, -1, 1, 1]) @ lps, atol=1e-4)


def test_meta_is_non_identifying(tmp_path):
    _series(tmp_path, patient_pseudonym="SECRET_NAME")
    meta = load_scan(tmp_path).meta
    assert "SECRET_NAME" not in repr(meta)
    assert not {"PatientName", "PatientID", "PatientBirthDate"} & set(meta)
    assert meta["modality"] == "CT" and meta["StudyDate"] == "20000101" and meta["space"] == "RAS"
    assert meta["filename_or_obj"] == str(tmp_path) and np.isnan(meta["original_channel_dim"])
    assert tuple(meta["spatial_shape"]) == SHAPE


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_compressed_syntaxes_decode_identically(tmp_path, syntax):
    vol = _vol((33, 34, 3))  # openjpeg refuses to encode planes smaller than 32x32
    for path in _series(tmp_path, vol, AFFINES["ras"]):
        ds = pydicom.dcmread(path)
        ds.compress(syntax)
        ds.save_as(path)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(load_scan(tmp_path).numpy()[0], vol)


def test_missing_decoder_names_syntax_and_package(tmp_path, monkeypatch):
    from pydicom.pixels.decoders.base import Decoder

    for path in _series(tmp_path, _vol((33, 34, 3))):
        ds = pydicom.dcmread(path)
        ds.compress(JPEG2000Lossless)
        ds.save_as(path)
    monkeypatch.setattr(Decoder, "is_available", property(lambda self: False))
    with pytest.raises(
        ScanLoadError, match=r"no installed decoder .*JPEG 2000.*pip install pylibjpeg pylibjpeg-openjpeg"
    ):
        load_scan(tmp_path)


def test_unknown_syntax_is_named(tmp_path):
    for path in _series(tmp_path):
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder exists
        ds.PixelData = encapsulate([ds.PixelData])
        ds["PixelData"].VR = "OB"
        ds.save_as(path)
    with pytest.raises(ScanLoadError, match="no pixel data decoder.*MPEG2"):
        load_scan(tmp_path)


def test_twelve_bit_signed_values_are_sign_extended(tmp_path):
    vol = _vol()
    paths = _series(tmp_path, vol)
    for path in paths:
        ds = pydicom.dcmread(path)
        stored = (
            ds.pixel_array.astype(np.int16) & 0x0FFF
        )  # upper 4 bits cleared, as 12-bit scanners store them
        ds.PixelData, ds.BitsStored, ds.HighBit = stored.tobytes(), 12, 11
        ds.save_as(path)
    expected = np.stack([pydicom.dcmread(p).pixel_array for p in paths], -1).transpose(1, 0, 2) - 1024.0
    np.testing.assert_array_equal(load_scan(tmp_path).numpy()[0], expected)


def _break_missing(paths):
    paths[3].unlink()


def _break_orientation(paths):
    _edit(paths[2], ImageOrientationPatient=[0, 1, 0, 1, 0, 0])


def _break_spacing(paths):
    _edit(paths[2], PixelSpacing=[1.5, 1.0])


def _break_duplicate(paths):
    ds = pydicom.dcmread(paths[2])
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(paths[2].with_name("copy_of_slice_2"))


def _break_size(paths):
    ds = pydicom.dcmread(paths[1])
    ds.Rows, ds.PixelData = 4, np.zeros((4, SHAPE[0]), "<i2").tobytes()
    ds.save_as(paths[1])


def _break_tilt(paths):
    for k, path in enumerate(paths):
        ipp = [float(v) for v in pydicom.dcmread(path).ImagePositionPatient]
        _edit(path, ImagePositionPatient=[ipp[0], ipp[1] + 0.3 * k, ipp[2]])


def _break_nan(paths):
    ds = pydicom.dcmread(paths[4])
    values = np.full((SHAPE[1], SHAPE[0]), np.nan, np.float32)
    del ds.PixelData, ds.PixelRepresentation
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    ds.FloatPixelData = values.tobytes()
    ds.save_as(paths[4])


@pytest.mark.parametrize(
    "breaker, match",
    [
        (_break_missing, r"missing slices: gap > 1.5x.*slice_0002\.dcm and .*slice_0004\.dcm"),
        (_break_orientation, r"inconsistent orientation.*slice_0002\.dcm"),
        (_break_spacing, r"inconsistent pixel spacing.*slice_0002\.dcm"),
        (_break_duplicate, r"duplicate slice positions.*copy_of_slice_2"),
        (_break_size, r"inconsistent image sizes.*slice_0001\.dcm has \(4, 9\)"),
        (_break_tilt, r"gantry tilt of \d+\.\d+ degrees.*refused"),
        (_break_nan, r"non-finite voxels \(NaN or infinite\) in .*slice_0004\.dcm"),
    ],
)
def test_broken_series_errors_name_problem_and_files(tmp_path, breaker, match):
    paths = _series(tmp_path, affine=np.diag([1.0, 1.0, 2.0, 1.0]))
    breaker(paths)
    with pytest.raises(ScanLoadError, match=match) as info:
        load_scan(tmp_path)
    assert "series 1." in str(info.value)


def test_single_slice_points_to_2d_bundle_or_convert(tmp_path):
    vol = _vol((9, 8, 1))
    _series(tmp_path, vol, np.diag([0.5, 0.6, 3.0, 1.0]))
    with pytest.raises(ScanLoadError, match=r"single slice .*slice_0000\.dcm.*2D bundle.*clinseg convert"):
        load_scan(tmp_path)
    image = load_scan(tmp_path, spatial_dims=2)
    assert image.shape == (1, 9, 8)
    np.testing.assert_array_equal(image.numpy()[0], vol[:, :, 0])
    np.testing.assert_allclose(image.affine.numpy(), np.diag([0.5, 0.6, 3.0, 1.0]), atol=1e-6)
    with pytest.raises(ScanLoadError, match="spatial_dims=2 needs a single slice"):
        load_scan(_series(tmp_path / "many")[0].parent, spatial_dims=2)


def test_discovery_is_recursive_and_skips_non_dicom_with_warning(tmp_path, caplog):
    _series(tmp_path / "patient" / "study" / "ct", file_names=[f"IM{k}" for k in range(SHAPE[2])])
    (tmp_path / "patient" / "notes.txt").write_text("not dicom")
    (tmp_path / "patient" / "DICOMDIR").write_bytes(b"\0" * 200)
    with caplog.at_level(logging.WARNING):
        image = load_scan(tmp_path / "patient")
    assert image.shape == (1, *SHAPE)
    assert "notes.txt" in caplog.text and "DICOMDIR" not in caplog.text


@pytest.mark.parametrize(
    "setup, match",
    [
        (lambda p: p.mkdir(), "empty folder"),
        (lambda p: (p.mkdir(), (p / "a.txt").write_text("x")), "no DICOM image series"),
        (lambda p: None, "no such file or folder"),
    ],
)
def test_bad_paths_raise_scan_load_error(tmp_path, setup, match):
    target = tmp_path / "scan"
    setup(target)
    with pytest.raises(ScanLoadError, match=match):
        load_scan(target)


@pytest.fixture()
def two_series(tmp_path) -> Path:
    _series(
        tmp_path / "a",
        _vol((9, 8, 6)),
        series_description="AX SOFT TISSUE",
        uid_seed="a",
        series_uid="1.2.3.1",
    )
    _series(tmp_path / "b", _vol((9, 8, 4)), series_description="AX LUNG", uid_seed="b", series_uid="1.2.3.2")
    _series(
        tmp_path / "c",
        _vol((9, 8, 4)),
        modality="MR",
        series_description="T1",
        uid_seed="c",
        series_uid="1.2.3.3",
    )
    return tmp_path


@pytest.mark.parametrize(
    "kwargs, slices",
    [
        ({"series_uid": "1.2.3.2"}, 4),
        ({"series_rule": SeriesRule(description="lung")}, 4),
        ({"series_rule": {"modality": "CT"}}, 6),
        ({"series_rule": {"modality": "mr"}}, 4),
        ({}, 6),
    ],
)
def test_series_selection(two_series, kwargs, slices):
    assert load_scan(two_series, **kwargs).shape[-1] == slices


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"series_uid": "9.9"}, r"series_uid '9.9' not found.*1\.2\.3\.1 \(CT, 6 slices\)"),
        ({"series_rule": {"description": "bone"}}, "no series matches"),
        (
            {"series_rule": {"modality": "CT", "prefer_most_slices": False}},
            r"ambiguous.*1\.2\.3\.2 \(CT, 4 slices\)",
        ),
        ({"series_rule": {"description": "AX|T1", "modality": None}}, None),
    ],
)
def test_series_selection_errors_list_series(two_series, kwargs, match):
    if match is None:  # most slices wins among three matches
        assert load_scan(two_series, **kwargs).meta["SeriesInstanceUID"] == "1.2.3.1"
        return
    with pytest.raises(ScanLoadError, match=match):
        load_scan(two_series, **kwargs)


def test_tie_on_most_slices_is_ambiguous(two_series):
    shutil.rmtree(two_series / "a")
    with pytest.raises(ScanLoadError, match="ambiguous.*1.2.3.2.*1.2.3.3"):
        load_scan(two_series)


@pytest.mark.parametrize("compress", [False, True])
def test_enhanced_multiframe_loads_as_volume(tmp_path, compress):
    vol, affine = _vol(), AFFINES["oblique"]
    paths = _series(tmp_path / "series", vol, affine)
    order = [3, 0, 5, 1, 4, 2]
    to_enhanced(paths, tmp_path / "enhanced", order)
    if compress:
        ds = pydicom.dcmread(tmp_path / "enhanced")
        ds.compress(RLELossless)
        ds.save_as(tmp_path / "enhanced")
    image = load_scan(tmp_path / "enhanced")
    np.testing.assert_array_equal(image.numpy()[0], vol)
    np.testing.assert_allclose(image.affine.numpy(), affine, atol=1e-4)
    assert image.meta["frame_numbers"] == [order.index(k) + 1 for k in range(6)]


def test_multiframe_without_functional_groups_is_refused(tmp_path):
    paths = _series(tmp_path / "series")
    to_enhanced(paths, tmp_path / "mf", list(range(SHAPE[2])))
    ds = pydicom.dcmread(tmp_path / "mf")
    del ds.PerFrameFunctionalGroupsSequence
    ds.save_as(tmp_path / "mf")
    with pytest.raises(ScanLoadError, match="PerFrameFunctionalGroupsSequence"):
        load_scan(tmp_path / "mf")


def test_label_path_keeps_integers(tmp_path):
    vol = np.random.default_rng(0).integers(0, 4, SHAPE).astype(np.int16)
    _series(tmp_path, vol, modality="MR")
    labels = load_scan(tmp_path, label=True)
    assert labels.dtype == np.int32 or str(labels.dtype) == "torch.int32"
    np.testing.assert_array_equal(labels.numpy()[0], vol)
