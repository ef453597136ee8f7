"""Every bundle: the MONAI Bundle specification's required metadata keys, and ``verify_net_in_out`` passes.

``monai.bundle verify_metadata`` downloads its JSON schema at run time, which this machine cannot; the keys
below are the mandatory ones of MONAI's ``docs/source/mb_specification.rst``.
"""

from __future__ import annotations

import json

import pytest
from monai.bundle import verify_net_in_out

from pipeline.core.bundle import Bundle
from tests.conftest import BUNDLES

BUNDLE_DIRS = sorted(p for p in BUNDLES.iterdir() if (p / "configs" / "metadata.json").is_file())
REQUIRED = ["version", "monai_version", "pytorch_version", "numpy_version", "task", "description", "authors",
            "copyright", "network_data_format"]  # fmt: skip
TENSOR_KEYS = ["type", "format", "num_channels", "spatial_shape", "dtype", "value_range", "is_patch_data", "channel_def"]


def test_bundles_exist():
    assert BUNDLE_DIRS, f"no bundles under {BUNDLES}"


@pytest.mark.parametrize("bundle", BUNDLE_DIRS, ids=lambda p: p.name)
def test_metadata_has_every_required_key(bundle):
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert [k for k in REQUIRED if k not in meta] == []
    assert "required_packages_version" in meta or "optional_packages_version" in meta
    assert meta["version"] in meta.get("changelog", {}), "the current version needs a changelog entry"
    assert "not for" in meta.get("intended_use", "").lower(), "intended_use must say research use, not diagnosis"
    fmt = meta["network_data_format"]
    assert fmt["inputs"] and fmt["outputs"]
    for tensor in [*fmt["inputs"].values(), *fmt["outputs"].values()]:
        assert [k for k in TENSOR_KEYS if k not in tensor] == []
        assert len(tensor["channel_def"]) == tensor["num_channels"]
    if "logits" in meta.get("pred_classes", ""):  # channels of scores: the zoo's "segmentation", no label map
        assert fmt["outputs"]["pred"]["format"] == "segmentation"


@pytest.mark.parametrize("bundle", BUNDLE_DIRS, ids=lambda p: p.name)
@pytest.mark.parametrize("config", ["common", "train", "inference"])
@pytest.mark.parametrize("n", [None, 3], ids=["defaults", "n3"])
def test_verify_net_in_out(bundle, config, n):
    """``python -m monai.bundle verify_net_in_out network_def --meta_file ... --config_file ...`` as MONAI runs
    it: default ``n``/``p``/``any`` (1) and device, so the smallest shape of ``spatial_shape`` must fit the net.
    ``common`` alone is the model zoo's single-file form (``--config_file configs/common.yaml``: the network is
    defined there); the workflows are merged as clinseg and the README's commands list them."""
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(bundle / "configs" / "metadata.json"),
        config_file=Bundle.at(bundle).config_files(config),
        bundle_root=str(bundle),
        **({} if n is None else {"n": n}),
    )


@pytest.mark.parametrize("bundle", BUNDLE_DIRS, ids=lambda p: p.name)
def test_bundle_has_docs_license_and_logging(bundle):
    for name in ["docs/README.md", "LICENSE", "configs/logging.conf", "configs/common.yaml", "configs/train.yaml"]:
        assert (bundle / name).is_file(), f"{bundle.name} lacks {name}"
    assert Bundle.at(bundle).has_config("inference") and Bundle.at(bundle).has_config("evaluate")


@pytest.mark.parametrize("bundle", BUNDLE_DIRS, ids=lambda p: p.name)
def test_ckpt_export_torchscript_round_trip(bundle, tmp_path):
    import torch
    from monai.bundle import ConfigParser, ckpt_export

    parser = ConfigParser()
    parser.read_config(Bundle.at(bundle).config_files("inference"))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser["bundle_root"] = str(bundle)
    net = parser.get_parsed_content("network_def").eval()
    torch.save({"model": net.state_dict()}, tmp_path / "model.pt")
    ckpt_export(
        net_id="network_def", filepath=str(tmp_path / "model.ts"), ckpt_file=str(tmp_path / "model.pt"),
        meta_file=str(bundle / "configs" / "metadata.json"), config_file=Bundle.at(bundle).config_files("inference"),
        key_in_ckpt="model", bundle_root=str(bundle),
    )  # fmt: skip
    exported = torch.jit.load(str(tmp_path / "model.ts"))
    fmt = json.loads((bundle / "configs" / "metadata.json").read_text())["network_data_format"]["inputs"]
    channels = next(iter(fmt.values()))["num_channels"]
    spatial = [32] * len(next(iter(fmt.values()))["spatial_shape"])
    x = torch.rand(1, channels, *spatial)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), net(x))
