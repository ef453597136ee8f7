"""Validation overlays: prediction over ground truth, case id and Dice in the title, named by the datalist's id."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.tracking.overlays import case_dice, render_validation_overlays

torch.set_num_threads(1)


def _label(shape: tuple[int, ...]) -> torch.Tensor:
    label = torch.zeros((1, *shape), dtype=torch.long)
    label[(0, *[slice(2, 9)] * len(shape))] = 1
    label[(0, *[slice(11, 14)] * len(shape))] = 2
    return label


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda p: p, [1.0, 1.0]),
        (lambda p: torch.where(p == 2, 0, p), [1.0, 0.0]),  # lesion missed
        (lambda p: torch.zeros_like(p), [0.0, 0.0]),
    ],
)
def test_case_dice_per_label(change, expected):
    label = _label((17, 18, 19))
    assert case_dice(change(label.clone()), label, 2) == pytest.approx(expected)


class _Net(torch.nn.Module):
    """Logits that predict label 1 where the image is above 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([0.5 - x, x - 0.5, torch.full_like(x, -1.0)], dim=1)


def _validator(shape: tuple[int, ...], with_case: bool) -> SimpleNamespace:
    label = torch.stack([_label(shape), _label(shape)])
    image = (label == 1).float()
    batch = {"image": image, "label": label, **({"case": ["/data/case_004", "case_009"]} if with_case else {})}
    dataset = SimpleNamespace(data=[{"case": "case_021"}, {"case": "case_022"}])
    loader = type("Loader", (), {"dataset": dataset, "__iter__": lambda self: iter([batch])})()
    return SimpleNamespace(data_loader=loader, inferer=lambda x, net: net(x), device=torch.device("cpu"))


@pytest.mark.parametrize("shape", [(21, 22, 23), (33, 34)])
@pytest.mark.parametrize(("with_case", "names"), [(True, ["case_004", "case_009"]), (False, ["case_021", "case_022"])])
def test_overlays_are_named_by_case_and_rendered(tmp_path, shape, with_case, names):
    written = render_validation_overlays(_Net(), _validator(shape, with_case), tmp_path, ["organ", "lesion"], 5)
    assert [p.stem for p in written] == names  # the datalist's id, never a path, never validation_000
    pixels = np.asarray(Image.open(written[0]).convert("RGB"))
    assert pixels.shape[0] < 400 and pixels.shape[1] < 1100
    assert (pixels.std(axis=2) > 40).any()  # coloured fill and outline drawn


def test_max_cases_and_dice_title(tmp_path, monkeypatch):
    titles = []
    from matplotlib.figure import Figure

    real = Figure.suptitle
    monkeypatch.setattr(Figure, "suptitle", lambda self, t, **kw: titles.append(t) or real(self, t, **kw))
    written = render_validation_overlays(_Net(), _validator((17, 18, 19), True), tmp_path, ["organ", "lesion"], 1)
    assert len(written) == 1
    assert titles == ["case_004 · Dice organ 1.000, lesion 0.000"]  # the net never predicts the lesion
