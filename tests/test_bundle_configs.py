"""Bundle YAML says each setting once: per bundle, ``common.yaml`` holds what train, evaluate and inference share;
across bundles, what must be equal (training and validation wiring, inference engine, logging) is equal.

Fast: the YAML files are read as data, nothing is built.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from monai.bundle import ConfigParser

from pipeline.core.bundle import Bundle
from tests.conftest import BUNDLES, REPO

BUNDLE_DIRS = sorted(p for p in BUNDLES.iterdir() if (p / "configs" / "metadata.json").is_file())
WORKFLOWS = ("train", "evaluate", "inference")

# keys train.yaml and inference.yaml both define, each for its own workflow (the comment beside each says why)
PER_WORKFLOW = {
    "+imports": "each adds the modules its own components need",
    "initialize": "training checks the tracking server; inference sets cudnn.benchmark",
    "run": "the trainer vs the inference evaluator",
    "label_keys": "training loads the label with the images; inference the images only",
    "resample_dtype": "float64 (MONAI's default) for training; float32 for whole volumes at inference",
    "sw_overlap": "0.25 for validation every val_interval; 0.5 once per case at inference",
}
# ...and inference.yaml and evaluate.yaml both define
INFERENCE_VS_EVALUATE = {
    "ckpt_path": "evaluate.yaml follows train.yaml's --ckpt_dir; inference.yaml the bundle's models/",
    "initialize": "evaluate.yaml seeds like training",
    "run": "the validation evaluator vs the inference evaluator",
}
# train.yaml ids equal in every bundle (fusion: its pretrained-weights loader comes on top, see _handlers)
SAME_TRAINING = ["train#datalist", "train#dataset", "train#dataloader", "train#inferer", "train#key_metric",
                 "train#trainer", "best_checkpoint_saver", "lr_scheduler", "validate#datalist", "validate#dataset",
                 "validate#dataloader", "validate#inferer", "validate#postprocessing", "validate#handlers",
                 "validate#key_metric", "validate#additional_metrics", "validate#evaluator", "is_not_rank0",
                 "initialize", "run", "finalize", "optimizer", "network_spec"]  # fmt: skip
SAME_INFERENCE = ["datalist", "dataloader", "writer", "handlers", "evaluator", "initialize", "run"]
SAME_COMMON = ["imports", "bundle_root", "dataset_dir", "datalist_file", "output_dir", "device", "network_def",
               "network", "data_keys", "resample_modes", "inferer"]  # fmt: skip
SAME_EVALUATE = ["ckpt_path", "initialize", "run", "finalize"]


def _load(bundle: Path, name: str) -> dict:
    """``configs/<name>.yaml`` as MONAI merges it: over the shared base's ``<name>.yaml`` where there is one
    (the ``evaluate`` overlay's ids, such as ``validate#handlers``, kept as written)."""
    files = Bundle.at(bundle).config_files(name, with_common=False)
    if name == "evaluate":
        return {k: v for f in files for k, v in yaml.safe_load(Path(f).read_text()).items()}
    merged = ConfigParser.load_config_files(files)
    if "+imports" in Path(files[0]).read_text():  # merged alone, the base's `+imports` reads `imports`
        merged["+imports"] = merged.pop("imports")
    return merged


def _get(config: dict, id_: str):
    for key in id_.split("#"):
        config = config[key]
    return _as_sliding_window(config) if id_.endswith("inferer") else config


def _as_sliding_window(inferer: dict) -> dict:
    """A 2D bundle's slice-by-slice inferer (volumes one axial slice at a time) is otherwise the same sliding
    window as every bundle's: compared as one."""
    if not isinstance(inferer, dict) or inferer.get("_target_") != "pipeline.inference.slice_inferer.SliceWiseInferer":
        return inferer
    assert inferer.get("spatial_dim") == 2, "slices are axial: the last spatial axis"
    plain = {k: v for k, v in inferer.items() if k != "spatial_dim"}
    return {**plain, "_target_": "SlidingWindowInferer"}


@pytest.mark.parametrize("bundle", BUNDLE_DIRS, ids=lambda p: p.name)
def test_shared_settings_are_defined_once(bundle):
    common = set(_load(bundle, "common"))
    configs = {name: set(_load(bundle, name)) for name in WORKFLOWS}
    for name, keys in configs.items():
        assert common & keys == set(), f"{bundle.name}: {name}.yaml redefines common.yaml's {sorted(common & keys)}"
    assert configs["train"] & configs["inference"] == set(PER_WORKFLOW)
    assert configs["inference"] & configs["evaluate"] == set(INFERENCE_VS_EVALUATE)
    for key in ("network_def", "preprocessing_transforms", "normalise", "spacing", "roi_size", "network_args"):
        assert key in common, f"{bundle.name}: common.yaml lacks {key}"


@pytest.mark.parametrize("bundle", BUNDLE_DIRS, ids=lambda p: p.name)
def test_per_workflow_keys_say_why(bundle):
    """Every key train.yaml and inference.yaml both define has a comment on its line in each (sw_overlap, ...)."""
    for name in ("train", "inference"):
        lines = "".join(Path(f).read_text() for f in Bundle.at(bundle).config_files(name, with_common=False))
        lines = lines.splitlines()
        for key in ("label_keys", "resample_dtype", "sw_overlap"):
            (line,) = [line for line in lines if line.startswith(f"{key}:")]
            assert "#" in line, f"{bundle.name}/{name}.yaml: {key} differs per workflow and must say why"


@pytest.mark.parametrize("bundle", BUNDLE_DIRS, ids=lambda p: p.name)
def test_adaptable_transforms_are_named_and_used(bundle):
    """``normalise`` and ``augmentation`` entries are referenced by name into the transform lists, each once."""
    common, train = _load(bundle, "common"), _load(bundle, "train")
    refs = [t for t in common["preprocessing_transforms"] if isinstance(t, str)]
    assert refs == [f"@normalise#{name}" for name in common["normalise"]]
    refs = [t for t in train["random_transforms"] if isinstance(t, str)]
    assert refs == ["@crop"] + [f"@augmentation#{name}" for name in train["augmentation"]]  # the base's crop first
    for f in Bundle.at(bundle).config_files(list(WORKFLOWS)):
        assert not re.search(r"(transforms|preprocessing|handlers)#\d", Path(f).read_text()), f


def _handlers(bundle: Path) -> list:
    handlers = _load(bundle, "train")["train"]["handlers"]
    return [{k: v for k, v in h.items() if k != "experiment_param"} for h in handlers
            if h["_target_"] != "pipeline.training.fusion.PretrainedWeightsLoader"]  # fmt: skip


def test_training_validation_and_inference_wiring_is_equal_across_bundles():
    first = BUNDLE_DIRS[0]
    for bundle in BUNDLE_DIRS[1:]:
        assert _handlers(bundle) == _handlers(first), f"{bundle.name}'s train#handlers differ from {first.name}'s"
        for name, ids in [("train", SAME_TRAINING), ("inference", SAME_INFERENCE), ("common", SAME_COMMON),
                          ("evaluate", SAME_EVALUATE)]:  # fmt: skip
            a, b = _load(first, name), _load(bundle, name)
            for id_ in ids:
                assert _get(b, id_) == _get(a, id_), f"{bundle.name}/{name}.yaml {id_} differs from {first.name}'s"
        if "stack" not in _load(bundle, "common"):  # the fusion bundle stacks CT and MR first (its train.yaml says so)
            for id_ in ("train#preprocessing", "validate#preprocessing"):
                assert _get(_load(bundle, "train"), id_) == _get(_load(first, "train"), id_), f"{bundle.name}: {id_}"


def test_fusion_pretrained_loader_is_the_only_extra_handler():
    for bundle in BUNDLE_DIRS:
        targets = [h["_target_"] for h in _load(bundle, "train")["train"]["handlers"]]
        extra = ["pipeline.training.fusion.PretrainedWeightsLoader"] if bundle.name == "ctmr_fusion_seg3d" else []
        assert [t for t in targets if t.endswith("PretrainedWeightsLoader")] == extra
        assert "pipeline.tracking.run_artifacts.RunArtifactsHandler" in targets


def test_one_logging_conf_found_in_every_bundle():
    shared = BUNDLES / "logging.conf"
    for bundle in BUNDLE_DIRS:
        assert (bundle / "configs" / "logging.conf").resolve() == shared.resolve(), f"{bundle.name}: own logging.conf"


@pytest.mark.parametrize("bundle", BUNDLE_DIRS, ids=lambda p: p.name)
def test_clinseg_merges_common_then_base_then_delta(bundle):
    files = [Path(f) for f in Bundle.at(bundle).config_files(["train", "evaluate"])]
    assert [(f.parent.name, f.name) for f in files] == [
        ("_base", "base_common.yaml"), ("configs", "common.yaml"), ("_base", "base_train.yaml"), ("configs", "train.yaml"),
        ("_base", "base_evaluate.yaml"),
    ]


def _documented_config_lists() -> list[tuple[Path, list[str]]]:
    found = []
    docs = [REPO / "README.md", *sorted(BUNDLES.glob("*/docs/README.md")), *sorted(BUNDLES.glob("*/configs/*.yaml"))]
    for doc in docs:
        text = doc.read_text().replace("\\\n#", " ").replace("\n#       ", " ")
        for match in re.finditer(r"--config_file\s+(\"\[[^\]]*\]\"|\S+)", text):
            value = shlex.split(match.group(1))[0]
            files = yaml.safe_load(value) if value.startswith("[") else [value]
            found.append((doc, files))
    return found


def test_documented_monai_commands_load_common_first():
    """Every ``--config_file`` in the README, the bundle docs and the config headers starts with the shared
    base_common.yaml, then the bundle's common.yaml (train.yaml alone holds neither the network nor the data), and
    names files that exist."""
    documented = _documented_config_lists()
    assert len(documented) > 20
    for doc, files in documented:
        if files == ["configs/inference.yaml"]:  # run inside an exported bundle: `clinseg export` flattens it
            continue
        if len(files) == 1 and Path(files[0]).name == "common.yaml":  # the model zoo's single-file form: the network
            continue
        first = [Path(f).name for f in files[:2]]
        assert first == ["base_common.yaml", "common.yaml"], f"{doc}: --config_file {files} must load the bases first"
        for f in files:
            path = Path(f.replace("$B", "bundles/ctmr_fusion_seg3d"))
            if "..." not in f:
                assert (REPO / path).is_file(), f"{doc}: {f} does not exist"
