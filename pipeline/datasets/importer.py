"""``import_dataset``: detect a source's layout, read it, split it, write ``dataset.json`` and ``import_report.json``.

The datalist holds ``training`` / ``validation`` / ``test`` lists of ``{"case", <channel>..., "image", "label"}``
entries (``image`` is the reference channel, the first; files written by the import relative to the datalist's
folder, sources left in place absolute), ``unlabelled`` entries when the source has some, ``channels``
(name -> modality, in order), ``labels`` (value -> name), ``regions`` (nnU-Net region labels), ``source`` and
``folds``. The split is :mod:`pipeline.datasets.split`; the overlap rule of DICOM structures is
:mod:`pipeline.datasets.structures`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipeline.core.atomic import atomic_write_json
from pipeline.datasets.dicom_study import case_folders, read_dicom_studies
from pipeline.datasets.model import Case, DatasetImportError, LayoutResult
from pipeline.datasets.msd import read_msd
from pipeline.datasets.nifti_files import is_nifti
from pipeline.datasets.nifti_folder import read_nifti_folder
from pipeline.datasets.nnunet import read_nnunet
from pipeline.datasets.split import check_split, splits_from_nnunet, split_cases
from pipeline.datasets.structures import parse_structures
from transforms.dicom.discovery import read_header, walk_files
from pipeline.outputs.contour_fill import CONTOUR_RULES

LAYOUTS = ("auto", "msd", "nnunet", "dicom", "nifti")
SPLIT_RULE = (
    "test = the round(test_fraction * n) cases of lowest sha256('<seed>:<case>'); the rest dealt into k "
    "patient-disjoint folds (pipeline.core.splits.split_folds, same seed); validation = fold 0"
)


def detect_layout(src: Path) -> str:
    """``msd``, ``nnunet``, ``dicom`` or ``nifti`` from what ``src`` holds.

    Raises:
        DatasetImportError: nothing importable found.
    """
    manifest = src / "dataset.json"
    if manifest.is_file():
        try:
            content = json.loads(manifest.read_text())
        except json.JSONDecodeError as err:
            raise DatasetImportError(f"{manifest} is not valid JSON: {err}") from err
        if isinstance(content, dict) and ("channel_names" in content or "file_ending" in content):
            return "nnunet"
        if isinstance(content, dict) and "modality" in content:
            return "msd"
        raise DatasetImportError(
            f"{manifest}: neither MSD ('modality', 'training') nor nnU-Net v2 ('channel_names', 'file_ending')"
        )
    files = walk_files(src)
    if any(is_nifti(p) for p in files):
        return "nifti"
    if any(read_header(p) is not None for p in files[:200]):
        return "dicom"
    raise DatasetImportError(f"{src}: no dataset.json, NIfTI files or DICOM files found")


def _rel(path: str, dest: Path) -> str:
    """``path`` relative to ``dest`` when it lies inside (converted files), else absolute (sources in place)."""
    inside = Path(path).resolve().is_relative_to(dest.resolve())
    return os.path.relpath(path, dest.resolve()) if inside else str(Path(path).resolve())


def _entry(item: Case, dest: Path, with_label: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"case": item.case}
    entry.update({name: _rel(p, dest) for name, p in item.channels.items()})
    entry.setdefault("image", entry[next(iter(item.channels))])
    if with_label:
        entry["label"] = _rel(item.label, dest)
    entry.update(item.extra)
    return entry


CONTOUR_NOTES = {
    "centre": "RTSTRUCT contours filled by the voxel-centre rule: a voxel is inside when its centre lies inside "
    "the contour (--contour-rule boundary also takes the voxels the contour line passes through)",
    "boundary": "RTSTRUCT contours filled by the boundary-inclusive rule: voxels whose centre lies inside the "
    "contour and every voxel the contour line passes through (as rt-utils); structures are about one voxel "
    "ring larger than by the default voxel-centre rule",
}


def _read(
    layout: str,
    src: Path,
    dest: Path,
    structures: str | None,
    channels: str | None,
    allow_missing: bool,
    contour_rule: str,
    split: tuple[float, int],
) -> LayoutResult:
    if layout in ("msd", "nnunet") and (structures or channels):
        raise DatasetImportError(
            f"{layout}: channels and labels come from dataset.json; drop structures/channels"
        )
    if layout == "msd":
        return read_msd(src, dest)
    if layout == "nnunet":
        return read_nnunet(src)
    names = parse_structures(structures) if structures else None
    if layout == "dicom":
        if names is None:
            raise DatasetImportError("DICOM import needs a structure map (e.g. '1=GTV-1;2=Lung L|LUNG_LEFT')")
        check_split(len(case_folders(src)), test_fraction=split[0], folds=split[1], source=src)  # before rasterising
        return read_dicom_studies(src, dest, names, allow_missing=allow_missing, contour_rule=contour_rule)
    labels = {v: n[0] for v, n in names.items()} if names else None
    return read_nifti_folder(src, channels=channels, labels=labels)


def import_dataset(
    src: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    layout: str = "auto",
    structures: str | None = None,
    channels: str | None = None,
    test_fraction: float = 0.2,
    folds: int = 5,
    seed: int = 0,
    allow_missing: bool = False,
    contour_rule: str = "centre",
) -> dict[str, Any]:
    """Import a dataset folder as ``dest/dataset.json`` plus ``dest/import_report.json``.

    Args:
        src: MSD task folder, nnU-Net v2 raw dataset folder, folder of DICOM case folders, or NIfTI folder.
        dest: output folder (created); converted files go to ``dest/images`` and ``dest/labels``.
        layout: one of :data:`LAYOUTS`.
        structures: DICOM: label -> structure names map (``"1=GTV-1;2=Lung L|LUNG_LEFT"`` or a ``.json`` file);
            NIfTI folders: label value -> name.
        channels: NIfTI case folders: ``name[:MODALITY]=glob;...`` channel patterns (``label=glob``: the label file).
        test_fraction: share of cases held out as ``test``.
        folds: cross-validation folds over the other cases (fold 0 = ``validation``; 1: no validation split).
        seed: split seed.
        allow_missing: DICOM: take cases lacking mapped structures (reported) instead of skipping them.
        contour_rule: RTSTRUCT: which voxels a contour covers, ``"centre"`` (voxel centre inside) or
            ``"boundary"`` (also those its line passes through), :mod:`pipeline.outputs.contour_fill`.

    Returns:
        The report (also written as ``import_report.json``).

    Raises:
        DatasetImportError: unknown layout, unreadable source, too few cases for the split, or no case taken
            (the report is written first, naming why each case was skipped).
    """
    src, dest = Path(src).resolve(), Path(dest)
    if not src.is_dir():
        raise DatasetImportError(f"{src}: not a folder")
    if layout not in LAYOUTS:
        raise DatasetImportError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    dest.mkdir(parents=True, exist_ok=True)
    if dest.resolve() == src:
        raise DatasetImportError("DEST must differ from SRC (dataset.json would overwrite the source's)")
    layout = detect_layout(src) if layout == "auto" else layout
    if contour_rule not in CONTOUR_RULES:
        raise DatasetImportError(f"contour rule must be one of {CONTOUR_RULES}, got {contour_rule!r}")
    result = _read(layout, src, dest, structures, channels, allow_missing, contour_rule, (test_fraction, folds))
    if layout == "dicom":
        result.notes.append(CONTOUR_NOTES[contour_rule])
    split_of, fold_of = {}, {}
    if result.cases and result.splits_file:
        split_of, fold_of = splits_from_nnunet([c.case for c in result.cases], result.splits_file)
        folds = max(fold_of.values()) + 1
        for item in result.cases:
            item.extra["fold"] = fold_of[item.case]
        result.notes.append(
            f"folds: the {folds} of nnU-Net's {result.splits_file.name} (fold 0 = validation; no test split, "
            "imagesTs is nnU-Net's test set); --test-fraction and --seed do not apply"
        )
    elif result.cases:
        split_of, fold_of = split_cases(
            [c.case for c in result.cases], test_fraction=test_fraction, folds=folds, seed=seed
        )
    datalist = _datalist(result, dest, split_of, folds, seed)
    report = _report(result, datalist, split_of, fold_of, dest)
    atomic_write_json(dest / "import_report.json", report)
    if not result.cases:
        reasons = "; ".join(f"{s.case}: {s.reason}" for s in result.skipped[:5])
        raise DatasetImportError(
            f"{src}: no case could be imported as {layout}; see {dest / 'import_report.json'}"
            + (f" ({reasons})" if reasons else "")
        )
    atomic_write_json(dest / "dataset.json", datalist)
    return report


def _datalist(
    result: LayoutResult, dest: Path, split_of: dict[str, str], folds: int, seed: int
) -> dict[str, Any]:
    datalist: dict[str, Any] = {
        "name": result.source.name,
        "description": f"imported by clinseg import from a {result.layout} layout",
        "channels": result.channels,
        "labels": {str(k): v for k, v in sorted(result.labels.items())},
    }
    if result.regions:
        datalist["regions"] = result.regions
    for split in ("training", "validation", "test"):
        datalist[split] = [_entry(c, dest, True) for c in result.cases if split_of[c.case] == split]
    if result.unlabelled:
        datalist["unlabelled"] = [_entry(c, dest, False) for c in result.unlabelled]
    datalist.update(
        numTraining=len(datalist["training"]),
        numValidation=len(datalist["validation"]),
        numTest=len(datalist["test"]),
    )
    datalist["source"] = {"layout": result.layout, "path": str(result.source)}
    datalist["folds"] = {
        "k": folds,
        "seed": seed,
        "patient_key": "case",
        "validation_fold": 0,
        "rule": f"nnU-Net's {result.splits_file} (each entry's fold)" if result.splits_file else SPLIT_RULE,
    }
    return datalist


def _report(
    result: LayoutResult,
    datalist: dict[str, Any],
    split_of: dict[str, str],
    fold_of: dict[str, int],
    dest: Path,
) -> dict[str, Any]:
    return {
        "source": datalist["source"],
        "dataset": str((dest / "dataset.json").resolve()) if result.cases else None,
        "counts": {
            "taken": len(result.cases),
            "skipped": len(result.skipped),
            "training": datalist["numTraining"],
            "validation": datalist["numValidation"],
            "test": datalist["numTest"],
            "unlabelled": len(result.unlabelled),
        },
        "channels": result.channels,
        "labels": datalist["labels"],
        "folds": datalist["folds"],
        "skipped": [{"case": s.case, "reason": s.reason} for s in result.skipped],
        "missing_structures": result.missing,
        "notes": result.notes,
        "cases": {
            c.case: {
                "split": split_of[c.case],
                "fold": fold_of.get(c.case),
                "converted": [_rel(p, dest) for p in c.converted],
                **c.details,
            }
            for c in result.cases
        },
    }


def summary(report: dict[str, Any]) -> str:
    """A few lines for the terminal: counts, the split, skipped cases and missing structures."""
    n = report["counts"]
    lines = [
        (
            f"imported {n['taken']} case(s) ({report['source']['layout']}): {n['training']} training, "
            f"{n['validation']} validation, {n['test']} test, {n['unlabelled']} unlabelled; "
            f"{report['folds']['k']} folds, seed {report['folds']['seed']}; skipped {n['skipped']}"
        ),
        f"channels {report['channels']}, labels {report['labels']}",
    ]
    lines += [f"skipped {s['case']}: {s['reason']}" for s in report["skipped"]]
    lines += [
        f"missing in {case}: {', '.join(names)}" for case, names in report["missing_structures"].items()
    ]
    lines += [f"note: {note}" for note in report["notes"]]
    lines.append(f"wrote {report['dataset']} and import_report.json beside it")
    return "\n".join(lines)
