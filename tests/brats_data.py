"""The 4 BRATS subjects of ``../shared/data/brats`` imported as a clinseg datalist, for the real-data tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.datasets.importer import import_dataset

BRATS_CHANNELS = "flair:MR=Flair_*;t1c:MR=T1c_*;label=OTMulti*"
BRATS_STRUCTURES = "1=necrosis;2=edema;3=non-enhancing;4=enhancing"


def import_brats(shared_data: Path, dest: Path) -> Path:
    """FLAIR + T1c with the 4 labels: 2 training, 1 validation, 1 test subject; the datalist's path.
    Skips the test where the data is absent."""
    src = shared_data / "brats"
    if not src.is_dir():
        pytest.skip(f"{src} is absent")
    import_dataset(src, dest, channels=BRATS_CHANNELS, structures=BRATS_STRUCTURES, test_fraction=0.25, folds=1)
    content = json.loads((dest / "dataset.json").read_text())
    content["validation"] = content["training"][-1:]
    content["training"] = content["training"][:-1]
    (dest / "dataset.json").write_text(json.dumps(content))
    return dest / "dataset.json"
