"""The planned bundle's workflow configs for a region plan: the label template with its outputs turned into
regions (nnU-Net's region-based training).

The template's softmax outputs over labels become one sigmoid output per region: Dice + BCE per region with
no background channel, validation on region masks (prediction > 0.5, reference labels turned into regions by
``transforms.labels.regions.LabelToRegionsd``) scored per region, and inference turning the region probabilities
back into a label map (``RestoreToInputd(regions=...)``), so ``clinseg predict``'s outputs keep label values.
The region knobs (``regions``, ``region_names``, ``region_labels``, ``output_activation``) are in common.yaml.
"""

from __future__ import annotations

__all__ = ["REGION_EDITS", "region_template"]

_ACTIVATION_SOFTMAX = """\
      - _target_: Activationsd
        keys: pred
        softmax: true
"""
_ACTIVATION_SIGMOID = """\
      - _target_: Activationsd
        keys: pred
        sigmoid: true                 # one probability per region (region plan)
"""

_LOSS_LABELS = """\
  mode: multiclass                    # softmax + CE on one-hot labels
  include_background: false
"""
_LOSS_REGIONS = """\
  mode: binary                        # region plan: sigmoid + BCE per region mask
  include_background: true            # no background channel: every channel is a region
"""
_DISCRETE_LABELS = """\
      - _target_: AsDiscreted
        keys: [pred, label]
        argmax: [true, false]
        to_onehot: '@out_channels'
"""
_DISCRETE_REGIONS = """\
      - _target_: AsDiscreted            # inside a region: probability > 0.5
        keys: pred
        threshold: 0.5
      - _target_: transforms.labels.regions.LabelToRegionsd   # reference labels -> region masks
        keys: label
        regions: '@region_labels'
"""
_RESTORE_REGIONS = """\
      image_key: $@input_keys[0]
      regions: '@region_labels'       # region probabilities -> labels: innermost region > 0.5
"""

REGION_EDITS: dict[str, list[tuple[str, str]]] = {
    "train.yaml": [
        (_LOSS_LABELS, _LOSS_REGIONS),
        (_ACTIVATION_SOFTMAX + _DISCRETE_LABELS, _ACTIVATION_SIGMOID + _DISCRETE_REGIONS),
        (
            "      _target_: MeanDice\n      include_background: false\n",
            "      _target_: MeanDice\n      include_background: true   # every channel is a region\n",
        ),
        (
            "per_class_dice(@class_names, prefix='val_dice_')",
            "per_class_dice(@region_names, prefix='val_dice_', include_background=True)",
        ),
        (
            "      class_names: '@class_names'\n",
            "      class_names: '@class_names'\n      regions: '@region_labels'\n",
        ),
    ],
    "evaluate.yaml": [
        ("['val_dice_' + n for n in @class_names]", "['val_dice_' + n for n in @region_names]"),
    ],
    "inference.yaml": [
        ("      image_key: $@input_keys[0]\n", _RESTORE_REGIONS),
        (_ACTIVATION_SOFTMAX, _ACTIVATION_SIGMOID),
    ],
}
"""Per template file: (label text, region text) pairs, each found exactly once in the template."""


def region_template(name: str, text: str) -> str:
    """``text`` of the template ``name`` with :data:`REGION_EDITS` applied.

    Raises:
        ValueError: when an edit's text is not in the template exactly once (the template changed).
    """
    for old, new in REGION_EDITS.get(name, []):
        count = text.count(old)
        if count != 1:
            raise ValueError(
                f"planning template {name}: expected the text {old.strip()[:60]!r}... once, found it {count} "
                "times; update pipeline.planning.region_bundle.REGION_EDITS with the template"
            )
        text = text.replace(old, new)
    return text
