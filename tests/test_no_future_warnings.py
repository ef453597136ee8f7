"""Our own calls raise no FutureWarning: every bundle's preprocessing (inference and training) applied to a tiny
image, a tiny prediction with each bundle, and the evaluation metrics.

pyproject's ``filterwarnings`` ignores FutureWarning for the rest of the suite; these tests record every warning
themselves (``catch_warnings(record=True)`` with ``simplefilter("always")`` overrides the ini filters), so an
ignored-by-config warning still fails here. Library deprecations such as MONAI's changed ``Orientationd``
``labels`` default are reported from inside the library (``deprecate_utils.py``), so the test does not filter
by the warning's file: any FutureWarning raised during our calls fails it.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from pipeline.core.bundle import Bundle
from pipeline.inference.options import InferenceOptions
from pipeline.inference.predictor import Predictor
from pipeline.synthetic.phantoms import synthesize
from tests.conftest import BUNDLES

BUNDLE_DIRS = sorted(p for p in BUNDLES.iterdir() if (p / "configs" / "metadata.json").is_file())
_PREPROCESSING = {"inference": ["preprocessing"], "train": ["train#preprocessing", "validate#preprocessing"]}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[int, Path]:
    """Two tiny synthetic CT+MR patients per dimensionality: ``{spatial_dims: dataset.json}``."""
    root = tmp_path_factory.mktemp("future_warnings")
    return {
        3: synthesize(root / "3d", cases=2, seed=5, shape=(36, 34, 16), splits=(0.5, 0.0, 0.5)),
        2: synthesize(root / "2d", cases=2, seed=5, spatial_dims=2, shape=(36, 34), splits=(0.5, 0.0, 0.5)),
    }


def _case(dataset_json: Path) -> dict[str, str]:
    """The first training entry with absolute paths."""
    entry = json.loads(dataset_json.read_text())["training"][0]
    return {k: str(dataset_json.parent / v) if k != "case" else v for k, v in entry.items()}


def _future_warnings(call: Callable[[], object]) -> Iterator[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    for w in caught:
        if issubclass(w.category, FutureWarning):
            yield f"{w.filename}:{w.lineno}: {w.message}"


def _spatial_dims(bundle: Bundle) -> int:
    return int(bundle.parser("inference").get("spatial_dims"))


@pytest.mark.parametrize("bundle_dir", BUNDLE_DIRS, ids=lambda p: p.name)
@pytest.mark.parametrize("config", sorted(_PREPROCESSING))
def test_preprocessing_raises_no_future_warning(bundle_dir, config, datasets):
    bundle = Bundle.at(bundle_dir)
    dataset = datasets[_spatial_dims(bundle)]
    case = _case(dataset)

    def run() -> None:
        parser = bundle.parser(config, dataset_dir=str(dataset.parent))
        for component in _PREPROCESSING[config]:
            out = parser.get_parsed_content(component)(dict(case))
            assert out, component

    assert list(_future_warnings(run)) == []


@pytest.mark.parametrize("bundle_dir", BUNDLE_DIRS, ids=lambda p: p.name)
def test_prediction_raises_no_future_warning(bundle_dir, datasets, tmp_path):
    bundle = Bundle.at(bundle_dir)
    spatial_dims = _spatial_dims(bundle)
    checkpoint = tmp_path / "model.pt"
    torch.save({"model": bundle.parser("inference").get_parsed_content("network_def").state_dict()}, checkpoint)
    options = InferenceOptions(roi_size=(16,) * spatial_dims, device="cpu")
    case = _case(datasets[spatial_dims])
    shapes = []

    def run() -> None:
        predictor = Predictor.from_bundle(bundle, checkpoint, options=options)
        shapes.append(tuple(predictor.predict({k: case[k] for k in predictor.input_keys}).labels.shape))

    assert list(_future_warnings(run)) == []
    assert len(shapes[0]) == spatial_dims + 1


def test_evaluation_metrics_raise_no_future_warning():
    from pipeline.evaluation.evaluate import case_metrics

    pred = torch.zeros(1, 12, 13, 9, dtype=torch.uint8)
    pred[0, 2:8, 3:9, 2:7] = 1
    label = torch.roll(pred, 1, dims=1)
    rows = []

    def score() -> None:
        rows.extend(case_metrics(pred, label, [1.0, 1.0, 2.5], {1: "organ"}))

    assert list(_future_warnings(score)) == []
    assert 0 < rows[0]["dice"] < 1 and rows[0]["hd95_mm"] > 0
