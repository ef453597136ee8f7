"""``clinseg synth``, ``demo``, ``inspect``, ``convert``, ``import`` and ``register``: data in and out."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.cli.common import checked, command


def cmd_synth(args: argparse.Namespace) -> int:
    from pipeline.synthetic.phantoms import synthesize

    formats = ("nifti", "dicom") if args.format == "both" else (args.format,)
    path = synthesize(Path(args.out), cases=args.cases, seed=args.seed, spatial_dims=args.dims, formats=formats)
    print(f"wrote {args.cases} synthetic patients and {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import run_demo

    run_demo(Path(args.workdir), cases=args.cases, max_epochs=args.epochs, seed=args.seed)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from pipeline.batch.report import EXIT_OK, EXIT_SOME_FAILED
    from transforms.io.inspect import format_inspection, has_problems, inspect_path

    rows = inspect_path(args.path)
    print(json.dumps(rows, indent=2, default=str) if args.json else format_inspection(rows))
    return EXIT_SOME_FAILED if has_problems(rows) else EXIT_OK


def cmd_convert(args: argparse.Namespace) -> int:
    from transforms.io.inspect import convert_to_nifti

    out = convert_to_nifti(args.path, args.out, series_uid=args.series)
    print(f"wrote {out}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from pipeline.datasets.importer import import_dataset, summary

    report = import_dataset(
        args.src,
        args.dest,
        layout=args.layout,
        structures=args.structures,
        channels=args.channels,
        test_fraction=args.test_fraction,
        folds=args.folds,
        seed=args.seed,
        allow_missing=args.allow_missing,
        contour_rule=args.contour_rule,
    )
    print(summary(report))
    return 3 if report["counts"]["skipped"] else 0


def cmd_register(args: argparse.Namespace) -> int:
    from pipeline.datasets.register import register_files, transform_path

    transform = args.transform or transform_path(args.out)
    result = register_files(args.fixed, args.moving, args.out, transform_out=transform, deformable=args.deformable)
    print(f"final metric (Mattes MI): {result.metric:.4f}")
    print(f"{result.summary()}; wrote {args.out} and {transform}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "synth", "write deterministic synthetic CT/MR patients and a dataset.json")
    p.add_argument("out", help="output folder (patients/ and dataset.json are written inside)")
    p.add_argument("--cases", type=int, default=10, help="number of patients")
    p.add_argument("--seed", type=int, default=0, help="dataset seed; the same seed writes the same patients")
    p.add_argument("--dims", type=int, choices=(2, 3), default=3, help="3: volumes, 2: single slices")
    p.add_argument("--format", choices=("nifti", "dicom", "both"), default="nifti",
                   help="CT as NIfTI, as DICOM series, or both (MR and labels are always NIfTI)")
    checked(p, cmd_synth)

    p = command(sub, "demo", "synthesize, train, validate and predict end to end on CPU")
    p.add_argument("--workdir", default="clinseg-demo", help="folder for data, runs, MLflow store and predictions")
    p.add_argument("--cases", type=int, default=20, help="synthetic patients")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the demo's tuned value)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the training run")
    checked(p, cmd_demo)

    p = command(sub, "inspect", "list the DICOM series / NIfTI images under a path and their problems",
                 epilog="exit codes: 0 every image loads cleanly; 3 some image has problems or none was found; "
                 "2 the path does not exist.")
    p.add_argument("path", help="file or folder to inspect")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    checked(p, cmd_inspect, paths=("path",))

    p = command(sub, "convert", "write a DICOM series (or any loadable scan) as NIfTI with its geometry")
    p.add_argument("path", help="DICOM series folder or scan file")
    p.add_argument("out", help="output .nii.gz")
    p.add_argument("--series", help="SeriesInstanceUID when the folder holds several series")
    checked(p, cmd_convert, paths=("path",))

    p = command(
        sub, "import", "import an MSD, nnU-Net v2, DICOM (RTSTRUCT/SEG) or NIfTI dataset as a datalist",
        epilog="writes DEST/dataset.json (named channels, label names, training/validation/test split, folds) and "
        "DEST/import_report.json (cases taken, skipped and why, structures missing per patient); images stay in "
        "place unless converted (4D MSD images, DICOM labels). exit codes: 0 every case taken; 3 some cases "
        "skipped (the datalist holds the rest; see import_report.json); 2 nothing importable or a usage error.",
    )
    p.add_argument("src", help="dataset folder: MSD task, nnU-Net raw dataset, DICOM case folders or NIfTI folder")
    p.add_argument("dest", help="output folder for dataset.json, import_report.json and converted files")
    p.add_argument("--layout", choices=("auto", "msd", "nnunet", "dicom", "nifti"), default="auto",
                   help="source layout (auto: from dataset.json's keys, else NIfTI or DICOM files)")
    p.add_argument("--structures", help="DICOM: label=structure names map, aliases after '|' (case, spaces, "
                   "'_' and '-' ignored), e.g. '1=GTV-1;2=Lung L|LUNG_LEFT', or a .json file; NIfTI: label names")
    p.add_argument("--channels", help="NIfTI case folders: channel globs NAME[:MODALITY]=GLOB;... and label=GLOB, "
                   "e.g. 'flair:MR=Flair_*;t1c:MR=T1c_*;label=OTMulti*' (default: one channel per file name, "
                   "label from label*/seg*/gt* files)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="share of patients held out as the test split")
    p.add_argument("--folds", type=int, default=5,
                   help="patient-level cross-validation folds (fold 0 is the validation split; 1: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the test split and the folds")
    p.add_argument("--allow-missing", action="store_true",
                   help="DICOM: keep patients lacking a mapped structure (listed in the entry's missing_labels: "
                   "the loss and the metrics ignore that class for the patient) instead of skipping them")
    p.add_argument("--contour-rule", choices=("centre", "boundary"), default="centre",
                   help="RTSTRUCT: a voxel is inside a contour when its centre is (centre, default), or also when "
                   "the contour line passes through it (boundary, as rt-utils: about one voxel ring larger)")
    checked(p, cmd_import, paths=("src",))

    p = command(
        sub, "register", "align a scan to a reference scan (rigid, affine, optionally B-spline; mutual information)",
        epilog="Writes OUT (the moving scan resampled onto FIXED's grid, linear) and the fixed -> moving transform "
        "(ITK .tfm, default: OUT's name with .tfm). Use it when channels come from different series or grids.",
    )  # fmt: skip
    p.add_argument("fixed", help="reference scan (NIfTI file or DICOM folder); the output takes its grid")
    p.add_argument("moving", help="scan to align (NIfTI file or DICOM folder)")
    p.add_argument("out", help="output .nii.gz")
    p.add_argument("--transform", metavar="TFM", help="transform file to write (default: OUT with .tfm)")
    p.add_argument("--deformable", action="store_true", help="add a B-spline stage after the affine one")
    checked(p, cmd_register, paths=("fixed", "moving"))
