"""``clinseg plan``: a dataset folder or datalist in, a planned MONAI bundle out.

A folder that is not yet a clinseg datalist (an MSD task, an nnU-Net raw dataset, DICOM studies, NIfTI
files) is imported first, into ``OUT/dataset/`` (:func:`pipeline.datasets.importer.import_dataset`), so the
bundle carries its split. Only the training split is fingerprinted; the test cases are never looked at.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.core.datalist import read_datalist
from pipeline.datasets.importer import import_dataset
from pipeline.datasets.regions import resolve_regions
from pipeline.planning.bundle_writer import write_planned_bundle
from pipeline.planning.compute import ComputeBudget
from pipeline.planning.fingerprint import dataset_fingerprint
from pipeline.planning.plan import DEFAULT_NETWORK, make_plan
from pipeline.planning.profile import StepProfile

__all__ = ["plan_dataset", "resolve_datalist"]

logger = logging.getLogger(__name__)


def resolve_datalist(dataset: str | Path, out: Path, **import_options: Any) -> Path:
    """The clinseg datalist of ``dataset``: the file itself, ``dataset/dataset.json`` when it declares
    ``channels`` (written by ``clinseg import``), else a fresh import into ``out/dataset``."""
    path = Path(dataset)
    candidate = path if path.is_file() else path / "dataset.json"
    if candidate.is_file() and isinstance(read_datalist(candidate).get("channels"), dict):
        return candidate.resolve()
    if path.is_file():
        return candidate.resolve()  # a hand-written datalist; the fingerprint names what it lacks
    dest = out / "dataset"
    logger.info("%s is not a clinseg datalist: importing it into %s first", path, dest)
    report = import_dataset(path, dest, **import_options)
    return Path(report["dataset"])


def plan_dataset(
    dataset: str | Path,
    out: str | Path,
    *,
    time_budget_s: float,
    device: str | None = None,
    dims: str = "auto",
    network: str = DEFAULT_NETWORK,
    threads: int | None = None,
    max_cases: int | None = None,
    regions: str | Mapping[str, Sequence[int]] | None = None,
    profile: str | Path | None = None,
    **import_options: Any,
) -> dict[str, Any]:
    """Fingerprint ``dataset``'s training split, plan within the budget, write the bundle ``out``.

    Args:
        dataset: a datalist file, a folder holding one, or a raw dataset folder (imported first).
        out: the bundle folder to write.
        time_budget_s: wall-clock seconds of training the schedule must fit.
        device: ``cpu`` or ``cuda`` (``None``: detected).
        dims: ``auto``, ``2d`` or ``3d``.
        network: registered network name.
        threads: CPU threads training will use (``None``: torch's default); steps are timed on one.
        max_cases: fingerprint at most this many training cases.
        regions: region-based training: ``"whole_tumour=1,2,3,4;core=1,3,4;enhancing=4"`` or a mapping,
            outermost first; ``None`` takes the datalist's own ``regions`` if it has any; ``"none"`` trains on
            the labels regardless.
        profile: a ``plan.json`` whose recorded step timings are replayed instead of timing
            (:class:`~pipeline.planning.profile.StepProfile`): the same dataset and budget give the same plan.
        import_options: passed to the importer for raw folders (``structures``, ``channels``, ``layout``...).

    Returns:
        The plan (also ``out/configs/plan.json``).
    """
    timer = StepProfile.read(profile) if profile is not None else None  # a bad file fails before any work
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    datalist = resolve_datalist(dataset, out, **import_options)
    content = read_datalist(datalist)
    region_map = resolve_regions(regions, content, str(datalist))
    counts = {split: len(content.get(split) or []) for split in ("training", "validation", "test")}
    budget = ComputeBudget.detect(time_budget_s, device=device, threads=threads)
    fingerprint = dataset_fingerprint(datalist, "training", max_cases=max_cases)
    if timer is not None:
        logger.info("step timings replayed from %s (no timing)", timer.source)
    plan = make_plan(
        fingerprint, budget, counts=counts, dims=dims, network=network, regions=region_map, timer=timer
    )
    write_planned_bundle(out, plan, fingerprint, datalist)
    return plan
