"""Runs to export: an untrained checkpoint of any bundle (cheap, no training) and a tiny 1-epoch training run."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.core.bundle import Bundle
from pipeline.core.checkpoint import NetworkSpec


def untrained_checkpoint(bundle: Path, folder: Path, best: float = 0.5, epoch: int = 3) -> Path:
    """``folder/model.pt`` as ``BestCheckpointSaver`` writes it (weights, network spec, validation state), with the
    bundle's network at its initial weights; no ``config_run.json`` (export then takes the shipped configs)."""
    parser = Bundle.at(bundle).parser("inference")
    spec = NetworkSpec(parser.get_parsed_content("network_name"), parser.get_parsed_content("network_args"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.pt"
    checkpoint = {
        "model": spec.build().state_dict(), "network": spec.state_dict(),
        "validation": {"best_metric": best, "best_metric_epoch": epoch},
    }  # fmt: skip
    torch.save(checkpoint, path)
    return path


TINY_TRAINING = {"val_interval": 1, "batch_size": 2, "samples_per_volume": 1, "roi_size": [32, 32, 16]}
"""Overrides of a 1-epoch training of ct_organ_resunet3d on ``tiny_dataset``."""
