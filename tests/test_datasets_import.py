"""clinseg import: MSD (3D, 4D), nnU-Net v2 (channels, regions), NIfTI folders and DICOM RTSTRUCT/SEG studies
into a datalist with named channels, label names, a seeded patient-level split and an import report."""

from __future__ import annotations

import json
import os
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from pipeline.cli import main
from pipeline.core.datalist import DatalistError, load_datalist
from pipeline.core.splits import fold_datalist
from pipeline.datasets.importer import detect_layout, import_dataset
from pipeline.datasets.model import DatasetImportError, unique_channel_names
from pipeline.datasets.split import split_cases
from pipeline.datasets.structures import combine, fold_name, match_structures, parse_structures
from pipeline.outputs.rtstruct import write_rtstruct
from pipeline.synthetic.dicom_series import write_dicom_series
from pipeline.tracking.run_tags import dataset_fingerprint
from transforms.io.scan import LoadScand

AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])
SHAPE = (8, 7, 5)


def _nii(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def _label(seed: int) -> np.ndarray:
    out = np.zeros(SHAPE, dtype=np.uint8)
    out[2:5, 2:5, 1:4] = 1
    out[5 + seed % 2, 1:3, 2] = 2
    return out


def _load(datalist: Path, split: str) -> list[dict]:
    return load_datalist(datalist, split, required_keys=("image", "label"))


# --- split, structure map, overlap rule ---------------------------------------------------------------------


@pytest.mark.parametrize(("n", "fraction", "folds"), [(10, 0.2, 2), (37, 0.3, 5), (5, 0.0, 5)])
def test_split_is_patient_level_deterministic_and_stable(n, fraction, folds):
    cases = [f"p{i:03d}" for i in range(n)]
    split_of, fold_of = split_cases(cases, test_fraction=fraction, folds=folds, seed=3)
    assert (split_of, fold_of) == split_cases(
        list(reversed(cases)), test_fraction=fraction, folds=folds, seed=3
    )
    test = {c for c, s in split_of.items() if s == "test"}
    assert len(test) == round(fraction * n) and not test & set(fold_of)
    assert {c for c, s in split_of.items() if s == "validation"} == {c for c, k in fold_of.items() if k == 0}
    assert sorted(set(fold_of.values())) == list(range(folds))
    # a new case never moves an old one across the test boundary beyond the one slot it may take
    more, _ = split_cases([*cases, "new"], test_fraction=fraction, folds=folds, seed=3)
    assert len(test - {c for c, s in more.items() if s == "test"}) <= 1
    other, _ = split_cases(cases, test_fraction=fraction, folds=folds, seed=4)
    assert fraction == 0 or other != split_of


def test_split_refuses_too_few_cases_and_allows_one_fold():
    with pytest.raises(DatasetImportError, match="5 folds need at least 5 non-test cases"):
        split_cases(["a", "b", "c"], test_fraction=0.0, folds=5)
    split_of, fold_of = split_cases(["a"], test_fraction=0.0, folds=1)
    assert split_of == {"a": "training"} and fold_of == {"a": -1}


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        (["FLAIR", "T1 Gd", "t1-gd"], ["flair", "t1_gd", "t1_gd_2"]),
        (["Image", "image"], ["image", "image_2"]),
        (["label", "Case", "!!"], ["label_image", "case_image", "channel"]),
    ],
)
def test_channel_names_are_unique_keys(raw, names):
    assert unique_channel_names(raw) == names


def test_structure_map_aliases_fold_case_spaces_underscores_hyphens(tmp_path):
    spec = "1=GTV-1;2=Lung L|Lung_L|LUNG_LEFT, 3=Spinal cord"
    structures = parse_structures(spec)
    assert structures == {1: ["GTV-1"], 2: ["Lung L", "Lung_L", "LUNG_LEFT"], 3: ["Spinal cord"]}
    assert fold_name("  Lung -_ L ") == fold_name("LUNG_L") == "lung_l"
    found = ["gtv 1", "LUNG-L", "lung left", "Lung_Left", "SpinalCord", "Patient"]
    assert match_structures(structures, found) == {
        1: ["gtv 1"],
        2: ["LUNG-L", "lung left", "Lung_Left"],
        3: [],
    }
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"1": "GTV-1", "2": ["Lung L", "LUNG_LEFT"]}))
    assert parse_structures(path) == {1: ["GTV-1"], 2: ["Lung L", "LUNG_LEFT"]}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("GTV", "expected LABEL=NAME"),
        ("x=GTV", "not an integer"),
        ("0=GTV", "1..65535"),
        ("1=a;2=A", "mapped to labels 1 and 2"),
        ("1=a;1=b", "used once"),
        (";", "empty"),
    ],
)
def test_structure_map_errors_name_the_problem(spec, message):
    with pytest.raises(DatasetImportError, match=message):
        parse_structures(spec)


def test_overlap_rule_smaller_structure_wins_ties_to_higher_label():
    body = np.ones((6, 6, 2), dtype=bool)
    organ = np.zeros_like(body)
    organ[1:5, 1:5] = True
    tumour = np.zeros_like(body)
    tumour[2:4, 2:4, 0] = True
    labels, overlaps = combine({1: tumour, 2: organ, 3: body})
    assert labels[2, 2, 0] == 1 and labels[1, 1, 0] == 2 and labels[0, 0, 0] == 3 and labels[2, 2, 1] == 2
    assert overlaps == {"1&2": 4, "1&3": 4, "2&3": 32}
    same, _ = combine({4: tumour, 5: tumour.copy()})
    assert set(np.unique(same)) == {0, 5}


# --- MSD ------------------------------------------------------------------------------------------------------


def _msd(root: Path, n: int, channels: int) -> Path:
    modality = (
        {"0": "MRI"}
        if channels == 1
        else {str(c): name for c, name in enumerate(["FLAIR", "T1 Gd"][:channels])}
    )
    training = []
    for i in range(n):
        shape = SHAPE if channels == 1 else (*SHAPE, channels)
        image = np.random.default_rng(i).normal(size=shape).astype(np.float32)
        _nii(root / "imagesTr" / f"pat_{i:03d}.nii.gz", image)
        _nii(root / "labelsTr" / f"pat_{i:03d}.nii.gz", _label(i))
        training.append(
            {"image": f"./imagesTr/pat_{i:03d}.nii.gz", "label": f"./labelsTr/pat_{i:03d}.nii.gz"}
        )
    training.append({"image": "./imagesTr/gone.nii.gz", "label": "./labelsTr/gone.nii.gz"})
    _nii(
        root / "imagesTs" / "pat_900.nii.gz",
        np.zeros(SHAPE if channels == 1 else (*SHAPE, channels), np.float32),
    )
    (root / "imagesTr" / "._pat_000.nii.gz").write_bytes(b"macOS resource fork, as in MSD tarballs")
    content = {
        "name": "T",
        "modality": modality,
        "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
        "numTraining": n,
        "training": training,
        "test": ["./imagesTs/pat_900.nii.gz"],
    }
    (root / "dataset.json").write_text(json.dumps(content))
    return root


def test_msd_3d_imports_in_place_with_split_folds_and_report(tmp_path, capsys):
    src = _msd(tmp_path / "Task09", 10, 1)
    assert detect_layout(src) == "msd"
    dest = tmp_path / "imported"
    assert main(["import", str(src), str(dest), "--folds", "4", "--seed", "1"]) == 3  # "gone" is skipped
    printed = capsys.readouterr().out
    assert "imported 10 case(s) (msd): 6 training, 2 validation, 2 test, 1 unlabelled" in printed
    assert "skipped gone: " in printed and "does not exist" in printed
    content = json.loads((dest / "dataset.json").read_text())
    assert content["channels"] == {"mri": "MR"}
    assert content["labels"] == {"0": "background", "1": "Anterior", "2": "Posterior"}
    assert content["source"] == {"layout": "msd", "path": str(src.resolve())}
    assert content["folds"]["k"] == 4 and content["folds"]["seed"] == 1
    assert not (dest / "images").exists()  # 3D images are referenced, not copied
    entry = _load(dest / "dataset.json", "validation")[0]
    assert entry["mri"] == entry["image"] == str(src / "imagesTr" / f"{entry['case']}.nii.gz")
    assert len(load_datalist(dest / "dataset.json", "unlabelled")) == 1
    report = json.loads((dest / "import_report.json").read_text())
    assert report["counts"] == {
        "taken": 10,
        "skipped": 1,
        "training": 6,
        "validation": 2,
        "test": 2,
        "unlabelled": 1,
    }
    assert report["skipped"][0]["case"] == "gone"
    # the fold datalists of `clinseg train --fold k` work on the import, fold 0 is the import's own split
    fold0 = json.loads(fold_datalist(dest / "dataset.json", 0, 4, seed=1).read_text())
    assert {e["case"] for e in fold0["validation"]} == {e["case"] for e in content["validation"]}
    folds = {
        k: {
            e["case"]
            for e in json.loads(fold_datalist(dest / "dataset.json", k, 4, 1).read_text())["validation"]
        }
        for k in range(4)
    }
    assert {c: k for k, cs in folds.items() for c in cs} == {
        c: v["fold"] for c, v in report["cases"].items() if v["split"] != "test"
    }
    assert _load(Path(fold_datalist(dest / "dataset.json", 2, 4, 1)), "training")[0]["mri"].startswith(
        str(src)
    )


def test_msd_4d_is_split_into_named_channels(tmp_path):
    src = _msd(tmp_path / "Task01", 4, 2)
    dest = tmp_path / "out"
    import_dataset(src, dest, test_fraction=0.25, folds=2)
    content = json.loads((dest / "dataset.json").read_text())
    assert content["channels"] == {"flair": "MR", "t1_gd": "MR"}
    entry = _load(dest / "dataset.json", "training")[0]
    source = nib.load(src / "imagesTr" / f"{entry['case']}.nii.gz")
    for c, name in enumerate(["flair", "t1_gd"]):
        part = nib.load(entry[name])
        assert Path(entry[name]).parent == (dest / "images").resolve() and part.shape == SHAPE
        np.testing.assert_array_equal(part.get_fdata(), source.get_fdata()[..., c])
        np.testing.assert_allclose(part.affine, source.affine)
    assert entry["image"] == entry["flair"]
    assert json.loads((dest / "dataset.json").read_text())["training"][0]["flair"].startswith("images/")
    loaded = LoadScand(keys=["flair", "t1_gd", "label"], label_keys=["label"])(entry)
    assert loaded["flair"].shape == loaded["label"].shape == (1, *SHAPE)
    moved = fold_datalist(dest / "dataset.json", 1, 2, out_path=tmp_path / "elsewhere" / "fold1.json")
    assert json.loads(moved.read_text())["validation"][0]["t1_gd"].startswith("../out/images/")
    assert all(Path(e["t1_gd"]).is_file() for e in _load(moved, "validation"))


def test_load_datalist_resolves_and_checks_declared_channels(tmp_path):
    _nii(tmp_path / "a_t2.nii.gz", np.zeros(SHAPE, np.float32))
    content = {
        "channels": {"t2": "MR", "adc": "MR"},
        "training": [{"case": "a", "t2": "a_t2.nii.gz", "adc": "a_adc.nii.gz"}],
    }
    (tmp_path / "dataset.json").write_text(json.dumps(content))
    with pytest.raises(DatalistError, match=r"training\[0\]\['adc'\] -> .*a_adc.nii.gz does not exist"):
        load_datalist(tmp_path / "dataset.json", required_keys=("t2",))
    (entry,) = load_datalist(tmp_path / "dataset.json", required_keys=("t2",), check_files=False)
    assert entry["t2"] == str(tmp_path.resolve() / "a_t2.nii.gz") and entry["adc"].startswith(
        str(tmp_path.resolve())
    )


def test_msd_4d_with_wrong_channel_count_is_skipped_with_reason(tmp_path):
    src = _msd(tmp_path / "Task01", 3, 2)
    _nii(src / "imagesTr" / "pat_001.nii.gz", np.zeros((*SHAPE, 3), np.float32))
    report = import_dataset(src, tmp_path / "out", test_fraction=0, folds=2)
    assert {
        "case": "pat_001",
        "reason": "image shape (8, 7, 5, 3) does not hold the 2 channel(s) of 'modality'",
    } in (report["skipped"])


# --- nnU-Net v2 -----------------------------------------------------------------------------------------------


def _nnunet(root: Path, n: int) -> Path:
    for i in range(n):
        for c in range(2):
            _nii(root / "imagesTr" / f"BRATS_{i:03d}_{c:04d}.nii.gz", np.full(SHAPE, c + i, np.float32))
        label = np.zeros(SHAPE, np.uint8)
        label[1:6, 1:6, 1:4], label[2:5, 2:5, 2], label[3, 3, 2] = 1, 2, 3
        _nii(root / "labelsTr" / f"BRATS_{i:03d}.nii.gz", label)
    os.remove(root / "imagesTr" / "BRATS_001_0001.nii.gz")
    _nii(root / "imagesTr" / "BRATS_100_0000.nii.gz", np.zeros(SHAPE, np.float32))  # image without label
    for c in range(2):
        _nii(root / "imagesTs" / f"BRATS_500_{c:04d}.nii.gz", np.zeros(SHAPE, np.float32))
    content = {
        "channel_names": {"0": "FLAIR", "1": "T1c"},
        "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3},
        "regions_class_order": [1, 2, 3],
        "numTraining": n,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(content))
    return root


def test_nnunet_v2_channels_region_labels_and_skips(tmp_path):
    src = _nnunet(tmp_path / "Dataset501_BraTS", 6)
    assert detect_layout(src) == "nnunet"
    dest = tmp_path / "out"
    report = import_dataset(src, dest, test_fraction=0.2, folds=2)
    content = json.loads((dest / "dataset.json").read_text())
    assert content["channels"] == {"flair": "MR", "t1c": "MR"}
    assert content["labels"] == {
        "0": "background",
        "1": "whole tumor",
        "2": "tumor core",
        "3": "enhancing tumor",
    }
    assert content["regions"] == {"whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}
    reasons = {s["case"]: s["reason"] for s in report["skipped"]}
    assert "BRATS_001_0001.nii.gz" in reasons["BRATS_001"] and "no label file" in reasons["BRATS_100"]
    assert report["counts"]["taken"] == 5 and report["counts"]["unlabelled"] == 1
    assert report["notes"] == []
    entry = _load(dest / "dataset.json", "training")[0]
    assert entry["flair"].endswith(f"{entry['case']}_0000.nii.gz") and entry["t1c"].endswith("_0001.nii.gz")
    assert nib.load(entry["t1c"]).get_fdata()[0, 0, 0] == 1 + int(entry["case"][-3:])


def test_nnunet_other_file_ending_is_refused(tmp_path):
    src = _nnunet(tmp_path / "D", 2)
    content = json.loads((src / "dataset.json").read_text())
    (src / "dataset.json").write_text(json.dumps({**content, "file_ending": ".mha"}))
    with pytest.raises(DatasetImportError, match="file_ending '.mha' is not NIfTI"):
        import_dataset(src, tmp_path / "out")


# --- plain NIfTI folders --------------------------------------------------------------------------------------


def test_nifti_case_folders_with_channel_globs_and_label_names(tmp_path):
    src = tmp_path / "brain"
    for i in range(4):
        case = src / f"subject_{i}"
        _nii(case / "Flair_norm.nii.gz", np.ones(SHAPE, np.float32))
        _nii(case / "T1c_norm.nii.gz", np.zeros(SHAPE, np.float32))
        _nii(case / "seg.nii.gz", _label(i))
    _nii(src / "subject_1" / "segmentation_old.nii.gz", _label(0))  # two label files: skipped
    _nii(src / "subject_3" / "seg.nii.gz", _label(0) * 3)  # undeclared value 3 (and 6): skipped
    assert detect_layout(src) == "nifti"
    dest = tmp_path / "out"
    report = import_dataset(
        src,
        dest,
        channels="flair:MR=flair*;t1c=T1c_*",
        structures="1=tumour;2=edema",
        test_fraction=0,
        folds=2,
    )
    content = json.loads((dest / "dataset.json").read_text())
    assert content["channels"] == {"flair": "MR", "t1c": "MR"}
    assert content["labels"] == {"0": "background", "1": "tumour", "2": "edema"}
    reasons = {s["case"]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {"subject_1", "subject_3"}
    assert "2 files match the label patterns" in reasons["subject_1"]
    assert "label values [3, 6] are not declared" in reasons["subject_3"]
    entry = _load(dest / "dataset.json", "training")[0]
    assert entry["flair"].endswith("Flair_norm.nii.gz") and entry["label"].endswith("seg.nii.gz")


def test_nifti_label_file_named_by_a_glob(tmp_path):
    for i in range(2):
        _nii(tmp_path / "src" / f"s{i}" / "Flair_x.nii.gz", np.ones(SHAPE, np.float32))
        _nii(tmp_path / "src" / f"s{i}" / "brainmask.nii.gz", np.ones(SHAPE, np.uint8))
        _nii(tmp_path / "src" / f"s{i}" / "OTMultiClass.nii.gz", _label(i))
    report = import_dataset(
        tmp_path / "src", tmp_path / "out", channels="flair=Flair_*;label=ot*", folds=2, test_fraction=0
    )
    assert report["counts"]["taken"] == 2 and report["channels"] == {"flair": "MR"}
    entry = _load(tmp_path / "out" / "dataset.json", "training")[0]
    assert entry["label"].endswith("OTMultiClass.nii.gz") and "brainmask" not in json.dumps(entry)


def test_nifti_paired_folders_name_found_values(tmp_path):
    src = tmp_path / "plain"
    for i in range(3):
        _nii(src / "images" / f"c{i}.nii.gz", np.zeros(SHAPE, np.float32))
        _nii(src / "labels" / f"c{i}.nii.gz", _label(i))
    _nii(src / "images" / "lonely.nii.gz", np.zeros(SHAPE, np.float32))
    report = import_dataset(src, tmp_path / "out", test_fraction=0, folds=2)
    assert report["labels"] == {"0": "background", "1": "label_1", "2": "label_2"}
    assert report["channels"] == {"image": "OT"} and report["counts"]["taken"] == 3
    assert report["skipped"][0]["case"] == "lonely" and "unnamed" in report["notes"][0]


def test_bad_sources_are_named_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetImportError, match="no dataset.json, NIfTI files or DICOM files"):
        import_dataset(tmp_path / "empty", tmp_path / "out")
    src = _msd(tmp_path / "T", 3, 1)
    with pytest.raises(DatasetImportError, match="channels and labels come from dataset.json"):
        import_dataset(src, tmp_path / "out", structures="1=a")
    with pytest.raises(DatasetImportError, match="DEST must differ from SRC"):
        import_dataset(src, src)
    assert main(["import", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2


def test_dataset_fingerprint_covers_declared_channels(tmp_path):
    src = _msd(tmp_path / "Task01", 2, 2)
    import_dataset(src, tmp_path / "out", test_fraction=0, folds=2)
    before = dataset_fingerprint(tmp_path / "out" / "dataset.json")
    _nii(tmp_path / "out" / "images" / "pat_000_t1_gd.nii.gz", np.zeros((*SHAPE, 2), np.float32))
    assert dataset_fingerprint(tmp_path / "out" / "dataset.json") != before


# --- DICOM studies: RTSTRUCT written by our own writer, missing structures ------------------------------------


def _dicom_case(folder: Path, seed: int, names: dict[int, str], *, extra_series: bool = False) -> np.ndarray:
    """A small CT series, and an RTSTRUCT of a two-structure mask written by clinseg's writer; returns the mask."""
    affine = np.array([[-0.8, 0, 0, 20.0], [0, -0.8, 0, 10.0], [0, 0, 2.5, -30.0], [0, 0, 0, 1]])
    hu = np.random.default_rng(seed).integers(-100, 100, size=(24, 20, 6)).astype(np.int16)
    files = write_dicom_series(hu, affine, folder / "ct", uid_seed=f"case{seed}")
    mask = np.zeros(hu.shape, np.uint8)
    mask[4:14, 5:15, 1:5] = 1
    mask[15:20, 6:10, 2:4] = 2
    write_rtstruct(mask * np.isin(mask, list(names)), files, names, folder / "rs.dcm")
    if extra_series:
        write_dicom_series(hu[:, :, :3], affine, folder / "scout", uid_seed=f"scout{seed}")
    return mask * np.isin(mask, list(names))


def test_dicom_rtstruct_round_trip_aliases_and_missing_structures(tmp_path):
    src = tmp_path / "export"
    masks = {
        "p0": _dicom_case(src / "p0", 0, {1: "Lung_L", 2: "GTV 1"}),
        "p1": _dicom_case(src / "p1", 1, {1: "LUNG-LEFT", 2: "gtv-1"}, extra_series=True),
        "p2": _dicom_case(src / "p2", 2, {1: "Lung L"}),  # no GTV
    }
    (src / "notes").mkdir()
    assert detect_layout(src) == "dicom"
    spec = "1=Lung L|LUNG_LEFT;2=GTV-1"
    with pytest.raises(DatasetImportError, match=r"split|folds"):  # two cases left: 5 folds impossible
        import_dataset(src, tmp_path / "out", structures=spec, test_fraction=0)
    report = import_dataset(src, tmp_path / "out", structures=spec, test_fraction=0, folds=2)
    assert report["missing_structures"] == {"p2": ["GTV-1"]}
    reasons = {s["case"]: s["reason"] for s in report["skipped"]}
    assert "missing structure(s) ['GTV-1']" in reasons["p2"] and "--allow-missing" in reasons["p2"]
    assert "0 RTSTRUCT/SEG objects" in reasons["notes"]
    content = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert content["channels"] == {"ct": "CT"} and content["labels"] == {
        "0": "background",
        "1": "Lung L",
        "2": "GTV-1",
    }
    entries = {
        e["case"]: e
        for split in ("training", "validation")
        for e in _load(tmp_path / "out" / "dataset.json", split)
    }
    assert entries["p0"]["ct"] == str(
        (src / "p0").resolve()
    )  # one image series: the folder, read by LoadScand
    assert entries["p1"]["ct"] == str(
        (tmp_path / "out" / "images" / "p1_ct.nii.gz").resolve()
    )  # two: converted
    for case in ("p0", "p1"):
        loaded = LoadScand(keys=["ct", "label"], label_keys=["label"])(entries[case])
        np.testing.assert_array_equal(loaded["label"][0].numpy(), masks[case])
        np.testing.assert_allclose(loaded["label"].affine, loaded["ct"].affine, atol=1e-4)
        assert loaded["ct"].shape == loaded["label"].shape
    assert report["cases"]["p1"]["matched"] == {"Lung L": ["LUNG-LEFT"], "GTV-1": ["gtv-1"]}
    assert report["cases"]["p0"]["volumes_ml"]["Lung L"] == pytest.approx(
        {"structure": 400 * 0.8 * 0.8 * 2.5 / 1000, "label_map": 400 * 0.8 * 0.8 * 2.5 / 1000}, abs=0.01
    )
    assert report["cases"]["p0"]["contours_placed_by_plane"] == 0
    assert report["cases"]["p0"]["duplicate_contours_merged"] == {}

    kept = import_dataset(
        src, tmp_path / "out2", structures=spec, test_fraction=0, folds=2, allow_missing=True
    )
    assert kept["counts"]["taken"] == 3 and kept["missing_structures"] == {"p2": ["GTV-1"]}
    content = json.loads((tmp_path / "out2" / "dataset.json").read_text())
    p2 = next(e for s in ("training", "validation") for e in content[s] if e["case"] == "p2")
    assert p2["missing_labels"] == ["GTV-1"]

    # the command line: a patient skipped is exit code 3, all taken 0
    skipping = ["import", str(src), str(tmp_path / "cli"), "--structures", spec, "--test-fraction", "0"]
    assert main([*skipping, "--folds", "2"]) == 3
    assert main([*skipping, "--folds", "2", "--allow-missing"]) == 3  # 'notes' holds no label object: skipped
    (src / "notes").rmdir()
    assert main([*skipping, "--folds", "2", "--allow-missing"]) == 0


@pytest.mark.filterwarnings("ignore:The string .PHANTOM. is unlikely")
def test_dicom_seg_with_overlapping_segments_follows_the_overlap_rule(tmp_path):
    folder = tmp_path / "src" / "p0"
    affine = np.diag([-0.7, -0.7, 2.0, 1.0])
    files = write_dicom_series(np.zeros((16, 12, 4), np.int16), affine, folder / "ct", uid_seed="seg")
    organ = np.zeros((16, 12, 4), bool)
    organ[2:12, 2:10, :] = True
    lesion = np.zeros_like(organ)
    lesion[4:7, 4:7, 1:3] = True
    frames = np.stack([organ, lesion], axis=-1).transpose(2, 1, 0, 3)  # (Z, rows, columns, segments)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1,
            segment_label=name,
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for i, name in enumerate(["Liver", "Liver lesion"])
    ]
    hd.seg.Segmentation(
        source_images=[pydicom.dcmread(f) for f in files],
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=300,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="0",
    ).save_as(folder / "seg.dcm")
    report = import_dataset(
        tmp_path / "src", tmp_path / "out", structures="1=liver;2=LIVER_LESION", test_fraction=0, folds=1
    )
    assert report["cases"]["p0"]["label_object"] == "SEG" and report["cases"]["p0"]["overlap_voxels"] == {
        "liver&LIVER_LESION": 18
    }
    assert report["cases"]["p0"]["volumes_ml"]["liver"] == pytest.approx(
        {"structure": 320 * 0.49 * 2 / 1000, "label_map": (320 - 18) * 0.49 * 2 / 1000}, abs=0.01
    )
    label = nib.load(tmp_path / "out" / "labels" / "p0.nii.gz").get_fdata()
    np.testing.assert_array_equal(label, np.where(lesion, 2, np.where(organ, 1, 0)))


def test_dicom_without_structure_map_is_refused(tmp_path):
    _dicom_case(tmp_path / "src" / "p0", 0, {1: "a"})
    with pytest.raises(DatasetImportError, match="needs a structure map"):
        import_dataset(tmp_path / "src", tmp_path / "out", layout="dicom")


# --- real data ------------------------------------------------------------------------------------------------


def test_hippocampus_msd_import_split_folds_and_first_case_loads(shared_data, tmp_path):
    src = shared_data / "hippocampus"
    report = import_dataset(src, tmp_path / "a")
    assert report["counts"] == {
        "taken": 200,
        "skipped": 0,
        "training": 128,
        "validation": 32,
        "test": 40,
        "unlabelled": 0,
    }
    again = import_dataset(src, tmp_path / "b")
    datalist = json.loads((tmp_path / "a" / "dataset.json").read_text())
    assert datalist == json.loads((tmp_path / "b" / "dataset.json").read_text())
    assert report["cases"] == again["cases"]
    assert datalist["channels"] == {"mri": "MR"} and datalist["labels"]["1"] == "Anterior"
    fold3 = json.loads(fold_datalist(tmp_path / "a" / "dataset.json", 3, 5, seed=0).read_text())
    assert len(fold3["validation"]) == 32 and fold3["test"] == datalist["test"]
    assert {e["case"] for e in fold3["validation"]} == {
        c for c, v in report["cases"].items() if v["fold"] == 3
    }
    entry = _load(tmp_path / "a" / "dataset.json", "validation")[0]
    keys = [*datalist["channels"], "label"]
    loaded = LoadScand(keys=keys, label_keys=["label"])(entry)
    assert loaded["mri"].shape == loaded["label"].shape and set(np.unique(loaded["label"])) == {0, 1, 2}


@pytest.mark.slow
def test_nsclc_rtstruct_labels_on_the_ct_grid(shared_data, tmp_path):
    patient = shared_data / "nsclc" / "LUNG1-001"
    src = tmp_path / "export"
    src.mkdir()
    (src / "LUNG1-001").symlink_to(patient)
    spec = "1=GTV-1;2=Lung L|Lung_L|LUNG_LEFT;3=lung_r;4=SPINAL-CORD;5=Heart"
    with pytest.raises(DatasetImportError, match=r"missing structure\(s\) \['Heart'\]"):
        import_dataset(src, tmp_path / "strict", structures=spec, test_fraction=0, folds=1)
    assert json.loads((tmp_path / "strict" / "import_report.json").read_text())["missing_structures"] == {
        "LUNG1-001": ["Heart"]
    }
    report = import_dataset(
        src, tmp_path / "out", structures=spec, test_fraction=0, folds=1, allow_missing=True
    )
    case = report["cases"]["LUNG1-001"]
    assert case["label_object"] == "RTSTRUCT" and report["missing_structures"] == {"LUNG1-001": ["Heart"]}
    assert case["matched"] == {
        "GTV-1": ["GTV-1"],
        "Lung L": ["Lung L"],
        "lung_r": ["Lung R"],
        "SPINAL-CORD": ["Spinal cord"],
    }
    ml = {name: v["label_map"] for name, v in case["volumes_ml"].items()}
    own = {name: v["structure"] for name, v in case["volumes_ml"].items()}
    assert all(own[n] >= ml[n] for n in ml) and own["Lung L"] > ml["Lung L"]  # the GTV takes part of it
    assert case["contours_placed_by_plane"] == case["contours"] == 21 + 117 + 98 + 84  # refs absent from the CT
    assert any("placed on the slice of their plane position" in note for note in report["notes"])
    assert 100 < ml["GTV-1"] < 250 and 1500 < ml["Lung L"] < 4000 and 1500 < ml["lung_r"] < 4500
    assert (
        10 < ml["SPINAL-CORD"] < 100 and case["overlap_voxels"]
    )  # the GTV reaches into the left lung: it wins
    entry = _load(tmp_path / "out" / "dataset.json", "training")[0]
    assert entry["ct"] == str(patient.resolve())  # RTPLAN/RTDOSE beside it: one image series, read in place
    loaded = LoadScand(keys=["ct", "label"], label_keys=["label"])(entry)
    assert loaded["ct"].shape == loaded["label"].shape == (1, 512, 512, 134)
    np.testing.assert_allclose(loaded["label"].affine, loaded["ct"].affine, atol=1e-4)
    label = loaded["label"][0].numpy()
    assert set(np.unique(label)) == {0, 1, 2, 3, 4}

    # our own writer's structure set of these labels, imported again, gives the same labels back
    mirror = tmp_path / "mirror" / "p"
    mirror.mkdir(parents=True)
    files = sorted(loaded["ct"].meta["dicom_files"])
    for f in files:
        (mirror / Path(f).name).symlink_to(f)
    write_rtstruct(
        label,
        loaded["ct"].meta["dicom_files"],
        {1: "GTV-1", 2: "Lung L", 3: "Lung R", 4: "Spinal cord"},
        mirror / "rs_clinseg.dcm",
        min_component_mm3=0,  # the exact label map: the GTV's specks below 20 mm³ too
    )
    again = import_dataset(
        mirror.parent, tmp_path / "out2", structures=spec.replace(";5=Heart", ""), test_fraction=0, folds=1
    )
    back = nib.load(tmp_path / "out2" / "labels" / "p.nii.gz").get_fdata()
    np.testing.assert_array_equal(back, label)
    assert {n: v["structure"] for n, v in again["cases"]["p"]["volumes_ml"].items()} == ml


def test_dcmqi_seg_labels_equal_the_reference_nifti(shared_data, tmp_path):
    case = tmp_path / "src" / "liver_case"
    case.mkdir(parents=True)
    for f in [
        *sorted((shared_data / "dcmqi" / "ct_3slice").glob("*.dcm")),
        shared_data / "dcmqi" / "liver_seg.dcm",
    ]:
        (case / f.name).symlink_to(f)
    report = import_dataset(
        tmp_path / "src", tmp_path / "out", structures="1=liver", test_fraction=0, folds=1
    )
    assert report["cases"]["liver_case"]["label_object"] == "SEG"
    assert report["cases"]["liver_case"]["matched"] == {"liver": ["Liver"]}
    entry = _load(tmp_path / "out" / "dataset.json", "training")[0]
    loaded = LoadScand(keys=["ct", "label"], label_keys=["label"])(entry)
    reference = LoadScand(keys=["label"], label_keys=["label"])(
        {"label": str(shared_data / "dcmqi" / "liver_seg.nii.gz")}
    )
    np.testing.assert_array_equal(loaded["label"].numpy(), (reference["label"] == 1).numpy().astype(np.int32))
    np.testing.assert_allclose(loaded["label"].affine, reference["label"].affine, atol=1e-4)
    assert int(loaded["label"].sum()) == 107098


# --- nnU-Net's own folds, split checks before reading, the RTSTRUCT fill rule ---------------------------------


def _splits_final(src: Path, folds: list[list[str]]) -> None:
    every = sorted(c for fold in folds for c in fold)
    content = [{"train": [c for c in every if c not in val], "val": val} for val in folds]
    (src / "splits_final.json").write_text(json.dumps(content))


def test_nnunet_splits_final_gives_the_folds(tmp_path):
    src = _nnunet(tmp_path / "Dataset501_BraTS", 6)  # takes BRATS_000, 002, 003, 004, 005
    folds = [["BRATS_000", "BRATS_004"], ["BRATS_002", "BRATS_003", "BRATS_005"]]
    _splits_final(src, folds)
    report = import_dataset(src, tmp_path / "out", test_fraction=0.4, folds=5)  # both overridden by the file
    content = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert sorted(e["case"] for e in content["validation"]) == folds[0]
    assert sorted(e["case"] for e in content["training"]) == folds[1] and content["test"] == []
    assert content["folds"]["k"] == 2 and "splits_final.json" in content["folds"]["rule"]
    assert {c: report["cases"][c]["fold"] for c in report["cases"]} == {c: k for k, f in enumerate(folds) for c in f}
    assert any("nnU-Net's splits_final.json" in note for note in report["notes"])
    fold1 = json.loads(fold_datalist(tmp_path / "out" / "dataset.json", 1, 2).read_text())
    assert sorted(e["case"] for e in fold1["validation"]) == folds[1]
    with pytest.raises(ValueError, match=r"fix 2 folds .* folds=3 contradicts it"):
        fold_datalist(tmp_path / "out" / "dataset.json", 1, 3)


@pytest.mark.parametrize(
    "folds, match",
    [
        ([["BRATS_000", "BRATS_004"], ["BRATS_002", "BRATS_003"]], r"in no fold: BRATS_005"),
        ([["BRATS_000", "BRATS_004", "BRATS_009"], ["BRATS_002", "BRATS_003", "BRATS_005"]], r"not imported: BRATS_009"),
        ([["BRATS_000", "BRATS_004"], ["BRATS_000", "BRATS_002", "BRATS_003", "BRATS_005"]], r"folds 0 and 1"),
    ],
)
def test_nnunet_splits_final_that_does_not_match_is_refused(tmp_path, folds, match):
    src = _nnunet(tmp_path / "D", 6)
    _splits_final(src, folds)
    with pytest.raises(DatasetImportError, match=rf"splits_final\.json.*{match}"):
        import_dataset(src, tmp_path / "out")


def test_dicom_split_parameters_are_checked_before_rasterising(tmp_path, monkeypatch):
    src = tmp_path / "export"
    _dicom_case(src / "p0", 0, {1: "Lung_L"})
    read = []
    monkeypatch.setattr("pipeline.datasets.importer.read_dicom_studies", lambda *a, **k: read.append(a))
    with pytest.raises(DatasetImportError, match=r"5 folds need at least 5 non-test cases; the folder holds 1 case"):
        import_dataset(src, tmp_path / "out", structures="1=Lung L")
    assert read == []


@pytest.mark.parametrize("rule", ["centre", "boundary"])
def test_rtstruct_fill_rule_is_selectable_and_reported(tmp_path, rule):
    src = tmp_path / "export"
    masks = {f"p{i}": _dicom_case(src / f"p{i}", i, {1: "Lung_L"}) for i in range(2)}
    report = import_dataset(src, tmp_path / "out", structures="1=Lung L", test_fraction=0, folds=2,
                            contour_rule=rule)
    entry = next(e for e in _load(tmp_path / "out" / "dataset.json", "training"))
    label = LoadScand(keys=["ct", "label"], label_keys=["label"])(entry)["label"][0].numpy() > 0
    truth = masks[entry["case"]] > 0
    assert any(f"by the {'voxel-centre' if rule == 'centre' else 'boundary-inclusive'} rule" in n
               for n in report["notes"])
    if rule == "centre":
        np.testing.assert_array_equal(label, truth)
    else:  # a superset: the contour line runs through the outer ring of the written mask's voxels, or beyond
        assert (label & truth).sum() == truth.sum() and label.sum() > truth.sum()
    with pytest.raises(DatasetImportError, match="contour rule must be one of"):
        import_dataset(src, tmp_path / "bad", structures="1=Lung L", folds=2, contour_rule="inside")
