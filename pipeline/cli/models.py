"""``clinseg export``, ``register-model`` and ``tracking sync``: trained runs as bundles and registered models."""

from __future__ import annotations

import argparse

from pipeline.cli.common import checked, command
from pipeline.cli.inference_flags import add_nnunet_options
from pipeline.inference.nnunet_folder import is_nnunet_uri


def cmd_export(args: argparse.Namespace) -> int:
    from pipeline.export.bundle import export_bundle

    out = export_bundle(args.run, args.out, bundle=args.bundle, version=args.version, overwrite=args.overwrite)
    print(f"wrote bundle {out} (clinseg predict {out} --input ... needs no --checkpoint)")
    return 0


def cmd_register_model(args: argparse.Namespace) -> int:
    if is_nnunet_uri(args.run):
        from pipeline.export.nnunet_registry import register_nnunet_folder

        if args.bundle:
            raise ValueError(f"{args.run}: --bundle is for training runs, an nnU-Net folder has no bundle")
        registered = register_nnunet_folder(
            args.run, args.name, folds=args.nnunet_folds, checkpoint_name=args.checkpoint_name,
            tracking_uri=args.tracking_uri, alias=args.alias,
        )  # fmt: skip
    else:
        from pipeline.export.registry import register_run

        if args.nnunet_folds:
            raise ValueError(f"{args.run}: --folds is for an nnU-Net folder (nnunet:PATH), not a training run")
        registered = register_run(
            args.run, args.name, bundle=args.bundle, tracking_uri=args.tracking_uri, alias=args.alias
        )
    print(registered.summary())
    return 0


def cmd_tracking_sync(args: argparse.Namespace) -> int:
    from pipeline.tracking.sync import sync_run

    report = sync_run(args.run_dir, tracking_uri=args.tracking_uri)
    print(report.summary_line())
    return 3 if report.left else 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub, "export", "pack a training run as a self-contained MONAI bundle (configs as run, weights, metrics)",
        epilog="OUT gets configs/ (train, inference, evaluate: standalone, the run's settings; metadata.json with "
        "the measured metrics), models/model.pt and model.ts, docs/README.md and LICENSE. It runs with clinseg "
        "predict OUT, python -m monai.bundle run --config_file OUT/configs/inference.yaml, and MONAI Label.",
    )  # fmt: skip
    p.add_argument("run", help="the run's checkpoint folder (--ckpt-dir of clinseg train) or a checkpoint in it")
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--bundle", help="the bundle that trained it (default: the bundle_root of its config_run.json)")
    p.add_argument("--version", help="version of the export (default: the bundle's version + the run's timestamp)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    checked(p, cmd_export, paths=("run",))

    p = command(
        sub, "register-model", "register a model in the MLflow Model Registry: a training run's best model as a "
        "bundle, or an nnU-Net v2 trained-model folder",
        epilog="A training run's exported bundle (clinseg export) is logged as its bundle/ artifact and becomes the "
        "new version's source. nnunet:PATH (nnUNet_results/DatasetXXX_NAME/TRAINER__PLANS__CONFIGURATION) is "
        "checked (plans.json, dataset.json, each chosen fold's checkpoint, read as data only) and logged as a new "
        "run of experiment clinseg-models: its nnunet_model/ artifact holds plans.json, dataset.json, "
        "dataset_fingerprint.json and the chosen folds' --checkpoint-name file, nothing else; params name the "
        "dataset, plans, configuration, trainer, folds, checkpoint and labels. Predict with either: clinseg predict "
        "models:/NAME/VERSION (or models:/NAME@ALIAS; an nnU-Net model takes --folds and --checkpoint-name there "
        "too). Credentials only from the environment (MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN).",
    )  # fmt: skip
    p.add_argument("run", help="the run's checkpoint folder (its journal names the MLflow run), an MLflow run id, "
                               "or nnunet:PATH, an nnU-Net v2 trained-model folder")
    p.add_argument("name", help="registered model name")
    p.add_argument("--bundle", help="the bundle that trained it (default: from the run's config as run)")
    p.add_argument("--tracking-uri",
                   help="MLflow store and registry (default: the store a run folder logged to, else "
                        "MLFLOW_TRACKING_URI or ./mlflow.db)")
    p.add_argument("--alias", help="point this alias (e.g. champion) at the new version")
    add_nnunet_options(p)
    checked(p, cmd_register_model)

    p = command(sub, "tracking", "MLflow tracking kept on disk while the server was unreachable")
    tracking = p.add_subparsers(dest="tracking_command", required=True, metavar="ACTION", help="one of:")
    p = command(tracking, "sync", "replay a run's journaled MLflow calls (exit 3 when some are still unsynced)")
    p.add_argument("run_dir", help="the run's checkpoint folder (--ckpt-dir of clinseg train) or its mlflow_journal")
    p.add_argument("--tracking-uri", help="MLflow store to replay to (default: the one the run was started with)")
    checked(p, cmd_tracking_sync, paths=("run_dir",))
