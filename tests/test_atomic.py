"""Atomic writes leave either the old file or the new one, never a partial one; markers gate resumption."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from pipeline.core.atomic import (
    COMPLETE_MARKER,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    clear_complete,
    is_complete,
    mark_complete,
)
from transforms.io.atomic import atomic_folder, atomic_write


def test_temp_name_is_hidden_in_same_folder_and_keeps_suffixes(tmp_path):
    with atomic_write(tmp_path / "seg.nii.gz") as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(".tmp-") and tmp.name.endswith("-seg.nii.gz")
        # nibabel infers gzip + NIfTI from the suffix of the temporary name
        nib.save(nib.Nifti1Image(np.zeros((2, 3, 4), np.uint8), np.eye(4)), tmp)
    assert [p.name for p in tmp_path.iterdir()] == ["seg.nii.gz"]
    with open(tmp_path / "seg.nii.gz", "rb") as f:
        assert f.read(2) == b"\x1f\x8b"  # gzip magic: the suffix chain was honoured
    assert nib.load(tmp_path / "seg.nii.gz").shape == (2, 3, 4)


def test_failure_keeps_old_file_and_removes_temp(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_write(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_block_that_writes_nothing_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing was written"), atomic_write(tmp_path / "x.txt"):
        pass
    assert not list(tmp_path.iterdir())


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        atomic_write_text(tmp_path / "nope" / "x.txt", "a")


def test_text_bytes_json_round_trip(tmp_path):
    assert atomic_write_text(tmp_path / "a.txt", "héllo\n").read_text(encoding="utf-8") == "héllo\n"
    assert atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert json.loads(atomic_write_json(tmp_path / "c.json", {"a": [1, 2]}).read_text()) == {"a": [1, 2]}
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "d.json", {"a": float("nan")})
    assert not (tmp_path / "d.json").exists()


def _case(tmp_path):
    case = tmp_path / "case001"
    case.mkdir()
    (case / "seg.nii.gz").write_bytes(b"x" * 10)
    (case / "volumes.csv").write_text("case,label\n")
    return case


def test_complete_only_after_marker(tmp_path):
    case = _case(tmp_path)
    names = ["seg.nii.gz", "volumes.csv"]
    assert not is_complete(case, names)
    mark_complete(case, names, info={"bundle": "b", "version": "1"})
    assert (case / COMPLETE_MARKER).is_file()
    assert is_complete(case, names)
    assert is_complete(case, names, info={"bundle": "b", "version": "1"})
    assert not is_complete(case, names, info={"bundle": "b", "version": "2"})
    assert not is_complete(case, names + ["preview.png"])  # an output the marker does not list


@pytest.mark.parametrize("damage", ["truncate", "delete", "corrupt_marker", "clear"])
def test_damage_after_marker_means_incomplete(tmp_path, damage):
    case = _case(tmp_path)
    names = ["seg.nii.gz", "volumes.csv"]
    mark_complete(case, names)
    if damage == "truncate":
        (case / "seg.nii.gz").write_bytes(b"x" * 5)
    elif damage == "delete":
        (case / "volumes.csv").unlink()
    elif damage == "corrupt_marker":
        (case / COMPLETE_MARKER).write_text('{"outputs": ')
    else:
        clear_complete(case)
    assert not is_complete(case, names)


def test_mark_complete_rejects_missing_or_escaping_outputs(tmp_path):
    case = _case(tmp_path)
    with pytest.raises(FileNotFoundError, match="preview.png"):
        mark_complete(case, ["seg.nii.gz", "preview.png"])
    with pytest.raises(ValueError, match="relative path"):
        mark_complete(case, ["../elsewhere.txt"])
    assert not (case / COMPLETE_MARKER).exists()


@pytest.mark.parametrize("existing", [False, True])
def test_atomic_folder_replaces_whole_or_not_at_all(tmp_path, existing):
    target = tmp_path / "ct_dicom"
    if existing:
        target.mkdir()
        (target / "old.dcm").write_bytes(b"old")
    with atomic_folder(target) as staging:
        assert staging.parent == tmp_path and staging.name.startswith(".tmp-")
        assert not (target / "new.dcm").exists()
        (staging / "new.dcm").write_bytes(b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct_dicom"]
    assert sorted(p.name for p in target.iterdir()) == ["new.dcm"]
    with pytest.raises(RuntimeError, match="killed"), atomic_folder(target) as staging:
        (staging / "half.dcm").write_bytes(b"half")
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct_dicom"]
    assert sorted(p.name for p in target.iterdir()) == ["new.dcm"]


@pytest.mark.parametrize("writer", [atomic_write, atomic_folder])
def test_atomic_writers_name_a_missing_parent(tmp_path, writer):
    with pytest.raises(FileNotFoundError, match="missing"), writer(tmp_path / "missing" / "x"):
        pass
