"""``clinseg train``, ``plan`` and ``qc-reference``: models from datasets."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.cli.common import add_config_overlays, checked, command, duration, overrides


def cmd_train(args: argparse.Namespace) -> int:
    from pipeline.training.train import train_bundle

    result = train_bundle(
        args.bundle, dataset_dir=args.dataset_dir, ckpt_dir=args.ckpt_dir, tracking_uri=args.tracking_uri,
        max_epochs=args.epochs, resume=args.resume, fold=args.fold, folds=args.folds, fold_seed=args.fold_seed,
        overrides=overrides(args.set), config=["train", *args.config], time_budget_s=args.time_budget,
    )  # fmt: skip
    print(result.summary())
    if args.register:
        from pipeline.export.registry import register_run

        print(register_run(result.ckpt_dir, args.register, bundle=args.bundle, alias=args.alias).summary())
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from pipeline.planning.planner import plan_dataset

    plan = plan_dataset(
        args.dataset, args.out, time_budget_s=args.time_budget, device=args.device, dims=args.dims,
        network=args.network, threads=args.threads, max_cases=args.max_cases, regions=args.regions,
        profile=args.profile,
    )  # fmt: skip
    t, n = plan["training"], plan["network"]
    print(
        f"planned {plan['spatial_dims']}D: spacing {plan['spacing']} mm, patch {plan['patch']}, "
        f"{n['name']} {n['args']}, {n['step_s']} s/step on {plan['budget']['device']}; batch {t['batch_size']}, "
        f"{t['max_epochs']} epochs (validation every {t['val_interval']}) in {t['time_budget_s']:.0f} s"
    )
    print(f"normalisation: {plan['reasons']['normalise']}")
    if plan["regions"]:
        print(f"regions (sigmoid outputs, outermost first): {dict(zip(*map(plan['regions'].get, ('names', 'labels'))))}")
    for note in plan["notes"]:
        print(f"note: {note}")
    print(f"wrote {Path(args.out) / 'configs'} (common.yaml, plan.json, fingerprint.json); train: clinseg train {args.out}")
    return 0


def cmd_qc_reference(args: argparse.Namespace) -> int:
    from pipeline.core.bundle import Bundle
    from pipeline.qc.model_reference import write_model_reference

    bundle = Bundle.at(args.bundle)
    path = write_model_reference(
        bundle, Path(args.checkpoint) if args.checkpoint else bundle.default_checkpoint,
        Path(args.datalist) if args.datalist else bundle.datalist_file("inference"),
        max_cases=args.max_cases, max_validation_cases=args.max_validation_cases, device=args.device,
    )  # fmt: skip
    reference = json.loads(path.read_text())
    calibration = reference.get("calibration") or {}
    print(f"wrote {path}: {reference['cases']} training cases; temperature {reference['temperature']:.3f}"
          + (f", ECE {calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f} on "
             f"{calibration['cases']} validation cases" if "ece_before" in calibration else ""))  # fmt: skip
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "train", "train a bundle (same as python -m monai.bundle run on its train config)")
    p.add_argument("bundle", help="bundle folder, e.g. bundles/ct_organ_resunet3d")
    p.add_argument("--dataset-dir", help="folder holding dataset.json (default: the bundle's dataset_dir)")
    p.add_argument("--ckpt-dir", help="where checkpoints go (default: the bundle's ckpt_dir: runs/<bundle name> under the "
                   "working directory for a shipped bundle, <bundle>/models for a planned one)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--epochs", type=int, help="override max_epochs (default: the bundle's max_epochs)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --ckpt-dir (or its default)")
    p.add_argument("--time-budget", type=duration, metavar="DURATION",
                   help="stop before an epoch that would overrun this wall-clock time, e.g. 90s, 30m, 1.5h "
                   "(default: the bundle's time_budget_s; the last checkpoint, best model and MLflow run end normally)")
    p.add_argument("--fold", type=int, help="train this cross-validation fold (0-based) of a patient-level split")
    p.add_argument("--folds", type=int, default=5, help="number of cross-validation folds")
    p.add_argument("--fold-seed", type=int, default=0, help="seed of the fold split (use the same for evaluate)")
    p.add_argument("--register", metavar="NAME",
                   help="then register the best model in the MLflow Model Registry as a version of NAME, its "
                        "artifact the exported bundle (see clinseg register-model)")
    p.add_argument("--alias", help="with --register: point this alias (e.g. champion) at the new version")
    add_config_overlays(p, "train")
    checked(p, cmd_train, bundles=("bundle",))

    p = command(
        sub, "plan", "fingerprint a dataset and write a MONAI bundle planned for it within a time budget",
        epilog="DATASET: a clinseg datalist (clinseg import), a folder holding one, or a raw MSD / nnU-Net / DICOM "
        "/ NIfTI folder (imported into OUT/dataset first). Writes OUT/configs/{common,train,inference,evaluate}.yaml, "
        "plan.json and fingerprint.json; train it with clinseg train OUT or python -m monai.bundle run.",
    )
    p.add_argument("dataset", help="datalist file or dataset folder")
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--time-budget", type=duration, default=duration("1h"), metavar="DURATION",
                   help="wall-clock training time the schedule must fit (90s, 30m, 1.5h)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="plan for this device (default: detected)")
    p.add_argument("--dims", choices=("auto", "2d", "3d"), default="auto",
                   help="3D patches, 2D axial slices of the volumes, or auto (2D for very anisotropic data)")
    p.add_argument("--network", default="res_unet", help="registered network with a channels or features width: res_unet, attention_unet, unet, or "
                   "feature_fusion_unet (two or more channels: one encoder each, fused at every level)")
    p.add_argument("--threads", type=int, help="CPU threads training will use (steps are timed on one)")
    p.add_argument("--profile", metavar="PLAN_JSON",
                   help="replay the step timings recorded in another plan's plan.json instead of timing")
    p.add_argument("--max-cases", type=int, help="fingerprint at most this many training cases")
    p.add_argument("--regions", metavar="SPEC",
                   help="region-based training (one sigmoid output per region), outermost first, e.g. "
                   "'whole_tumour=1,2,3,4;core=1,3,4;enhancing=4' (default: the datalist's own regions, if any; "
                   "'none': train on the labels)")
    checked(p, cmd_plan, paths=("dataset",))

    p = command(sub, "qc-reference", "write a model's QC reference: its training data and a fitted temperature",
                epilog="clinseg train writes it when training ends; use this for a run trained otherwise "
                       "(python -m monai.bundle run) or to refresh it. It goes beside the checkpoint as "
                       "qc_reference.json, and clinseg export carries it in models/.")
    p.add_argument("bundle", help="bundle folder")
    p.add_argument("--checkpoint", help="the model's checkpoint (default: the newest of runs/<bundle name>/model.pt and the bundle's models/model.pt)")
    p.add_argument("--datalist", help="dataset.json whose training split the model learnt from and whose "
                                      "validation split calibrates it (default: the bundle's datalist_file)")
    p.add_argument("--max-cases", type=int, default=100, help="training cases summarised (evenly spaced)")
    p.add_argument("--max-validation-cases", type=int, default=30, help="validation cases calibrating")
    p.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    checked(p, cmd_qc_reference, paths=("checkpoint", "datalist"), bundles=("bundle",))
