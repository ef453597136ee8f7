"""The components a bundle's configs resolve to through MONAI's ``ConfigParser`` (network class and arguments,
loss, optimizer, transform types and keys, handlers, engines), as plain data: the record that proves a config
refactoring changed nothing. ``python -m tests.bundle_components`` rewrites ``tests/data/bundle_components.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser

from pipeline.core.bundle import Bundle
from tests.conftest import BUNDLES

RECORD = Path(__file__).with_name("data") / "bundle_components.json"
SHIPPED = sorted(p for p in BUNDLES.iterdir() if (p / "configs" / "metadata.json").is_file())
# config ids kept as merged data (references unresolved: they name the same components)
TRAIN_IDS = ["train#datalist", "train#dataset", "train#dataloader", "train#inferer", "train#handlers",
             "train#key_metric", "train#trainer", "best_checkpoint_saver", "lr_scheduler", "validate#datalist",
             "validate#dataset", "validate#dataloader", "validate#inferer", "validate#postprocessing",
             "validate#handlers", "validate#key_metric", "validate#additional_metrics", "validate#evaluator",
             "loss", "optimizer", "network_spec", "network_args", "augmentation", "random_transforms",
             "initialize", "run", "finalize"]  # fmt: skip
INFERENCE_IDS = ["datalist", "dataset", "dataloader", "inferer", "postprocessing", "writer", "handlers",
                 "evaluator", "initialize", "run", "preprocessing_transforms", "network_args"]  # fmt: skip
EVALUATE_IDS = ["ckpt_path", "validate#handlers", "initialize", "run", "finalize"]
# knobs and components a config may name or hold inline: recorded inline (``crop``: the shared base's patch crop)
INLINED = ("label_postprocessing", "tracked_params", "crop")


def _transforms(compose: Any) -> list[dict[str, Any]]:
    """Type and keys of each transform of a built ``Compose``."""
    return [{"type": type(t).__name__, "keys": list(getattr(t, "keys", []) or [])} for t in compose.transforms]


def _parser(bundle: Path, config: list[str]) -> ConfigParser:
    parser = Bundle.at(bundle).parser(config)
    parser.parse()
    return parser


def _inline(value: Any, parser: ConfigParser) -> Any:
    """``value`` with references to the :data:`INLINED` knobs replaced by their configs."""
    if isinstance(value, dict):
        return {k: _inline(v, parser) for k, v in value.items()}
    if isinstance(value, list):
        return [_inline(v, parser) for v in value]
    if isinstance(value, str) and value.startswith("@") and value[1:] in INLINED:
        return parser.get(value[1:])
    return value


def _ids(parser: ConfigParser, ids: list[str]) -> dict[str, Any]:
    """The configs of ``ids``; an id that is a bare reference to a whole component defined elsewhere
    (``validate#inferer: '@inferer'``, common's sliding window) is recorded as that component's config."""
    values = {id_: parser.get(id_) for id_ in ids if id_ in parser}
    whole = {k: parser.get(v[1:]) for k, v in values.items() if isinstance(v, str) and v.startswith("@") and v[1:] in parser}
    return {id_: _inline(whole.get(id_, value), parser) for id_, value in values.items()}


def components(bundle: Path) -> dict[str, Any]:
    """The resolved components of ``bundle``'s train, inference and evaluate configs."""
    torch.manual_seed(0)
    train = _parser(bundle, ["train"])
    network = train.get_parsed_content("network_def")
    record: dict[str, Any] = {
        "network": {"type": type(network).__name__, "args": train.get_parsed_content("network_args"),
                    "parameters": sum(p.numel() for p in network.parameters())},
        "loss": type(train.get_parsed_content("loss")).__name__,
        "optimizer": type(train.get_parsed_content("optimizer")).__name__,
        "train_transforms": _transforms(train.get_parsed_content("train#preprocessing")),
        "validate_transforms": _transforms(train.get_parsed_content("validate#preprocessing")),
        "train": _ids(train, TRAIN_IDS),
    }
    inference = _parser(bundle, ["inference"])
    record["inference_transforms"] = _transforms(inference.get_parsed_content("preprocessing"))
    record["inference"] = _ids(inference, INFERENCE_IDS)
    evaluate = _parser(bundle, ["train", "evaluate"])
    record["evaluate"] = _ids(evaluate, EVALUATE_IDS)
    return json.loads(json.dumps(record, default=str))


def planned_bundle(out: Path) -> Path:
    """A 3D CT bundle planned from a hand-made fingerprint (the step time stubbed: no measurement)."""
    from pipeline.planning import plan as plan_module
    from pipeline.planning.bundle_writer import write_planned_bundle
    from pipeline.planning.compute import ComputeBudget
    from pipeline.planning.plan import make_plan
    from tests.planning_fixtures import fake_fingerprint, step_timing

    fingerprint = fake_fingerprint([0.8, 0.8, 2.5], [0.7, 0.7, 2.0], [256, 256, 60], {"ct": "CT"},
                                   nonzero=0.95, background=0.01, labels=("liver", "tumour"))  # fmt: skip
    plan = make_plan(
        fingerprint, ComputeBudget("cpu", 600.0), counts={"training": 8, "validation": 2}, dims="3d",
        timer=lambda *a, **k: step_timing(0.05),
    )
    datalist = out / "data" / "dataset.json"
    datalist.parent.mkdir(parents=True, exist_ok=True)
    datalist.write_text(json.dumps({"channels": {"ct": "CT"}, "training": [], "validation": [], "test": []}))
    return write_planned_bundle(out / "planned", plan, fingerprint, datalist)


def all_components(tmp: Path) -> dict[str, Any]:
    """Every shipped bundle's components and a planned one's (``planned``)."""
    record = {bundle.name: components(bundle) for bundle in SHIPPED}
    record["planned"] = components(planned_bundle(tmp))
    return record


if __name__ == "__main__":
    import tempfile

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        RECORD.write_text(json.dumps(all_components(Path(tmp)), indent=1, sort_keys=True) + "\n")
    sys.stdout.write(f"wrote {RECORD}\n")
