"""Write a plan as a MONAI bundle: ``configs/common.yaml`` from the plan, the workflow configs from the
package's template (``train.yaml``, ``inference.yaml``, ``evaluate.yaml``, ``logging.conf``, the torchrun
overlay ``multi_gpu_train.yaml``), ``metadata.json``, ``plan.json`` and ``fingerprint.json`` (logged to MLflow
with the other configs), and ``docs/README.md``.

The template's workflows read only named knobs, so a planned bundle runs through ``python -m monai.bundle run``
and ``clinseg train|evaluate|predict`` like the shipped bundles; all planned values live in ``common.yaml``.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import monai
import numpy as np
import torch
import yaml

from pipeline.core.atomic import atomic_write_json, atomic_write_text
from pipeline.planning.region_bundle import region_template

__all__ = ["write_planned_bundle"]

TEMPLATE = Path(__file__).with_name("template")
ZOO_SCHEMA = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
REFERENCES = [
    "Isensee F. et al. nnU-Net: a self-configuring method for deep learning-based biomedical image segmentation. "
    "Nature Methods 18, 203-211 (2021): the planning rules restated",
    "Cardoso M. J. et al. MONAI: An open-source framework for deep learning in healthcare. arXiv:2211.02701 (2022)",
]
SLICE_INFERER = "_target_: pipeline.inference.slice_inferer.SliceWiseInferer\n{indent}spatial_dim: 2"


def _preprocessing(plan: Mapping[str, Any]) -> list[Any]:
    keys = list(plan["channels"])
    steps: list[Any] = [
        {"_target_": "transforms.io.scan.LoadScand", "keys": "@data_keys", "label_keys": "@label_keys"},
    ]
    if len(keys) > 1:
        steps.append(
            {"_target_": "ResampleToMatchd", "keys": keys[1:], "key_dst": keys[0], "mode": "bilinear"}
        )
    steps += [
        {"_target_": "Orientationd", "keys": "@data_keys", "axcodes": "RAS", "labels": None},
        {
            "_target_": "transforms.geometry.spacing.StableSpacingd",
            "keys": "@data_keys",
            "pixdim": "$@spacing + [-1] * (3 - @spatial_dims)",
            "mode": "@resample_modes",
            "dtype": "@resample_dtype",
        },
        *[f"@normalise#{key}" for key in keys],
        {"_target_": "EnsureTyped", "keys": "@data_keys"},
    ]
    return steps


def _random_transforms(plan: Mapping[str, Any]) -> list[Any]:
    steps: list[Any] = [
        {  # deterministic: cached by CacheDataset with the preprocessing
            "_target_": "ClassesToIndicesd",
            "keys": "label",
            "num_classes": "@label_classes",
        },
        {
            "_target_": "RandCropByLabelClassesd",
            "keys": ["image", "label"],
            "label_key": "label",
            "indices_key": "label_cls_indices",
            "spatial_size": "$@roi_size + [1] * (3 - @spatial_dims)",
            "num_classes": "@label_classes",  # sampled by the labels, also in a region plan
            "ratios": "@sampling_ratios",
            "num_samples": "@samples_per_volume",
            "warn": False,
        },
    ]
    if plan["spatial_dims"] == 2:
        steps.append({"_target_": "SqueezeDimd", "keys": ["image", "label"], "dim": -1})
    steps.append("@augmentation#standard")
    if plan["augmentation"]["mr_artifacts"]:
        steps.append("@augmentation#mr_artifacts")
    if plan.get("regions"):
        steps.append({"_target_": "transforms.labels.regions.LabelToRegionsd", "keys": "label", "regions": "@region_labels"})
    return steps


def _region_knobs(plan: Mapping[str, Any]) -> dict[str, Any]:
    """A region plan's knobs: regions (name -> labels, outermost first) and sigmoid outputs; none otherwise."""
    regions = plan.get("regions")
    if not regions:
        return {}
    return {
        "regions": dict(zip(regions["names"], regions["labels"])),
        "region_names": "$list(@regions)",
        "region_labels": "$list(@regions.values())",
        "output_activation": "sigmoid",
    }


def _augmentation(aug: Mapping[str, Any]) -> dict[str, Any]:
    presets: dict[str, Any] = {
        "standard": {
            "_target_": "transforms.augment.presets.standard_augmentation",
            "keys": ["image"],
            "label_keys": ["label"],
            "spatial_dims": "@spatial_dims",
            "flip_prob": aug["flip_prob"],
            "affine_prob": aug["affine_prob"],
            "rotate_deg": aug["rotate_deg"],
            "scale": aug["scale"],
            "intensity_prob": aug["intensity_prob"],
        }
    }
    if aug["mr_artifacts"]:
        presets["mr_artifacts"] = {
            "_target_": "transforms.augment.mr.mr_artifact_augmentation",
            "keys": ["image"],
            "label_keys": ["label"],
            "gamma_prob": 0.0,  # the standard augmentation's gamma already runs
        }
    return presets


def common_config(plan: Mapping[str, Any], datalist: Path, name: str) -> dict[str, Any]:
    """The planned ``common.yaml`` as a dict (knobs first, then components)."""
    training = plan["training"]
    return {
        "imports": ["$import torch", "$import networks"],
        "bundle_root": ".",
        "dataset_dir": str(datalist.resolve().parent),
        "datalist_file": f"$@dataset_dir + '/{datalist.name}'",
        "output_dir": "$@bundle_root + '/eval'",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "spatial_dims": plan["spatial_dims"],
        "class_names": list(plan["class_names"]),
        "label_classes": 1 + len(plan["class_names"]),
        **_region_knobs(plan),
        "out_channels": plan["network"]["args"]["out_channels"],
        "channels": dict(plan["channels"]),
        "input_keys": "$list(@channels)",
        "spacing": list(plan["spacing"]),
        "roi_size": list(plan["patch"]),
        "sw_batch_size": 4,
        "network_name": plan["network"]["name"],
        "network_args": {
            **plan["network"]["args"],
            "spatial_dims": "@spatial_dims",
            "in_channels": "$len(@channels)",
            "out_channels": "@out_channels",
        },
        "batch_size": training["batch_size"],
        "samples_per_volume": training["samples_per_volume"],
        "learning_rate": training["learning_rate"],
        "weight_decay": training["weight_decay"],
        "max_epochs": training["max_epochs"],
        "steps_per_epoch": training["steps_per_epoch"],
        "val_interval": training["val_interval"],
        "time_budget_s": training["time_budget_s"],
        "sampling_ratios": list(plan["sampling"]["ratios"]),
        "network_def": "$networks.build_network(@network_name, **@network_args)",
        "network": "$@network_def.to(@device)",
        "data_keys": "$@input_keys + @label_keys",
        "resample_modes": "$['bilinear'] * len(@input_keys) + ['nearest'] * len(@label_keys)",
        "normalise": {key: dict(step) for key, step in plan["normalise"].items()},
        "preprocessing_transforms": _preprocessing(plan),
        "stack": {"_target_": "ConcatItemsd", "keys": "@input_keys", "name": "image"},
        "augmentation": _augmentation(plan["augmentation"]),
        "random_transforms": _random_transforms(plan),
    }


_COMMON_HEADER = """\
# Planned by `clinseg plan` for {name}: grid, patch, network, normalisation, sampling, augmentation and
# schedule chosen from the dataset's fingerprint (fingerprint.json) within a compute budget; the reasons are in
# plan.json. train.yaml, evaluate.yaml and inference.yaml read only the named knobs below. Every command loads
# this file first:
#   python -m monai.bundle run --config_file "['{root}/configs/common.yaml', '{root}/configs/train.yaml']" \\
#       --bundle_root {root}
# or: clinseg train {root}     (any knob: --set name=value, e.g. --set max_epochs=10)
"""


def _outputs(plan: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """``pred_classes`` and the output channels' names of the metadata: labels or regions."""
    classes, regions = plan["class_names"], plan.get("regions")
    if regions:
        described = [f"{n} (labels {', '.join(map(str, v))})" for n, v in zip(regions["names"], regions["labels"])]
        pred_classes = (
            f"{len(regions['names'])} channels logits, one per region: {'; '.join(described)}; sigmoid > 0.5, "
            "the innermost region's label wins"
        )
        return pred_classes, {str(i): n for i, n in enumerate(regions["names"])}
    names = ["background", *classes]
    return f"{len(names)} channels logits; argmax gives the label classes", {str(i): n for i, n in enumerate(names)}


def _metadata(plan: Mapping[str, Any], name: str) -> dict[str, Any]:
    channels, classes = plan["channels"], plan["class_names"]
    pred_classes, channel_def = _outputs(plan)
    return {
        "schema": ZOO_SCHEMA,
        "name": name,
        "version": "0.1.0",
        "changelog": {"0.1.0": "planned by clinseg plan from the dataset fingerprint"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {"clinseg": importlib_metadata.version("clinseg")},
        "task": f"{', '.join(classes)} segmentation ({plan['spatial_dims']}D) from {', '.join(channels)}",
        "description": (
            f"Planned by clinseg plan: {plan['network']['name']} on {plan['spatial_dims']}D patches "
            f"{plan['patch']} at {plan['spacing']} mm; see configs/plan.json."
        ),
        "authors": "clinseg plan",
        "copyright": "the dataset's owners",
        "license": "see the training data's licence",
        "data_source": "the dataset clinseg plan measured: its training split (configs/fingerprint.json)",
        "eval_metrics": {},  # measured by training; clinseg export writes the run's validation metrics
        "references": REFERENCES,
        "input_modalities": dict(channels),
        "label_classes": "; ".join(f"{i} {n}" for i, n in enumerate(["background", *classes])),
        "pred_classes": pred_classes,
        "intended_use": "Research use only, not for clinical diagnosis or treatment decisions.",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "+".join(channels.values()),
                    "num_channels": len(channels),
                    "spatial_shape": list(plan["patch"]),
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": {str(i): k for i, k in enumerate(channels)},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": len(channel_def),
                    "spatial_shape": list(plan["patch"]),
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": channel_def,
                }
            },
        },
    }


def _readme(plan: Mapping[str, Any], fingerprint: Mapping[str, Any], name: str) -> str:
    t = plan["training"]
    lines = [
        f"# {name}: a bundle planned by `clinseg plan`",
        "",
        f"Dataset: `{fingerprint['datalist']}` ({fingerprint['cases']} training cases fingerprinted).",
        f"Channels: {plan['channels']}; classes: {plan['class_names']}.",
        "",
        "| setting | planned |",
        "|---|---|",
        f"| dimensionality | {plan['spatial_dims']}D |",
        f"| spacing (mm, RAS) | {plan['spacing']} |",
        f"| median shape after resampling | {plan['median_shape_resampled']} |",
        f"| patch | {plan['patch']} |",
        f"| network | {plan['network']['name']} {plan['network']['args']} |",
        f"| measured step | {plan['network']['step_s']} s on {plan['budget']['device']} |",
        f"| batch | {t['batch_size']} |",
        f"| epochs | {t['max_epochs']} of {t['steps_per_epoch']} steps (validation every {t['val_interval']}) |",
        f"| time budget | {t['time_budget_s']:.0f} s |",
        "",
        "Normalisation:",
        *[f"- `{k}`: {v}" for k, v in plan["reasons"]["normalise"].items()],
        "",
        f"Augmentation: {plan['reasons']['augmentation']}.",
        "",
        *_regions_readme(plan),
        "Train: `clinseg train BUNDLE`; evaluate: `clinseg evaluate BUNDLE`; predict: `clinseg predict BUNDLE ...`.",
        "Every value is a named knob in `configs/common.yaml`; the reasons are in `configs/plan.json`.",
    ]
    return "\n".join(lines) + "\n"


def _regions_readme(plan: Mapping[str, Any]) -> list[str]:
    regions = plan.get("regions")
    if not regions:
        return []
    rows = [
        f"| {n} | {', '.join(map(str, v))} | {c} |"
        for n, v, c in zip(regions["names"], regions["labels"], regions["class_order"])
    ]
    return [
        (
            "Region-based training (nnU-Net's): one sigmoid output per region, Dice + BCE per region, validation "
            "Dice per region (`val_dice_<region>`). Inference gives each voxel the label of the innermost region "
            "with probability > 0.5, so predictions, volumes and DICOM SEG keep label values; labels that no "
            "region tells apart come back as the one in the table. Sampling still centres patches on each label."
        ),
        "",
        "| region (outermost first) | labels | label at inference |",
        "|---|---|---|",
        *rows,
        "",
    ]


class _Dumper(yaml.SafeDumper):
    """Lists of scalars in flow style (``[40, 56, 40]``), everything else in block style."""


def _represent_list(dumper: yaml.SafeDumper, items: list) -> yaml.Node:
    flow = all(not isinstance(i, (dict, list)) for i in items)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", items, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def write_planned_bundle(
    out: str | Path, plan: Mapping[str, Any], fingerprint: Mapping[str, Any], datalist: str | Path
) -> Path:
    """Write the bundle folder ``out`` (created; existing planned files are replaced). Returns its path."""
    out = Path(out)
    configs = out / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(exist_ok=True)
    (out / "docs").mkdir(exist_ok=True)
    name = out.resolve().name
    header = _COMMON_HEADER.format(name=name, root=out)
    body = yaml.dump(common_config(plan, Path(datalist), name), Dumper=_Dumper, sort_keys=False, width=110)
    atomic_write_text(configs / "common.yaml", header + body)
    for template in ("train.yaml", "inference.yaml", "evaluate.yaml"):
        text = (TEMPLATE / template).read_text().replace("BUNDLE", str(out))
        if plan.get("regions"):
            text = region_template(template, text)
        if plan["spatial_dims"] == 2:
            for indent in ("  ", "    "):
                text = text.replace(
                    f"\n{indent}_target_: SlidingWindowInferer",
                    "\n" + indent + SLICE_INFERER.format(indent=indent),
                )
        atomic_write_text(configs / template, text)
    for file in ("logging.conf", "multi_gpu_train.yaml"):  # overlays and files used as they are
        shutil.copyfile(TEMPLATE / file, configs / file)
    atomic_write_json(configs / "metadata.json", _metadata(plan, name))
    atomic_write_json(configs / "plan.json", dict(plan))
    atomic_write_json(configs / "fingerprint.json", dict(fingerprint))
    atomic_write_text(out / "docs" / "README.md", _readme(plan, fingerprint, name))
    return out
