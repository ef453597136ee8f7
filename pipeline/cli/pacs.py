"""``clinseg serve`` and the archive flags (credentials, DIMSE, selection, push) ``predict`` shares."""

from __future__ import annotations

import argparse
from typing import Any

from pipeline.cli.common import add_bundle, add_config_overlays, add_output_options, checked, command, output_options
from pipeline.cli.inference_flags import add_inference_options, add_nnunet_options, predictor


def add_archive_options(p: argparse.ArgumentParser, selection: bool = True) -> None:
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


def archive(spec: str, args: argparse.Namespace) -> Any:
    """The archive ``spec`` with the credentials (environment or --credentials) and DIMSE options of ``args``."""
    from pipeline.pacs.connect import open_archive
    from pipeline.pacs.credentials import load_credentials

    return open_archive(
        spec, credentials=load_credentials(args.credentials), calling_aet=args.calling_aet,
        retrieve=args.retrieve, move_port=args.move_port,
    )  # fmt: skip


def cmd_serve(args: argparse.Namespace) -> int:
    from pipeline.batch.runner import BatchOptions
    from pipeline.pacs.serve import ServeOptions, StorageNode
    from pipeline.pacs.spool import GIB, SpoolLimits

    batch = BatchOptions(outputs=output_options(args), qc_threshold=args.qc_threshold)
    push_to = archive(args.push_to, args) if args.push_to else None
    limits = SpoolLimits(
        max_bytes=int(args.max_spool_gb * GIB) if args.max_spool_gb else None, min_free_bytes=int(args.min_free_gb * GIB),
        keep_seconds=args.keep_processed_minutes * 60,
    )  # fmt: skip
    node = StorageNode(
        predictor(args), args.spool, args.output, push_to=push_to,
        count_from=archive(args.count_from, args) if args.count_from else push_to,
        options=ServeOptions(args.ae_title, args.host, args.port, args.quiet_seconds, allow_aets=tuple(args.allow_aet),
                             incomplete_seconds=args.incomplete_seconds, settle_seconds=args.settle_seconds),
        limits=limits, batch=batch,
    )  # fmt: skip
    node.serve_forever()
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "serve", "listen as a DICOM Storage SCP; segment each received series, push the results",
                epilog="A series is segmented once every association sending it was released, no instance arrived "
                "for --quiet-seconds (the node's own clock; after a restart it counts from the restart) and it "
                "holds as many instances as the sender or --count-from reports. Late instances reprocess the whole "
                "series. SPOOL keeps received instances and a journal, so a restarted node loses nothing.")
    add_bundle(p)
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
    p.add_argument("--settle-seconds", type=float, default=60.0, help="further quiet before a series of unknown "
                   "instance count is segmented (its result is journaled provisional)")
    p.add_argument("--max-spool-gb", type=float, help="refuse instances (status 0xA700) beyond this spool size")
    p.add_argument("--min-free-gb", type=float, default=1.0, help="refuse instances below this free disk space")
    p.add_argument("--keep-processed-minutes", type=float, default=60.0,
                   help="received instances of a safe (written, pushed) result are pruned after this long")
    add_output_options(p)
    add_inference_options(p)
    add_nnunet_options(p)
    add_archive_options(p, selection=False)
    add_config_overlays(p, "inference")
    checked(p, cmd_serve, paths=("checkpoint",), bundles=("bundle",))
