"""``clinseg predict``: segment a folder, a datalist, a single scan or an archive's series."""

from __future__ import annotations

import argparse

from pipeline.cli.common import (
    ARCHIVE_PREFIXES, add_bundle, add_config_overlays, add_output_options, checked, command, output_options,
)  # fmt: skip
from pipeline.cli.inference_flags import add_inference_options, add_nnunet_options, predictor
from pipeline.cli.pacs import add_archive_options, archive


def cmd_predict(args: argparse.Namespace) -> int:
    from pipeline.batch.runner import BatchOptions, predict_folder
    from pipeline.batch.shard_merge import merge_shards
    from pipeline.batch.shard import Shard, shard_from_env

    if args.merge_shards:
        report = merge_shards(args.output)
        print(report.summary_line())
        return report.exit_code()
    if args.input is None:
        raise ValueError("clinseg predict: --input is required (unless --merge-shards)")
    batch = BatchOptions(
        split=args.split, overwrite=args.overwrite, prefetch=args.prefetch, workers=args.workers,
        shard=Shard.parse(args.shard) if args.shard else shard_from_env(), progress=not args.quiet,
        qc_threshold=args.qc_threshold, outputs=output_options(args), layout=args.output_layout,
        strip_channel_suffix=args.strip_channel_suffix,
    )  # fmt: skip
    if args.input.startswith(ARCHIVE_PREFIXES):
        run = _predict_archive(args, batch)
        print(run.summary_line())
        return run.exit_code()
    report = predict_folder(predictor(args), args.input, args.output, options=batch)
    print(report.summary_line())
    return report.exit_code()


def _predict_archive(args: argparse.Namespace, batch):
    from pipeline.pacs.archive import Selection, read_uid_file
    from pipeline.pacs.batch import predict_archive

    studies, series = read_uid_file(args.uid_file) if args.uid_file else ([], [])
    selection = Selection(
        tuple(args.study + studies), tuple(args.series + series), args.modality, args.study_date,
        args.study_description,
    )  # fmt: skip
    source = archive(args.input, args)
    push_to = archive(args.push_url, args) if args.push_url else source if args.push else None
    return predict_archive(predictor(args), source, selection, args.output, cache_dir=args.cache_dir,
                           push_to=push_to, options=batch)  # fmt: skip


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub, "predict", "segment a folder of patients (DICOM or NIfTI), a datalist or a single scan",
        description="Segment every case; outputs land in OUTPUT/<case>/ on each input's own grid.",
        epilog="exit codes: 0 every case ok or skipped; 3 some cases failed (see report.json); "
        "2 usage or setup error (bad arguments, bundle, checkpoint or input folder). "
        "Sharded runs (--shard or torchrun RANK/WORLD_SIZE) write report.shard-i-of-n.json etc.; "
        "when all shards are done, run with --merge-shards to write report.json, summary.csv and volumes.csv.",
    )  # fmt: skip
    add_bundle(p)
    p.add_argument("--input", help="folder of patient folders, flat NIfTI folder, one NIfTI file (e.g. ct.nii.gz), "
                                   "dataset.json, dicomweb:URL or dimse:AET@host:port")
    p.add_argument("--output", required=True, help="output folder (one sub-folder per case, batch reports)")
    p.add_argument("--output-layout", choices=("case", "flat"), default="case",
                   help="case: OUTPUT/<case>/seg.nii.gz; flat: also OUTPUT/<case>.nii.gz, as nnU-Net writes masks")
    p.add_argument("--strip-channel-suffix", action=argparse.BooleanOptionalAction, default=None,
                   help="drop nnU-Net's _0000 channel suffix from the case names of NIfTI files (default: when "
                        "every file has one)")
    p.add_argument("--checkpoint", action="append", default=[],
                   help="weights, repeat for an ensemble (default: the newest of runs/<bundle name>/model.pt under the "
                        "working directory, where clinseg train puts it, and <bundle>/models/model.pt)")
    p.add_argument("--split", default="test", help="datalist split when --input is a .json file")
    add_inference_options(p)
    add_nnunet_options(p)
    add_output_options(p)
    p.add_argument("--prefetch", type=int,
                   help="cases loaded ahead in the background (0: none; default 1 on a GPU, 0 on CPU)")
    p.add_argument("--workers", type=int, default=1, help="loading threads")
    p.add_argument("--shard", help="i/n: this process handles shard i of n (default: torchrun RANK/WORLD_SIZE)")
    p.add_argument("--merge-shards", action="store_true", help="merge the shard reports in --output and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar, logs only")
    p.add_argument("--overwrite", action="store_true", help="redo cases whose outputs are complete")
    add_archive_options(p)
    add_config_overlays(p, "inference")
    checked(p, cmd_predict, paths=("input", "checkpoint", "uid_file", "credentials"), bundles=("bundle",))
