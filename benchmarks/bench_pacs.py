"""Per-study time of the PACS path on a synthetic 512x512x120 CT in a local Orthanc: download (WADO-RS, C-GET,
C-MOVE into the verified cache), inference (the bundle on CPU) and upload of seg.dcm (STOW-RS, C-STORE), each
against a reference measured in the same run:

- download: one raw ``requests`` GET of the series' WADO-RS multipart body to a file (no parsing, no checks);
- inference: ``Predictor.load`` + ``Predictor.segment`` alone (what ``predict_folder`` adds: the outputs, seg.dcm,
  preview, volumes, reports);
- upload: one raw ``requests`` POST of seg.dcm to Orthanc's REST ``/instances``.

Needs the Debian packages orthanc and orthanc-dicomweb. Prints markdown rows (median of ``--reps`` for the
transfers; inference once, after the reference has warmed up the network).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import requests
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_inference import BUNDLE, make_checkpoint, phantom
from pipeline.batch.discovery import Case
from pipeline.batch.runner import predict_folder
from pipeline.inference.options import InferenceOptions
from pipeline.inference.predictor import Predictor
from pipeline.pacs.archive import SeriesRef
from pipeline.pacs.cache import SeriesCache, case_key
from pipeline.pacs.credentials import Credentials
from pipeline.pacs.dicomweb import DicomWebArchive
from pipeline.pacs.dimse import DimseArchive
from pipeline.synthetic.dicom_series import write_dicom_series
from tests.orthanc_server import CALLING_AET, PASSWORD, USER, start_orthanc

AUTH = (USER, PASSWORD)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_of(reps: int, fn: Callable[[], object], after: Callable[[], object] = lambda: None) -> float:
    times = []
    for _ in range(reps):
        times.append(timed(fn))
        after()
    return statistics.median(times)


def raw_download(url: str, target: Path) -> None:
    headers = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    with requests.get(url, headers=headers, auth=AUTH, stream=True, timeout=600) as r, target.open("wb") as f:
        r.raise_for_status()
        for chunk in r.iter_content(1 << 20):
            f.write(chunk)


def delete_modality(server, modality: str) -> None:
    for series in server.series_of_modality(modality):
        requests.delete(f"{server.url}/series/{series['ID']}", auth=AUTH, timeout=60).raise_for_status()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=3, default=[512, 512, 120])
    p.add_argument("--spacing", type=float, nargs=3, default=[0.8, 0.8, 2.0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fit-steps", type=int, default=60, help="Adam steps fitting the network to the phantom")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_pacs_"))
    server = start_orthanc(work / "orthanc")
    try:
        hu, affine = phantom(tuple(args.shape), tuple(args.spacing), seed=0)
        paths = write_dicom_series(hu, affine, work / "series", uid_seed="bench-pacs")
        megabytes = sum(p.stat().st_size for p in paths) / 1e6
        server.upload(paths)
        first = pydicom.dcmread(paths[0], stop_before_pixels=True)
        ref = SeriesRef(str(first.StudyInstanceUID), str(first.SeriesInstanceUID), "CT", len(paths))
        web = DicomWebArchive(server.dicomweb, credentials=Credentials(USER, PASSWORD))
        get = DimseArchive.parse(server.dimse, calling_aet=CALLING_AET, retrieve="get")
        move = DimseArchive.parse(
            server.dimse, calling_aet=CALLING_AET, retrieve="move", move_port=server.move_port
        )
        series_url = f"{server.dicomweb}/studies/{ref.study_uid}/series/{ref.series_uid}"

        def fresh(name: str) -> SeriesCache:
            shutil.rmtree(work / name, ignore_errors=True)
            return SeriesCache(work / name)

        rows = []
        t_raw = median_of(args.reps, lambda: raw_download(series_url, work / "raw.multipart"))
        t_copy = median_of(
            args.reps,
            lambda: shutil.copytree(work / "series", work / "copy", dirs_exist_ok=True),
            lambda: shutil.rmtree(work / "copy"),
        )
        for label, archive in (("WADO-RS", web), ("C-GET", get), ("C-MOVE", move)):
            t = median_of(args.reps, lambda a=archive: fresh("cache").fetch(a, ref))
            rows.append((f"download {label} into the verified cache", t, "raw WADO-RS GET", t_raw))
        folder = fresh("cache").fetch(web, ref)

        ckpt = make_checkpoint(work / "model.pt", fit_steps=args.fit_steps)
        predictor = Predictor.from_bundle(BUNDLE, ckpt, options=InferenceOptions(device="cpu"))
        t_segment = timed(lambda: predictor.segment(predictor.load({"image": str(folder)})))
        case = Case(case_key(ref.series_uid), {"image": str(folder)}, "dicom")
        t_batch = timed(lambda: predict_folder(predictor, [case], work / "out"))
        rows.append(
            (
                "inference: predict_folder (load, segment, seg.nii.gz, seg.dcm, preview, volumes)",
                t_batch,
                "load + segment only",
                t_segment,
            )
        )

        seg = work / "out" / case.case_id / "seg.dcm"
        seg_mb = seg.stat().st_size / 1e6

        def post() -> None:
            requests.post(
                f"{server.url}/instances", data=seg.read_bytes(), auth=AUTH, timeout=600
            ).raise_for_status()

        t_post = median_of(args.reps, post, lambda: delete_modality(server, "SEG"))
        for label, archive in (("STOW-RS", web), ("C-STORE", get)):
            t = median_of(args.reps, lambda a=archive: a.store([seg]), lambda: delete_modality(server, "SEG"))
            rows.append((f"upload seg.dcm {label}", t, "raw REST POST", t_post))

        print(
            f"series: {len(paths)} files, {megabytes:.1f} MB; file copy of the series {t_copy:.2f} s; "
            f"seg.dcm {seg_mb:.2f} MB; torch threads {args.threads}"
        )
        print("| step | ours (s) | reference | reference (s) | ratio ours/reference |")
        print("|---|---|---|---|---|")
        for step, ours, name, reference in rows:
            print(f"| {step} | {ours:.2f} | {name} | {reference:.2f} | {ours / reference:.2f} |")
    finally:
        server.process.terminate()
        server.process.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
