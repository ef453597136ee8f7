"""``clinseg evaluate`` (score checkpoints per case) and ``clinseg compare`` (MLflow runs side by side)."""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.cli.common import add_bundle, add_config_overlays, checked, command, overrides
from pipeline.cli.inference_flags import add_inference_options, add_nnunet_options, inference_options, predictor

if TYPE_CHECKING:
    from pipeline.core.bundle import Bundle
    from pipeline.evaluation.evaluate import EvaluationOptions
    from pipeline.inference.nnunet_folder import NnunetFolder


def regions_option(spec: str) -> dict[str, list[int]]:
    """``--regions`` of evaluate: ``none`` (per label, ``{}``) or regions to score."""
    from pipeline.datasets.regions import NO_REGIONS, parse_regions

    return {} if spec.strip().lower() == NO_REGIONS else parse_regions(spec)


def default_output(bundle_name: str) -> Path:
    """``evaluation/<bundle>-<UTC date and time>`` under the working directory: one folder per evaluation."""
    return Path("evaluation", f"{bundle_name}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}").resolve()


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pipeline.core.bundle import Bundle
    from pipeline.core.model_uri import is_model_uri
    from pipeline.evaluation.evaluate import EvaluationOptions
    from pipeline.inference.model_ref import open_model
    from pipeline.inference.nnunet_folder import NnunetFolder, is_nnunet_uri

    if args.folds and (not args.checkpoint_pattern or args.checkpoint):
        raise SystemExit("--folds needs --checkpoint-pattern (with {fold}) and no --checkpoint")
    inference, postprocess = inference_options(args)
    options = EvaluationOptions(
        surface_tolerance_mm=args.tolerance_mm, inference=inference, postprocess=postprocess,
        config=("inference", *args.config), overrides=overrides(args.set), train_run_id=args.train_run_id,
        experiment_name=args.experiment_name, progress=not args.quiet,
        regions=None if args.regions is None else regions_option(args.regions), qc_threshold=args.qc_threshold,
    )  # fmt: skip
    if is_nnunet_uri(args.bundle) or is_model_uri(args.bundle):  # a registered model may be an nnU-Net one
        model = open_model(args.bundle, tracking_uri=args.tracking_uri, folds=args.nnunet_folds,
                           checkpoint_name=args.checkpoint_name)  # fmt: skip
    else:
        model = Bundle.at(args.bundle)
    if isinstance(model, NnunetFolder):
        return _evaluate_nnunet(args, model, options)
    return _evaluate_bundle(args, model, options)


def _evaluate_bundle(args: argparse.Namespace, bundle: Bundle, options: EvaluationOptions) -> int:
    from pipeline.evaluation.evaluate import evaluate_checkpoint, evaluate_folds

    datalist = _datalist(args) or bundle.datalist_file(options.config, **options.overrides)
    checkpoints = args.checkpoint or ([] if args.folds else [str(bundle.default_checkpoint)])
    output = Path(args.output or default_output(bundle.name))
    first = args.checkpoint_pattern.format(fold=0) if args.folds else checkpoints[0]
    tracking_uri = _store(args, output, first)
    if args.folds:
        result = evaluate_folds(
            bundle, args.checkpoint_pattern, datalist, args.folds, args.fold_seed, output, tracking_uri,
            options=options,
        )  # fmt: skip
    else:
        result = evaluate_checkpoint(bundle, checkpoints, datalist, args.split, output, tracking_uri,
                                     options=options)  # fmt: skip
    print(result.summary_line())
    return 0


def _evaluate_nnunet(args: argparse.Namespace, folder: NnunetFolder, options: EvaluationOptions) -> int:
    """An nnU-Net model folder, built as ``clinseg predict`` builds it, scored on ``--datalist``/``--dataset-dir``."""
    from pipeline.evaluation.evaluate import evaluate_predictor
    from pipeline.evaluation.evaluated_model import EvaluatedModel

    if args.folds or args.checkpoint_pattern:
        raise ValueError(f"{args.bundle}: --folds/--checkpoint-pattern (out-of-fold pooling) are for bundles; "
                         "choose the nnU-Net folds to ensemble with --nnunet-folds")  # fmt: skip
    datalist = _datalist(args)
    if datalist is None:
        raise ValueError(f"{args.bundle}: an nnU-Net model names no datalist; give --datalist or --dataset-dir "
                         "(clinseg import of an nnU-Net raw folder writes one)")  # fmt: skip
    model = predictor(args, folder)
    record = EvaluatedModel.of_nnunet(model.folder)
    output = Path(args.output or default_output(model.folder.path.name))
    tracking_uri = _store(args, output, model.settings()["checkpoints"][0])
    params = {"folds": ",".join(model.settings()["folds"]), "checkpoint_name": model.folder.checkpoint_name}
    result = evaluate_predictor(model, record, datalist, args.split, output, tracking_uri, options=options,
                                params=params)  # fmt: skip
    print(result.summary_line())
    return 0


def _datalist(args: argparse.Namespace) -> Path | None:
    """``--datalist``, else ``--dataset-dir``/dataset.json, else None (the bundle's)."""
    if args.datalist and args.dataset_dir:
        raise ValueError("give --datalist or --dataset-dir, not both")
    if args.datalist:
        return Path(args.datalist)
    return Path(args.dataset_dir) / "dataset.json" if args.dataset_dir else None


def _store(args: argparse.Namespace, output: Path, first_checkpoint: str) -> str | None:
    """Print where the tables go; the MLflow store to log to (None with ``--no-tracking``)."""
    from pipeline.evaluation.tables import evaluation_store

    print(f"evaluation tables: {output}")
    if args.no_tracking:
        return None
    tracking_uri, reason = evaluation_store(first_checkpoint, args.tracking_uri)
    print(f"MLflow store: {tracking_uri} ({reason})")
    return tracking_uri


def cmd_compare(args: argparse.Namespace) -> int:
    from pipeline.evaluation.compare import compare_runs, paired_comparison, plot_curves

    if args.models:
        from pipeline.evaluation.model_versions import model_versions

        print(model_versions(args.tracking_uri, args.models).format(args.format))
        return 0
    comparison = compare_runs(
        args.tracking_uri, experiment=args.experiment, run_ids=args.runs, metric=args.metric, sort=args.sort,
        filters=args.filter, columns=args.columns,
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


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "evaluate", "score checkpoints or an nnU-Net model per case: Dice, IoU, HD95, surface distance")
    add_bundle(p, registry_flag=False)
    p.add_argument("--checkpoint", action="append", default=[],
                   help="weights (repeat for an ensemble; default: the newest of runs/<bundle name>/model.pt "
                        "under the working directory and the bundle's models/model.pt)")
    p.add_argument("--dataset-dir", help="folder holding dataset.json (default: the bundle's dataset_dir)")
    p.add_argument("--datalist", help="datalist file (dataset.json) to evaluate on, instead of --dataset-dir; "
                                      "needed for an nnunet:PATH model")
    p.add_argument("--split", default="validation", help="datalist split to evaluate")
    p.add_argument("--output", help="folder for per_case.csv and summary.csv/.json "
                   "(default: evaluation/<bundle>-<UTC date and time> under the working directory)")
    p.add_argument("--tracking-uri",
                   help="MLflow store, and the registry of a models:/ bundle (default: MLFLOW_TRACKING_URI, else "
                        "the store the checkpoint's training run logged to, else ./mlflow.db)")
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
    add_inference_options(p)
    add_nnunet_options(p, folds_flag="--nnunet-folds")
    add_config_overlays(p, "inference")
    checked(p, cmd_evaluate, paths=("checkpoint", "dataset_dir", "datalist"), bundles=("bundle",))

    p = command(
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
    p.add_argument("--columns", type=lambda text: [c for c in text.split(",") if c], default=[],
                   metavar="COL,COL", help="show these columns (names or globs; a bare name is a param, any param), "
                                          "e.g. run_name,val_mean_dice_best,roi_size (default: the params that differ)")
    p.add_argument("--plot", metavar="PNG", help="write a PNG overlaying the metric's curves of the runs")
    p.add_argument("--paired", action="store_true", help="paired per-case statistics of two evaluation runs")
    p.add_argument("--paired-metric", nargs="+", default=["dice", "hd95_mm"],
                   help="per-case metrics compared by --paired")
    p.add_argument("--worse-threshold", type=float, default=0.05, help="list cases worse by more than this")
    checked(p, cmd_compare)
