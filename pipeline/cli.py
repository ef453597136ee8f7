"""The ``clinseg`` command line: each sub-command maps flags to keyword arguments of a library call."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger("clinseg")


def _overrides(pairs: Sequence[str]) -> dict[str, object]:
    """``--set key=value`` pairs; values parse as YAML (numbers, lists, booleans), else stay strings."""
    import yaml

    result: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects key=value (e.g. --set max_epochs=5), got {pair!r}")
        result[key] = yaml.safe_load(value)
    return result


def _duration(text: str) -> float:
    """``--time-budget`` values (``90s``, ``30m``, ``1.5h``) as seconds; a bad one is an argparse error."""
    from pipeline.core.duration import parse_duration

    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _inference_options(args: argparse.Namespace, device: str | None = None):
    """The inference options of ``predict`` and ``evaluate`` (see :func:`_add_inference_options`) as
    ``(InferenceOptions, PostprocessOptions or None)``; ``None`` fields keep the bundle's values."""
    from pipeline.inference.options import InferenceOptions, PostprocessOptions

    options = InferenceOptions(
        roi_size=args.roi_size, overlap=args.overlap, sw_batch_size=args.sw_batch_size, mode=args.mode,
        device=device or args.device, keep_volume_on_cpu=not args.volume_on_device, tta=args.tta,
        crop_foreground=args.crop_foreground, foreground_hu=args.foreground_hu, crop_margin=args.crop_margin,
        restore=args.restore, amp=args.amp, uncertainty=not args.no_uncertainty,
    )  # fmt: skip
    postprocess = None
    if args.keep_largest or args.min_size_ml or args.fill_holes:
        sizes = PostprocessOptions.parse_min_size_ml(args.min_size_ml) if args.min_size_ml else 0.0
        postprocess = PostprocessOptions(tuple(args.keep_largest), sizes, tuple(args.fill_holes))
    return options, postprocess


def cmd_synth(args: argparse.Namespace) -> int:
    from pipeline.synthetic.phantoms import synthesize

    formats = ("nifti", "dicom") if args.format == "both" else (args.format,)
    path = synthesize(Path(args.out), cases=args.cases, seed=args.seed, spatial_dims=args.dims, formats=formats)
    print(f"wrote {args.cases} synthetic patients and {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pipeline.training.train import train_bundle

    result = train_bundle(
        args.bundle,
        dataset_dir=args.dataset_dir,
        ckpt_dir=args.ckpt_dir,
        tracking_uri=args.tracking_uri,
        max_epochs=args.epochs,
        resume=args.resume,
        fold=args.fold,
        folds=args.folds,
        fold_seed=args.fold_seed,
        overrides=_overrides(args.set),
        config=["train", *args.config],
        time_budget_s=args.time_budget,
    )
    print(result.summary())
    if args.register:
        from pipeline.export.registry import register_run

        print(register_run(result.ckpt_dir, args.register, bundle=args.bundle, alias=args.alias).summary())
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import os
    import tempfile

    from pipeline.outputs.registry import OutputOptions
    from pipeline.batch.runner import BatchOptions, merge_shards, predict_folder
    from pipeline.batch.shard import Shard, shard_from_env
    from pipeline.core.model_uri import fetch_bundle, is_model_uri
    from pipeline.inference.predictor import Predictor

    if args.merge_shards:
        report = merge_shards(args.output)
        print(report.summary_line())
        return report.exit_code()
    if args.input is None:
        raise ValueError("clinseg predict: --input is required (unless --merge-shards)")
    shard = Shard.parse(args.shard) if args.shard else shard_from_env()
    device = args.device
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"  # one GPU per torchrun worker
    options, postprocess = _inference_options(args, device)
    with tempfile.TemporaryDirectory(prefix="clinseg-model-") as fetched:
        # a registered model version (models:/NAME/VERSION or models:/NAME@ALIAS): its bundle, for this run only
        bundle = fetch_bundle(args.bundle, fetched, args.tracking_uri) if is_model_uri(args.bundle) else args.bundle
        predictor = Predictor.from_bundle(
            bundle, args.checkpoint or None, options=options, postprocess=postprocess,
            config=["inference", *args.config], **_overrides(args.set),
        )  # fmt: skip
    batch = BatchOptions(
        split=args.split, overwrite=args.overwrite, prefetch=args.prefetch, workers=args.workers, shard=shard,
        progress=not args.quiet, qc_threshold=args.qc_threshold,
        outputs=OutputOptions(dicom_seg=not args.no_dicom_seg, rtstruct=args.rtstruct,
                              probabilities=args.save_probabilities, preview=not args.no_preview),
    )
    if args.input.startswith(("dicomweb:", "dimse:")):
        run = _predict_archive(args, predictor, batch)
        print(run.summary_line())
        return run.exit_code()
    report = predict_folder(predictor, args.input, args.output, options=batch)
    print(report.summary_line())
    return report.exit_code()


def _archive(spec: str, args: argparse.Namespace):
    """The archive ``spec`` with the credentials (environment or --credentials) and DIMSE options of ``args``."""
    from pipeline.pacs.connect import open_archive
    from pipeline.pacs.credentials import load_credentials

    return open_archive(
        spec, credentials=load_credentials(args.credentials), calling_aet=args.calling_aet,
        retrieve=args.retrieve, move_port=args.move_port,
    )  # fmt: skip


def _predict_archive(args: argparse.Namespace, predictor, batch):
    from pipeline.pacs.archive import Selection, read_uid_file
    from pipeline.pacs.batch import predict_archive

    studies, series = read_uid_file(args.uid_file) if args.uid_file else ([], [])
    selection = Selection(
        tuple(args.study + studies), tuple(args.series + series), args.modality, args.study_date,
        args.study_description,
    )  # fmt: skip
    archive = _archive(args.input, args)
    push_to = _archive(args.push_url, args) if args.push_url else archive if args.push else None
    return predict_archive(predictor, archive, selection, args.output, cache_dir=args.cache_dir, push_to=push_to,
                           options=batch)


def cmd_serve(args: argparse.Namespace) -> int:
    from pipeline.outputs.registry import OutputOptions
    from pipeline.batch.runner import BatchOptions
    from pipeline.inference.predictor import Predictor
    from pipeline.pacs.serve import ServeOptions, StorageNode
    from pipeline.pacs.spool import GIB, SpoolLimits

    options, postprocess = _inference_options(args)
    predictor = Predictor.from_bundle(
        args.bundle, args.checkpoint or None, options=options, postprocess=postprocess,
        config=["inference", *args.config], **_overrides(args.set),
    )  # fmt: skip
    batch = BatchOptions(
        outputs=OutputOptions(rtstruct=args.rtstruct, preview=not args.no_preview), qc_threshold=args.qc_threshold
    )
    push_to = _archive(args.push_to, args) if args.push_to else None
    limits = SpoolLimits(
        max_bytes=int(args.max_spool_gb * GIB) if args.max_spool_gb else None, min_free_bytes=int(args.min_free_gb * GIB),
        keep_seconds=args.keep_processed_minutes * 60,
    )  # fmt: skip
    node = StorageNode(
        predictor, args.spool, args.output, push_to=push_to,
        count_from=_archive(args.count_from, args) if args.count_from else push_to,
        options=ServeOptions(args.ae_title, args.host, args.port, args.quiet_seconds, allow_aets=tuple(args.allow_aet),
                             incomplete_seconds=args.incomplete_seconds),
        limits=limits, batch=batch,
    )  # fmt: skip
    node.serve_forever()
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pipeline.core.bundle import Bundle
    from pipeline.evaluation.evaluate import EvaluationOptions, evaluate_checkpoint, evaluate_folds
    from pipeline.evaluation.tables import evaluation_store

    bundle = Bundle.at(args.bundle)
    config, overrides = ("inference", *args.config), _overrides(args.set)
    if args.dataset_dir:
        datalist = Path(args.dataset_dir) / "dataset.json"
    else:  # the bundle's own datalist file (a planned bundle names the one it was planned from)
        datalist = Path(bundle.parser(config, **overrides).get_parsed_content("datalist_file"))
    inference, postprocess = _inference_options(args)
    options = EvaluationOptions(
        surface_tolerance_mm=args.tolerance_mm,
        inference=inference,
        postprocess=postprocess,
        config=config,
        overrides=overrides,
        train_run_id=args.train_run_id,
        experiment_name=args.experiment_name,
        progress=not args.quiet,
        regions=None if args.regions is None else _regions_option(args.regions),
        qc_threshold=args.qc_threshold,
    )
    if args.folds and (not args.checkpoint_pattern or args.checkpoint):
        raise SystemExit("--folds needs --checkpoint-pattern (with {fold}) and no --checkpoint")
    if not args.folds and not args.checkpoint:  # the bundle's best checkpoint, as clinseg predict uses
        args.checkpoint = [str(bundle.default_checkpoint)]
    tracking_uri = None
    if not args.no_tracking:
        first = args.checkpoint_pattern.format(fold=0) if args.folds else args.checkpoint[0]
        tracking_uri, reason = evaluation_store(first, args.tracking_uri)
        print(f"MLflow store: {tracking_uri} ({reason})")
    if args.folds:
        result = evaluate_folds(
            bundle, args.checkpoint_pattern, datalist, args.folds, args.fold_seed, args.output, tracking_uri,
            options=options,
        )  # fmt: skip
    else:
        result = evaluate_checkpoint(
            bundle, args.checkpoint, datalist, args.split, args.output, tracking_uri, options=options
        )
    print(result.summary_line())
    return 0


def _regions_option(spec: str) -> dict[str, list[int]]:
    """``--regions`` of evaluate: ``none`` (per label, ``{}``) or regions to score."""
    from pipeline.datasets.regions import NO_REGIONS, parse_regions

    return {} if spec.strip().lower() == NO_REGIONS else parse_regions(spec)


def cmd_compare(args: argparse.Namespace) -> int:
    from pipeline.evaluation.compare import compare_runs, paired_comparison, plot_curves

    if args.models:
        from pipeline.evaluation.model_versions import model_versions

        print(model_versions(args.tracking_uri, args.models).format(args.format))
        return 0
    comparison = compare_runs(
        args.tracking_uri, experiment=args.experiment, run_ids=args.runs, metric=args.metric, sort=args.sort,
        filters=args.filter,
    )  # fmt: skip
    print(comparison.format(args.format))
    if args.plot:
        metric = args.metric or "val_mean_dice"
        print(f"wrote {plot_curves(args.tracking_uri, comparison.run_ids, args.plot, metric)}")
    if args.paired:
        if len(args.runs) != 2:
            raise SystemExit("--paired needs exactly two --runs (reference first)")
        paired = paired_comparison(
            *args.runs, args.tracking_uri, metrics=args.paired_metric, worse_threshold=args.worse_threshold
        )
        print("\npaired per-case differences (run B - run A, 95% t-interval, Wilcoxon signed-rank):")
        print(paired.format(args.format))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pipeline.export.bundle import export_bundle

    out = export_bundle(args.run, args.out, bundle=args.bundle, version=args.version, overwrite=args.overwrite)
    print(f"wrote bundle {out} (clinseg predict {out} --input ... needs no --checkpoint)")
    return 0


def cmd_register_model(args: argparse.Namespace) -> int:
    from pipeline.export.registry import register_run

    print(register_run(args.run, args.name, bundle=args.bundle, tracking_uri=args.tracking_uri, alias=args.alias).summary())
    return 0


def cmd_tracking_sync(args: argparse.Namespace) -> int:
    from pipeline.tracking.sync import sync_run

    report = sync_run(args.run_dir, tracking_uri=args.tracking_uri)
    print(report.summary_line())
    return 3 if report.left else 0


def cmd_qc_reference(args: argparse.Namespace) -> int:
    from pipeline.core.bundle import Bundle
    from pipeline.qc.model_reference import write_model_reference

    bundle = Bundle.at(args.bundle)
    checkpoint = Path(args.checkpoint) if args.checkpoint else bundle.default_checkpoint
    datalist = Path(args.datalist) if args.datalist else Path(
        bundle.parser("inference").get_parsed_content("datalist_file")
    )
    path = write_model_reference(
        bundle, checkpoint, datalist, max_cases=args.max_cases, max_validation_cases=args.max_validation_cases,
        device=args.device,
    )  # fmt: skip
    reference = json.loads(path.read_text())
    calibration = reference.get("calibration") or {}
    print(f"wrote {path}: {reference['cases']} training cases; temperature {reference['temperature']:.3f}"
          + (f", ECE {calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f} on "
             f"{calibration['cases']} validation cases" if "ece_before" in calibration else ""))  # fmt: skip
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import run_demo

    run_demo(Path(args.workdir), cases=args.cases, max_epochs=args.epochs, seed=args.seed)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from pipeline.batch.report import EXIT_OK, EXIT_SOME_FAILED
    from transforms.inspect import format_inspection, has_problems, inspect_path

    rows = inspect_path(args.path)
    print(json.dumps(rows, indent=2, default=str) if args.json else format_inspection(rows))
    return EXIT_SOME_FAILED if has_problems(rows) else EXIT_OK


def cmd_convert(args: argparse.Namespace) -> int:
    from transforms.inspect import convert_to_nifti

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
    )
    print(summary(report))
    return 3 if report["counts"]["skipped"] else 0


def cmd_plan(args: argparse.Namespace) -> int:
    from pipeline.planning.planner import plan_dataset

    plan = plan_dataset(
        args.dataset,
        args.out,
        time_budget_s=args.time_budget,
        device=args.device,
        dims=args.dims,
        network=args.network,
        threads=args.threads,
        max_cases=args.max_cases,
        regions=args.regions,
    )
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


def cmd_register(args: argparse.Namespace) -> int:
    from pipeline.datasets.register import register_files, transform_path

    transform = args.transform or transform_path(args.out)
    result = register_files(args.fixed, args.moving, args.out, transform_out=transform, deformable=args.deformable)
    print(f"final metric (Mattes MI): {result.metric:.4f}")
    print(f"{result.summary()}; wrote {args.out} and {transform}")
    return 0


def _add_archive_options(p: argparse.ArgumentParser, selection: bool = True) -> None:
    """Archive access (credentials, DIMSE) and, for ``predict``, the series selection and push."""
    g = p.add_argument_group(
        "archive", "--input dicomweb:URL or dimse:AET@host:port; credentials only from CLINSEG_PACS_USER + "
        "CLINSEG_PACS_PASSWORD, CLINSEG_PACS_TOKEN or --credentials FILE; case folders are named by hashed UIDs",
    )  # fmt: skip
    g.add_argument("--credentials", metavar="FILE", help='JSON {"username": ..., "password": ...} or {"token": ...}')
    g.add_argument("--calling-aet", default="CLINSEG", help="this node's AE title for DIMSE")
    g.add_argument("--retrieve", choices=("get", "move"), default="get", help="DIMSE retrieval: C-GET or C-MOVE")
    g.add_argument("--move-port", type=int, help="local port the archive sends C-MOVE instances to")
    if not selection:
        return
    g.add_argument("--study", action="append", default=[], metavar="UID", help="StudyInstanceUID (repeatable)")
    g.add_argument("--series", action="append", default=[], metavar="UID", help="SeriesInstanceUID (repeatable)")
    g.add_argument("--uid-file", metavar="FILE", help="per line a StudyInstanceUID or STUDY_UID SERIES_UID")
    g.add_argument("--modality", help="only series of this modality, e.g. CT")
    g.add_argument("--study-date", metavar="YYYYMMDD[-YYYYMMDD]", help="study date or range")
    g.add_argument("--study-description", help="StudyDescription query (* wildcards)")
    g.add_argument("--cache-dir", help="retrieved series (default: OUTPUT/.cache); reruns reuse it")
    g.add_argument("--push", action="store_true", help="store seg.dcm (and rtstruct.dcm) back in the archive")
    g.add_argument("--push-url", metavar="ARCHIVE", help="store them here instead (dicomweb:URL or dimse:AET@host:port)")


def _add_config_overlays(parser: argparse.ArgumentParser, base: str) -> None:
    """``--config``: overlays merged after the ``base`` config; ``--set``: overrides, applied last."""
    parser.add_argument("--config", action="append", default=[], metavar="OVERLAY",
                        help=f"overlay merged after {base}.yaml, as monai.bundle run merges a list: a "
                             ".yaml/.json file or a config of the bundle by name (e.g. cosine_warmup); "
                             "repeatable, in order")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config id after the overlays, e.g. --set roi_size=[96,96,48] "
                             "(repeatable)")  # fmt: skip


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` after an option's help when X is a value (not None, False or empty) and the help
    does not state its default itself."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or default is None or default is False or default in ([], argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def _command(sub: argparse._SubParsersAction, name: str, summary: str, **kwargs: object) -> argparse.ArgumentParser:
    """A sub-command with ``summary`` as its help and (unless given) its description."""
    kwargs.setdefault("description", summary[0].upper() + summary[1:] + ".")
    return sub.add_parser(name, help=summary, formatter_class=_HelpFormatter, **kwargs)


def _add_inference_options(p: argparse.ArgumentParser) -> None:
    """The inference options ``predict`` and ``evaluate`` share; each left unset keeps the bundle's value."""
    g = p.add_argument_group(
        "inference",
        "how the bundle's inference config runs; unset options keep its settings; --keep-largest, --min-size-ml "
        "and --fill-holes together replace its label clean-up (the CleanLabelsd step of its postprocessing)",
    )
    g.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    g.add_argument("--volume-on-device", action="store_true",
                   help="keep the whole volume on the device (default: on CPU, only patches move)")
    g.add_argument("--roi-size", type=int, nargs="+", help="sliding-window patch, voxels (default: the bundle's)")
    g.add_argument("--overlap", type=float, help="sliding-window overlap, 0-1 (default: the bundle's)")
    g.add_argument("--sw-batch-size", type=int, help="patches per network call (default: the bundle's)")
    g.add_argument("--mode", choices=("gaussian", "constant"),
                   help="sliding-window blending (default: the bundle's)")
    g.add_argument("--tta", action="store_true", help="mirror test-time augmentation (flips of the spatial axes)")
    g.add_argument("--crop-foreground", action="store_true",
                   help="CT: infer only the body box (voxels above --foreground-hu); the rest is background")
    g.add_argument("--foreground-hu", type=float, default=-500.0, help="body threshold of the crop, in HU")
    g.add_argument("--crop-margin", type=int, default=8, help="network-grid voxels kept around the body")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="autocast the network (bfloat16 on CPU, float16 on CUDA); default: on for CUDA and for "
                        "CPUs with native bfloat16")
    g.add_argument("--restore", choices=("linear", "nearest"),
                   help="labels back onto the input grid: argmax of linearly resampled probabilities, or argmax "
                        "then nearest neighbour (staircase boundaries); default: the bundle's RestoreToInputd mode")
    g.add_argument("--keep-largest", type=int, nargs="+", default=[], metavar="LABEL",
                   help="labels keeping only their largest connected component")
    g.add_argument("--min-size-ml", nargs="+", default=[], metavar="ML|LABEL=ML",
                   help="remove components smaller than this (mL), for every label or per label")
    g.add_argument("--fill-holes", type=int, nargs="+", default=[], metavar="LABEL", help="labels to fill holes in")
    g = p.add_argument_group("quality control", "every case gets a QC score (0-1, higher: more likely wrong) and a "
                             "review flag from checks against the model's training data and its uncertainty")
    g.add_argument("--qc-threshold", type=float, default=0.5,
                   help="QC score from which a case is flagged for review")
    g.add_argument("--no-uncertainty", action="store_true",
                   help="skip the uncertainty (without TTA or an ensemble it costs one extra mirrored pass)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clinseg", description="MONAI-based clinical segmentation pipeline.", formatter_class=_HelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="one of:")

    p = _command(sub, "synth", "write deterministic synthetic CT/MR patients and a dataset.json")
    p.add_argument("out", help="output folder (patients/ and dataset.json are written inside)")
    p.add_argument("--cases", type=int, default=10, help="number of patients")
    p.add_argument("--seed", type=int, default=0, help="dataset seed; the same seed writes the same patients")
    p.add_argument("--dims", type=int, choices=(2, 3), default=3, help="3: volumes, 2: single slices")
    p.add_argument("--format", choices=("nifti", "dicom", "both"), default="nifti",
                   help="CT as NIfTI, as DICOM series, or both (MR and labels are always NIfTI)")
    p.set_defaults(func=cmd_synth)

    p = _command(sub, "train", "train a bundle (same as python -m monai.bundle run on its train config)")
    p.add_argument("bundle", help="bundle folder, e.g. bundles/ct_organ_resunet3d")
    p.add_argument("--dataset-dir", help="folder holding dataset.json (default: the bundle's dataset_dir)")
    p.add_argument("--ckpt-dir", help="where checkpoints go (default: <bundle>/models)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--epochs", type=int, help="override max_epochs (default: the bundle's max_epochs)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --ckpt-dir")
    p.add_argument("--time-budget", type=_duration, metavar="DURATION",
                   help="stop before an epoch that would overrun this wall-clock time, e.g. 90s, 30m, 1.5h "
                   "(default: the bundle's time_budget_s; the last checkpoint, best model and MLflow run end normally)")
    p.add_argument("--fold", type=int, help="train this cross-validation fold (0-based) of a patient-level split")
    p.add_argument("--folds", type=int, default=5, help="number of cross-validation folds")
    p.add_argument("--fold-seed", type=int, default=0, help="seed of the fold split (use the same for evaluate)")
    p.add_argument("--register", metavar="NAME",
                   help="then register the best model in the MLflow Model Registry as a version of NAME, its "
                        "artifact the exported bundle (see clinseg register-model)")
    p.add_argument("--alias", help="with --register: point this alias (e.g. champion) at the new version")
    _add_config_overlays(p, "train")
    p.set_defaults(func=cmd_train)

    p = _command(
        sub, "predict", "segment a folder of patients (DICOM or NIfTI) or a datalist",
        description="Segment every case; outputs land in OUTPUT/<case>/ on each input's own grid.",
        epilog="exit codes: 0 every case ok or skipped; 3 some cases failed (see report.json); "
        "2 usage or setup error (bad arguments, bundle, checkpoint or input folder). "
        "Sharded runs (--shard or torchrun RANK/WORLD_SIZE) write report.shard-i-of-n.json etc.; "
        "when all shards are done, run with --merge-shards to write report.json, summary.csv and volumes.csv.",
    )  # fmt: skip
    p.add_argument("bundle", help="bundle folder, e.g. bundles/ct_organ_resunet3d or an exported one, or a "
                                  "registered model: models:/NAME/VERSION, models:/NAME@ALIAS")
    p.add_argument("--input", help="folder of patient folders, flat NIfTI folder, dataset.json, dicomweb:URL or "
                                   "dimse:AET@host:port")
    p.add_argument("--tracking-uri",
                   help="MLflow registry of a models:/ bundle (default: MLFLOW_TRACKING_URI or ./mlflow.db)")
    p.add_argument("--output", required=True, help="output folder (one sub-folder per case, batch reports)")
    p.add_argument("--checkpoint", action="append", default=[],
                   help="weights, repeat for an ensemble (default: <bundle>/models/model.pt)")
    p.add_argument("--split", default="test", help="datalist split when --input is a .json file")
    _add_inference_options(p)
    p.add_argument("--save-probabilities", action="store_true", help="also write probabilities.nii.gz")
    p.add_argument("--no-preview", action="store_true", help="skip preview.png")
    p.add_argument("--no-dicom-seg", action="store_true", help="skip seg.dcm for DICOM inputs")
    p.add_argument("--rtstruct", action="store_true",
                   help="also write rtstruct.dcm (RT Structure Set) for single-frame DICOM series")
    p.add_argument("--prefetch", type=int,
                   help="cases loaded ahead in the background (0: none; default 1 on a GPU, 0 on CPU)")
    p.add_argument("--workers", type=int, default=1, help="loading threads")
    p.add_argument("--shard", help="i/n: this process handles shard i of n (default: torchrun RANK/WORLD_SIZE)")
    p.add_argument("--merge-shards", action="store_true", help="merge the shard reports in --output and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar, logs only")
    p.add_argument("--overwrite", action="store_true", help="redo cases whose outputs are complete")
    _add_archive_options(p)
    _add_config_overlays(p, "inference")
    p.set_defaults(func=cmd_predict)

    p = _command(sub, "serve", "listen as a DICOM Storage SCP; segment each received series, push the results",
                 epilog="A series is segmented once every association sending it was released, no instance arrived "
                 "for --quiet-seconds (the node's own clock; after a restart it counts from the restart) and it "
                 "holds as many instances as the sender or --count-from reports. Late instances reprocess the whole "
                 "series. SPOOL keeps received instances and a journal, so a restarted node loses nothing.")
    p.add_argument("bundle", help="bundle folder, e.g. bundles/ct_organ_resunet3d")
    p.add_argument("--checkpoint", action="append", default=[], help="weights (default: <bundle>/models/model.pt)")
    p.add_argument("--spool", required=True, help="folder of received series and the journal")
    p.add_argument("--output", required=True, help="results folder (one sub-folder per series, report.json)")
    p.add_argument("--ae-title", default="CLINSEG", help="this node's AE title")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: all)")
    p.add_argument("--port", type=int, default=11112, help="DICOM port")
    p.add_argument("--quiet-seconds", type=float, default=10.0, help="a series is complete after this long quiet")
    p.add_argument("--push-to", metavar="ARCHIVE", help="dicomweb:URL or dimse:AET@host:port for the results")
    p.add_argument("--count-from", metavar="ARCHIVE",
                   help="archive whose series listing gives each series' instance count (default: --push-to)")
    p.add_argument("--allow-aet", action="append", default=[], metavar="AET",
                   help="calling AE title allowed to send (repeatable; --push-to's is added); required unless "
                        "--host is loopback")
    p.add_argument("--incomplete-seconds", type=float, default=600.0,
                   help="a series known to lack instances is journaled incomplete after this long quiet")
    p.add_argument("--max-spool-gb", type=float, help="refuse instances (status 0xA700) beyond this spool size")
    p.add_argument("--min-free-gb", type=float, default=1.0, help="refuse instances below this free disk space")
    p.add_argument("--keep-processed-minutes", type=float, default=60.0,
                   help="received instances of a safe (written, pushed) result are pruned after this long")
    p.add_argument("--rtstruct", action="store_true", help="also write and push rtstruct.dcm")
    p.add_argument("--no-preview", action="store_true", help="skip preview.png")
    _add_inference_options(p)
    _add_archive_options(p, selection=False)
    _add_config_overlays(p, "inference")
    p.set_defaults(func=cmd_serve)

    p = _command(sub, "evaluate", "score checkpoints per case: Dice, IoU, HD95, surface distance")
    p.add_argument("bundle", help="bundle folder, e.g. bundles/ct_organ_resunet3d")
    p.add_argument("--checkpoint", action="append", default=[],
                   help="weights (repeat for an ensemble; default: the bundle's models/model.pt)")
    p.add_argument("--dataset-dir", help="folder holding dataset.json (default: the bundle's dataset_dir)")
    p.add_argument("--split", default="validation", help="datalist split to evaluate")
    p.add_argument("--output", default="evaluation", help="folder for per_case.csv and summary.csv/.json")
    p.add_argument("--tracking-uri",
                   help="MLflow store (default: MLFLOW_TRACKING_URI, else the store the checkpoint's training run "
                        "logged to, else ./mlflow.db)")
    p.add_argument("--no-tracking", action="store_true", help="write the tables only, log no MLflow run")
    p.add_argument("--experiment-name", default="clinseg", help="MLflow experiment of the evaluation run")
    p.add_argument("--train-run-id", help="MLflow run that trained the checkpoint (default: by its folder)")
    p.add_argument("--folds", type=int, help="pool out-of-fold predictions of a cross-validation with this many folds")
    p.add_argument("--checkpoint-pattern", help="fold checkpoints, e.g. 'runs/fold{fold}/model.pt'")
    p.add_argument("--fold-seed", type=int, default=0, help="seed the folds were split with")
    p.add_argument("--tolerance-mm", type=float, default=1.0, help="surface Dice tolerance, mm")
    p.add_argument("--regions", metavar="SPEC",
                   help="score regions instead of labels, e.g. 'whole_tumour=1,2,3,4;core=1,3,4;enhancing=4' "
                   "(default: a region bundle's own regions; 'none': per label)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, logs only")
    _add_inference_options(p)
    _add_config_overlays(p, "inference")
    p.set_defaults(func=cmd_evaluate)

    p = _command(
        sub, "compare", "compare MLflow runs: differing params, metrics, paired statistics",
        description="Compare MLflow runs: one table per run type (training, evaluation) with the params that "
        "differ among its runs, best and final metric, duration; validation curves; paired per-case statistics.",
    )  # fmt: skip
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--experiment", help="compare every run of this experiment")
    group.add_argument("--runs", nargs="+", default=[], metavar="RUN_ID", help="compare these runs")
    group.add_argument("--models", metavar="NAME",
                       help="list the versions of registered model NAME: aliases, training run, metrics")
    p.add_argument("--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI or ./mlflow.db)")
    p.add_argument("--metric", help="metric for best/final and --plot (default: val_mean_dice for training runs "
                                    "and --plot, eval_mean_dice for evaluation runs)")
    p.add_argument("--sort", help="column to sort by, '-' prefix for descending (default: best metric)")
    p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="keep runs whose param, tag or attribute matches (KEY!=VALUE excludes), e.g. "
                        "network=unet, clinseg.run_type=training (repeatable)")
    p.add_argument("--format", choices=("table", "csv", "markdown", "json"), default="table", help="output format")
    p.add_argument("--plot", metavar="PNG", help="write a PNG overlaying the metric's curves of the runs")
    p.add_argument("--paired", action="store_true", help="paired per-case statistics of two evaluation runs")
    p.add_argument("--paired-metric", nargs="+", default=["dice", "hd95_mm"],
                   help="per-case metrics compared by --paired")
    p.add_argument("--worse-threshold", type=float, default=0.05, help="list cases worse by more than this")
    p.set_defaults(func=cmd_compare)

    p = _command(
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
    p.set_defaults(func=cmd_export)

    p = _command(
        sub, "register-model", "register a training run's best model in the MLflow Model Registry, as a bundle",
        epilog="The run's exported bundle (clinseg export) is logged as its bundle/ artifact and becomes the new "
        "version's source; predict with it: clinseg predict models:/NAME/VERSION (or models:/NAME@ALIAS). "
        "Credentials only from the environment (MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN).",
    )  # fmt: skip
    p.add_argument("run", help="the run's checkpoint folder (its journal names the MLflow run) or an MLflow run id")
    p.add_argument("name", help="registered model name")
    p.add_argument("--bundle", help="the bundle that trained it (default: from the run's config as run)")
    p.add_argument("--tracking-uri",
                   help="MLflow store and registry (default: the store a run folder logged to, else "
                        "MLFLOW_TRACKING_URI or ./mlflow.db)")
    p.add_argument("--alias", help="point this alias (e.g. champion) at the new version")
    p.set_defaults(func=cmd_register_model)

    p = _command(sub, "tracking", "MLflow tracking kept on disk while the server was unreachable")
    tracking = p.add_subparsers(dest="tracking_command", required=True, metavar="ACTION", help="one of:")
    p = _command(tracking, "sync", "replay a run's journaled MLflow calls (exit 3 when some are still unsynced)")
    p.add_argument("run_dir", help="the run's checkpoint folder (--ckpt-dir of clinseg train) or its mlflow_journal")
    p.add_argument("--tracking-uri", help="MLflow store to replay to (default: the one the run was started with)")
    p.set_defaults(func=cmd_tracking_sync)

    p = _command(sub, "qc-reference", "write a model's QC reference: its training data and a fitted temperature",
                 epilog="clinseg train writes it when training ends; use this for a run trained otherwise "
                        "(python -m monai.bundle run) or to refresh it. It goes beside the checkpoint as "
                        "qc_reference.json, and clinseg export carries it in models/.")
    p.add_argument("bundle", help="bundle folder")
    p.add_argument("--checkpoint", help="the model's checkpoint (default: the bundle's models/model.pt)")
    p.add_argument("--datalist", help="dataset.json whose training split the model learnt from and whose "
                                      "validation split calibrates it (default: the bundle's datalist_file)")
    p.add_argument("--max-cases", type=int, default=100, help="training cases summarised (evenly spaced)")
    p.add_argument("--max-validation-cases", type=int, default=30, help="validation cases calibrating")
    p.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    p.set_defaults(func=cmd_qc_reference)

    p = _command(sub, "demo", "synthesize, train, validate and predict end to end on CPU")
    p.add_argument("--workdir", default="clinseg-demo", help="folder for data, runs, MLflow store and predictions")
    p.add_argument("--cases", type=int, default=20, help="synthetic patients")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the demo's tuned value)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the training run")
    p.set_defaults(func=cmd_demo)

    p = _command(sub, "inspect", "list the DICOM series / NIfTI images under a path and their problems",
                 epilog="exit codes: 0 every image loads cleanly; 3 some image has problems or none was found; "
                 "2 the path does not exist.")
    p.add_argument("path", help="file or folder to inspect")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_inspect)

    p = _command(sub, "convert", "write a DICOM series (or any loadable scan) as NIfTI with its geometry")
    p.add_argument("path", help="DICOM series folder or scan file")
    p.add_argument("out", help="output .nii.gz")
    p.add_argument("--series", help="SeriesInstanceUID when the folder holds several series")
    p.set_defaults(func=cmd_convert)

    p = _command(
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
    p.set_defaults(func=cmd_import)

    p = _command(
        sub, "plan", "fingerprint a dataset and write a MONAI bundle planned for it within a time budget",
        epilog="DATASET: a clinseg datalist (clinseg import), a folder holding one, or a raw MSD / nnU-Net / DICOM "
        "/ NIfTI folder (imported into OUT/dataset first). Writes OUT/configs/{common,train,inference,evaluate}.yaml, "
        "plan.json and fingerprint.json; train it with clinseg train OUT or python -m monai.bundle run.",
    )
    p.add_argument("dataset", help="datalist file or dataset folder")
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--time-budget", type=_duration, default=_duration("1h"), metavar="DURATION",
                   help="wall-clock training time the schedule must fit (90s, 30m, 1.5h)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="plan for this device (default: detected)")
    p.add_argument("--dims", choices=("auto", "2d", "3d"), default="auto",
                   help="3D patches, 2D axial slices of the volumes, or auto (2D for very anisotropic data)")
    p.add_argument("--network", default="res_unet", help="registered network with a channels or features width: res_unet, attention_unet, unet, or "
                   "feature_fusion_unet (two or more channels: one encoder each, fused at every level)")
    p.add_argument("--threads", type=int, help="CPU threads while timing training steps")
    p.add_argument("--max-cases", type=int, help="fingerprint at most this many training cases")
    p.add_argument("--regions", metavar="SPEC",
                   help="region-based training (one sigmoid output per region), outermost first, e.g. "
                   "'whole_tumour=1,2,3,4;core=1,3,4;enhancing=4' (default: the datalist's own regions, if any; "
                   "'none': train on the labels)")
    p.set_defaults(func=cmd_plan)

    p = _command(
        sub, "register", "align a scan to a reference scan (rigid, affine, optionally B-spline; mutual information)",
        epilog="Writes OUT (the moving scan resampled onto FIXED's grid, linear) and the fixed -> moving transform "
        "(ITK .tfm, default: OUT's name with .tfm). Use it when channels come from different series or grids.",
    )  # fmt: skip
    p.add_argument("fixed", help="reference scan (NIfTI file or DICOM folder); the output takes its grid")
    p.add_argument("moving", help="scan to align (NIfTI file or DICOM folder)")
    p.add_argument("out", help="output .nii.gz")
    p.add_argument("--transform", metavar="TFM", help="transform file to write (default: OUT with .tfm)")
    p.add_argument("--deformable", action="store_true", help="add a B-spline stage after the affine one")
    p.set_defaults(func=cmd_register)
    return parser


def _root_cause(error: BaseException) -> BaseException:
    """The innermost error: MONAI wraps config and transform errors in ``RuntimeError`` chains."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        logger.error("%s", _root_cause(e))
        logger.debug("traceback", exc_info=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
