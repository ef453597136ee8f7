"""Validation overlays for a training run: prediction filled, ground truth outlined, titled with case id and Dice.

One PNG per case, ``<case>.png`` (the datalist's ``case`` id, never a path or patient name): the axial,
coronal and sagittal views through the ground truth's largest structure (``[axial]`` for 2D), each showing the
preprocessed image, the prediction as a translucent fill and the ground truth as a solid outline, in the same
colour per label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from monai.metrics import compute_dice
from torch import nn

from pipeline.outputs.preview import label_colour, orthogonal_slices
from pipeline.outputs.preview_window import percentile_window
from transforms.labels.regions import RegionsToLabels

__all__ = ["case_dice", "render_overlay", "render_validation_overlays"]

PANEL_INCHES = 3.5
ALPHA = 0.45


def case_dice(pred: torch.Tensor, label: torch.Tensor, n_labels: int) -> list[float]:
    """Dice of labels ``1..n_labels`` of one case (``(1, X, Y[, Z])`` integer maps); 1.0 where both are empty."""
    scores = compute_dice(
        pred[None].long(), label[None].long(), include_background=False, ignore_empty=False,
        num_classes=n_labels + 1,
    )  # fmt: skip
    return [float(v) for v in scores[0]]


def render_overlay(
    image: torch.Tensor,
    pred: torch.Tensor,
    label: torch.Tensor,
    labels: Mapping[int, str],
    path: str | Path,
    case: str,
) -> Path:
    """One case's PNG (see module docstring): ``image`` ``(1, X, Y[, Z])``, ``pred`` and ``label`` integer
    maps on the same grid; the title names ``case`` and the Dice of each label."""
    image_arr, pred_arr, label_arr = (t.detach().cpu()[0].numpy() for t in (image, pred, label))
    pred_arr, label_arr = pred_arr.astype(np.int32), label_arr.astype(np.int32)
    dice = case_dice(torch.as_tensor(pred_arr)[None], torch.as_tensor(label_arr)[None], max(labels, default=1))
    eye = np.eye(4 if image_arr.ndim == 3 else 3)
    views = orthogonal_slices(image_arr, label_arr, eye)  # centred on the ground truth
    predicted = orthogonal_slices(pred_arr.astype(np.float32), label_arr, eye)  # the same slices of pred
    level, width = percentile_window(image_arr)
    lo, hi = level - width / 2, level + width / 2
    fig = Figure(figsize=(PANEL_INCHES * len(views) + 1.8, PANEL_INCHES + 0.6), dpi=80, facecolor="black")
    FigureCanvasAgg(fig)
    scores = ", ".join(f"{labels.get(i + 1, f'label {i + 1}')} {d:.3f}" for i, d in enumerate(dice))
    fig.suptitle(f"{case} · Dice {scores}", color="white", fontsize=11)
    for column, (view, pred_view) in enumerate(zip(views, predicted, strict=True)):
        ax = fig.add_subplot(1, len(views), column + 1)
        ax.imshow(view.image, cmap="gray", vmin=lo, vmax=hi, aspect=view.aspect, interpolation="nearest")
        fill = np.zeros((*view.mask.shape, 4), np.float32)
        pred_slice = np.rint(pred_view.image).astype(np.int32)
        for lid in labels:
            colour = label_colour(lid, labels)
            fill[pred_slice == lid] = (*colour, ALPHA)
            if (view.mask == lid).any():
                ax.contour(view.mask == lid, levels=[0.5], colors=[colour], linewidths=1.2)
        ax.imshow(fill, aspect=view.aspect, interpolation="nearest")
        ax.set_title(f"{view.name} {view.index + 1}/{view.size}", color="white", fontsize=9)
        ax.set_axis_off()
    handles = [Patch(color=label_colour(lid, labels), label=name) for lid, name in labels.items()]
    handles += [Patch(color="grey", alpha=ALPHA, label="fill: prediction"),
                Line2D([], [], color="grey", label="line: ground truth")]  # fmt: skip
    fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False, labelcolor="white")
    fig.subplots_adjust(left=0.01, right=1 - 1.8 / fig.get_figwidth(), top=0.85, bottom=0.02, wspace=0.05)
    path = Path(path)
    fig.savefig(path, format="png", facecolor="black")
    return path


def _case_names(batch: Mapping[str, Any], dataset: Any, count: int, start: int) -> list[str]:
    """The datalist ``case`` ids of a batch: the batch's, else the dataset's entries in loader order
    (validation loaders do not shuffle), else ``validation_<n>``; a bare id, never a path."""
    names = batch.get("case")
    if not (isinstance(names, (list, tuple)) and len(names) == count):
        entries = getattr(dataset, "data", None)
        names = [
            e.get("case") if isinstance(e, Mapping) else None
            for e in (entries[start : start + count] if isinstance(entries, Sequence) else [])
        ]
    return [
        Path(str(n)).name if n else f"validation_{start + i:03d}"
        for i, n in enumerate(list(names) + [None] * (count - len(names)))
    ]


@torch.no_grad()
def render_validation_overlays(
    network: nn.Module,
    validator: Engine,
    out_dir: str | Path,
    class_names: Sequence[str],
    max_cases: int = 3,
    regions: Sequence[Sequence[int]] | None = None,
) -> list[Path]:
    """Overlay PNGs (:func:`render_overlay`) of ``network``'s prediction (argmax, or for region outputs the labels of
    :class:`transforms.labels.regions.RegionsToLabels`) against the ground truth of the first validation cases.

    Uses the validator's (cached, preprocessed) data loader and its inferer, e.g. a sliding window; the image
    shown is the preprocessed one on its own grid; of a multi-channel input, its first channel.

    Args:
        network: the best network, on the validator's device, eval mode.
        validator: MONAI ``SupervisedEvaluator`` (needs ``data_loader``, ``inferer``, ``device``); batches hold
            ``image`` and ``label`` (a label map, or one channel per region for region bundles).
        out_dir: folder for ``<case>.png``.
        class_names: names of labels ``1..N`` for the legend and the Dice.
        max_cases: how many cases to render.
        regions: label values per region, outermost first, when the network has one sigmoid output per region.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = {i + 1: str(name) for i, name in enumerate(class_names)}
    device = getattr(validator, "device", torch.device("cpu"))
    to_labels = RegionsToLabels(regions) if regions is not None else None
    dataset = getattr(validator.data_loader, "dataset", None)
    written: list[Path] = []
    seen = 0
    for batch in validator.data_loader:
        images = batch["image"].to(device)
        logits = validator.inferer(images, network)
        if to_labels is None:
            preds = logits.argmax(dim=1, keepdim=True)
        else:
            preds = torch.stack([to_labels(torch.sigmoid(item.float())) for item in logits])
        truths = batch["label"]
        if to_labels is not None and truths.shape[1] > 1:
            truths = torch.stack([to_labels(item.float()) for item in truths])
        names = _case_names(batch, dataset, len(images), seen)
        seen += len(images)
        for name, image, pred, truth in zip(names, images, preds, truths, strict=True):
            written.append(render_overlay(image[:1], pred, truth[:1], labels, out_dir / f"{name}.png", name))
            if len(written) >= max_cases:
                return written
    return written
