"""Shared fixtures: torch kept to the machine's cores (split among the test workers), deterministic seeds, the real-data folder, tiny datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# the machine's cores shared among pytest-xdist's workers (PYTEST_XDIST_WORKER_COUNT; 1 without xdist)
torch.set_num_threads(max(1, (os.cpu_count() or 2) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
BUNDLES = REPO / "bundles"
TINY_SHAPE = (48, 44, 16)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real de-identified scans); tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """Six tiny synthetic CT patients (NIfTI and DICOM), 3 training / 1 validation / 2 test; returns dataset.json."""
    from pipeline.synthetic.phantoms import synthesize

    out = tmp_path_factory.mktemp("tiny_dataset")
    return synthesize(out, cases=6, seed=3, formats=("nifti", "dicom"), shape=TINY_SHAPE, splits=(0.5, 0.2, 0.3))
