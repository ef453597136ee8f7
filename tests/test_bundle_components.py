"""Every shipped bundle and a planned one resolve through MONAI's parser to the components recorded in
``tests/data/bundle_components.json`` (written from the configs before they were composed from a shared base)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.bundle_components import RECORD, SHIPPED, components, planned_bundle

torch.set_num_threads(1)
RECORDED = json.loads(RECORD.read_text())
# the fusion bundle's extra handler is appended to the shared list (``+train#handlers``), no longer listed first:
# it acts on STARTED and skips a resumed run, as before, whatever its place
APPENDED = "pipeline.training.fusion.PretrainedWeightsLoader"


def _recorded(name: str) -> dict:
    record = json.loads(json.dumps(RECORDED[name]))
    handlers = record["train"]["train#handlers"]
    handlers.sort(key=lambda h: h.get("_target_") == APPENDED)  # stable: the others keep their order
    return record


@pytest.mark.parametrize("name", [b.name for b in SHIPPED])
def test_shipped_bundle_resolves_to_the_recorded_components(name):
    got = components(next(b for b in SHIPPED if b.name == name))
    for part, value in _recorded(name).items():
        assert got[part] == value, f"{name}: {part}"


def test_planned_bundle_resolves_to_the_recorded_components(tmp_path):
    got = components(planned_bundle(tmp_path))
    for part, value in _recorded("planned").items():
        assert got[part] == value, f"planned: {part}"
