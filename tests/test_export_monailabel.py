"""MONAI Label serves an exported bundle as it is: its ``BundleInferTask`` (monailabel 0.8.5,
``monailabel/tasks/infer/bundle.py`` and ``basic_infer.py``) runs on a synthetic volume and gives the label map
clinseg's Predictor gives.

``monailabel`` cannot install beside clinseg's stack with its requirements (its ``pydicom-seg`` pins numpy<2 and
jsonschema<4; its torchvision pulls another torch), so the real task runs only where it imports (``pip install
--no-deps monailabel`` plus its import-time packages: itk, pynrrd, shapely, expiring-dict, pydantic-settings and a
torchvision built for the installed torch). The contract test runs everywhere: it does what ``BundleInferTask``
does, step by step, with the keys and files it reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose, SaveImaged, Spacingd

from pipeline.export.bundle import export_bundle
from pipeline.inference.options import InferenceOptions
from pipeline.inference.predictor import Predictor
from tests.conftest import BUNDLES
from tests.export_fixtures import untrained_checkpoint

BUNDLE = BUNDLES / "ct_organ_resunet3d"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("monailabel")
    torch.manual_seed(0)
    return export_bundle(untrained_checkpoint(BUNDLE, root / "run"), root / "ct_organ_resunet3d", bundle=BUNDLE)


@pytest.fixture(scope="module")
def volume(tiny_dataset) -> Path:
    """A synthetic CT (NIfTI) of the tiny dataset's test split."""
    return tiny_dataset.parent / json.loads(tiny_dataset.read_text())["test"][0]["image"]


@pytest.fixture(scope="module")
def reference(exported, volume) -> np.ndarray:
    predictor = Predictor.from_bundle(exported, options=InferenceOptions(device="cpu", amp=False))
    return predictor.predict(volume).labels[0].numpy()


def _last_key(config: ConfigParser, keys: tuple[str, ...]) -> str:
    """The key BundleInferTask takes: it loops over its keys and keeps the last one the config has."""
    found = [k for k in keys if config.get(k)]
    assert found, f"none of {keys} in inference.yaml"
    return found[-1]


def test_bundle_infer_task_contract(exported, volume, reference):
    # files: configs/inference.(json|yaml), configs/metadata.json, models/model.pt (else model.ts)
    assert (exported / "configs" / "inference.yaml").is_file() and (exported / "models" / "model.pt").is_file()
    config = ConfigParser()
    config.read_config(str(exported / "configs" / "inference.yaml"))
    config.config.update({"bundle_root": str(exported)})
    network = config.get_parsed_content("network_def", instantiate=True)
    meta = json.loads((exported / "configs" / "metadata.json").read_text())
    key_image, _ = next(iter(meta["network_data_format"]["inputs"].items()))
    key_pred, pred = next(iter(meta["network_data_format"]["outputs"].items()))
    assert (key_image, key_pred) == ("image", "pred")  # BasicInferTask's input_key and output_label_key
    labels = {v.lower(): int(k) for k, v in pred["channel_def"].items() if v.lower() != "background"}
    assert labels == {"organ": 1, "lesion": 2}
    checkpoint = torch.load(exported / "models" / "model.pt", map_location="cpu")  # as _get_network loads it
    state = checkpoint.get("model", checkpoint)
    assert set(state) == set(network.state_dict())
    network.load_state_dict(state, strict=True)
    network.eval()

    pre = config.get_parsed_content(_last_key(config, ("preprocessing", "pre_transforms")), instantiate=True)
    pre = list(pre.transforms) if isinstance(pre, Compose) else pre
    assert any(isinstance(t, Spacingd) and key_image in t.keys for t in pre)
    data = {"image": str(volume), "image_path": str(volume), "device": "cpu"}
    for transform in pre:  # run_transforms(..., use_compose=False)
        data = transform(data)
    inferer = config.get_parsed_content("inferer", instantiate=True)
    with torch.no_grad():
        data[key_pred] = inferer(data[key_image][None], network)[0]
    post = config.get_parsed_content(_last_key(config, ("postprocessing", "post_transforms")), instantiate=True)
    post = [t for t in (list(post.transforms) if isinstance(post, Compose) else post) if not isinstance(t, SaveImaged)]
    for transform in post:
        data = transform(data)
    result, image = data[key_pred], data[key_image]
    assert isinstance(image, MetaTensor)
    # Restored(keys=pred, ref_image=image): no resize when the label map is on the input grid already
    assert tuple(result.shape[1:]) == tuple(int(s) for s in image.meta["spatial_shape"])
    np.testing.assert_array_equal(np.asarray(result[0]), reference)
    np.testing.assert_allclose(np.asarray(image.meta["original_affine"]), nib.load(str(volume)).affine, atol=1e-5)


def test_monailabel_bundle_infer_task_serves_the_export(exported, volume, reference):
    bundle = pytest.importorskip(
        "monailabel.tasks.infer.bundle",
        reason="monailabel is not importable here (it cannot install beside clinseg's numpy/torch; see this "
        "module's docstring)",
    )
    task = bundle.BundleInferTask(str(exported), {})
    assert task.is_valid(), "BundleInferTask ignored the exported bundle"
    assert task.labels == {"organ": 1, "lesion": 2}
    result_file, result_json = task({"image": str(volume), "device": "cpu"})
    written = nib.load(result_file)
    assert written.shape == reference.shape
    np.testing.assert_array_equal(np.asarray(written.dataobj), reference)
    np.testing.assert_allclose(written.affine, nib.load(str(volume)).affine, atol=1e-4)
    assert result_json["label_names"] == {"organ": 1, "lesion": 2}
