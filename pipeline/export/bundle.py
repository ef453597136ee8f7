"""``clinseg export``: a training run packed as a self-contained bundle in the MONAI model-zoo layout::

    configs/    train.yaml (the config as run), inference.yaml, evaluate.yaml (standalone: common.yaml merged in),
                metadata.json (measured metrics, version, changelog, pinned packages), overlays, logging.conf
    models/     model.pt ({"model": state_dict, "network": {name, kwargs}}, weights_only-loadable),
                qc_reference.json (the training data's QC reference and fitted temperature, when the run has one),
                model.ts (TorchScript with metadata and inference config, as ``monai.bundle ckpt_export`` writes)
    docs/       README.md (how it was trained, what it measured)
    LICENSE

``clinseg predict OUT`` takes ``models/model.pt`` by default, ``python -m monai.bundle run --config_file
configs/inference.yaml`` runs from OUT, and MONAI Label's ``BundleInferTask`` serves OUT as it is.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
from monai.bundle import ckpt_export

from pipeline.inference.qc_reference_file import QC_REFERENCE_NAME
from pipeline.core.atomic import atomic_write_json
from pipeline.core.bundle import Bundle
from pipeline.core.checkpoint import CheckpointError, load_checkpoint
from pipeline.export.card import export_version, exported_metadata, exported_readme, license_text
from pipeline.export.configs import exported_configs, other_config_files, write_yaml
from pipeline.export.record import RunRecord, run_record
from transforms.io.atomic import atomic_folder

__all__ = ["export_bundle", "source_bundle"]

logger = logging.getLogger(__name__)

_HEADERS = {
    "train": "The config as run (common.yaml, train.yaml, overlays and overrides merged) of {run}.\n"
    "Train again: clinseg train BUNDLE --dataset-dir DATA",
    "inference": "Standalone inference config of {run} (common.yaml merged in, the run's grid, patch and "
    "network).\nFrom the bundle folder: python -m monai.bundle run --config_file configs/inference.yaml "
    "--dataset_dir DATA\nor: clinseg predict BUNDLE --input PATIENTS --output OUT. pre_transforms, post_transforms "
    "and monai_label are for MONAI Label's BundleInferTask.",
    "evaluate": "Validate models/model.pt with the training run's validation pipeline ({run}).\n"
    "python -m monai.bundle run --config_file configs/evaluate.yaml --dataset_dir DATA",
}


def source_bundle(record: RunRecord, bundle: str | Path | Bundle | None) -> Bundle:
    """The bundle a run trained: ``bundle`` when given, else the ``bundle_root`` its config as run names."""
    if isinstance(bundle, Bundle):
        return bundle
    if bundle is not None:
        return Bundle.at(bundle)
    root = (record.config_as_run or {}).get("bundle_root")
    if not root or str(root).startswith("$") or not Path(root).is_dir():
        raise ValueError(
            f"cannot tell which bundle trained {record.checkpoint} (no usable bundle_root in its config_run.json); "
            "name it with --bundle"
        )
    return Bundle.at(root)


def export_bundle(
    run: str | Path | RunRecord,
    out: str | Path,
    *,
    bundle: str | Path | Bundle | None = None,
    version: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Export a training run as a self-contained bundle folder ``out`` (see the module docstring).

    Args:
        run: the run's checkpoint folder (``clinseg train --ckpt-dir``), one checkpoint in it, or a
            :class:`RunRecord` already read.
        out: the bundle folder to write; written beside and moved in when complete.
        bundle: the bundle that trained it (default: the ``bundle_root`` of its ``config_run.json``).
        version: the export's version (default: the bundle's version + the run's timestamp).
        overwrite: replace an existing ``out``.

    Returns:
        ``out``.
    """
    record = run if isinstance(run, RunRecord) else run_record(run)
    source = source_bundle(record, bundle)
    out = Path(out).resolve()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
    checkpoint = load_checkpoint(record.checkpoint)
    if "network" not in checkpoint:
        raise CheckpointError(
            f"checkpoint {record.checkpoint} does not record its network (no 'network' entry)"
        )
    source_meta = json.loads(source.meta_file.read_text())
    meta = exported_metadata(
        source_meta, record, version or export_version(str(source_meta["version"]), record)
    )
    configs = exported_configs(source, record.config_as_run)
    run_text = record.source()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(out) as staging:
        for folder in ("configs", "models", "docs"):
            (staging / folder).mkdir()
        for name, config in configs.items():
            write_yaml(config, staging / "configs" / f"{name}.yaml", _HEADERS[name].format(run=run_text))
        for path in other_config_files(source):
            shutil.copyfile(path, staging / "configs" / path.name)
        atomic_write_json(staging / "configs" / "metadata.json", meta)
        torch.save(
            {"model": checkpoint["model"], "network": checkpoint["network"]}, staging / "models" / "model.pt"
        )
        qc_reference = record.checkpoint.parent / QC_REFERENCE_NAME
        if qc_reference.is_file():  # the training data's reference and temperature travel with the weights
            shutil.copyfile(qc_reference, staging / "models" / QC_REFERENCE_NAME)
        else:
            logger.warning(
                "%s has no %s: the exported bundle's predictions get QC from their uncertainty only "
                "(write one with: clinseg qc-reference)", record.checkpoint.parent, QC_REFERENCE_NAME,
            )  # fmt: skip
        if "inference" in configs:
            _torchscript(staging)
        (staging / "docs" / "README.md").write_text(exported_readme(meta, record, configs["train"]))
        license_file = source.root / "LICENSE"
        if license_file.is_file():
            shutil.copyfile(license_file, staging / "LICENSE")
        else:
            (staging / "LICENSE").write_text(license_text(meta))
    logger.info("exported %s as bundle %s %s", run_text, meta["name"], meta["version"])
    return out


def _torchscript(root: Path) -> Path:
    """``models/model.ts`` through ``monai.bundle ckpt_export``: the inference config's ``network_def`` loaded
    strictly with ``models/model.pt`` (so the config and the weights are checked to fit), scripted, saved with
    the metadata and the config."""
    target = root / "models" / "model.ts"
    ckpt_export(
        net_id="network_def", filepath=str(target), ckpt_file=str(root / "models" / "model.pt"),
        meta_file=str(root / "configs" / "metadata.json"), config_file=str(root / "configs" / "inference.yaml"),
        key_in_ckpt="model", bundle_root=str(root),
    )  # fmt: skip
    return target
