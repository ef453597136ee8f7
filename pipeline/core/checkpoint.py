"""Checkpoints as data: ``{"model": state_dict, "network": {"name", "kwargs"}, ...}``, loaded with weights_only.

The format only: the ignite/MONAI handlers that save and resume training live in
:mod:`pipeline.training.checkpoint_handlers`, so inference reads checkpoints without importing ignite.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import networks

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded or does not describe its network."""


class NetworkSpec:
    """The registry name and constructor arguments of a network, saved beside its weights.

    Behaves like a stateful object for ignite's ``Checkpoint`` (``state_dict``/``load_state_dict``), so
    ``CheckpointSaver(save_dict={"model": net, "network": spec})`` stores plain data that
    ``torch.load(weights_only=True)`` can read back and ``build_network`` can rebuild.
    """

    def __init__(self, name: str, kwargs: dict[str, Any] | None = None) -> None:
        networks.registry.get_network_class(name)  # fail early on unknown names
        self.name = name
        self.kwargs = _plain(dict(kwargs or {}))

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": self.kwargs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name:
            raise CheckpointError(f"checkpoint holds network {state.get('name')!r}, the config builds {self.name!r}")
        self.kwargs = state.get("kwargs", {})

    def build(self) -> nn.Module:
        return networks.build_network(self.name, **self.kwargs)


def _plain(value: Any) -> Any:
    """Config values (ConfigParser lists, tuples, numpy scalars) as JSON-like builtins, safe for weights_only."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True``; errors name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e})") from e
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise CheckpointError(f"checkpoint {path} has no 'model' state dict")
    return checkpoint


def network_from_checkpoint(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    default: Callable[[], nn.Module] | None = None,
) -> nn.Module:
    """Rebuild the network a checkpoint describes and load its weights (eval mode); the file is read once.

    Args:
        path: checkpoint file.
        map_location: device for the weights and the returned network.
        default: builds the network for checkpoints that do not record one (e.g. a bundle's ``network_def``).
    """
    checkpoint = load_checkpoint(path, map_location)
    if "network" in checkpoint:
        spec = checkpoint["network"]
        network, described = NetworkSpec(spec["name"], spec.get("kwargs")).build(), f"network {spec['name']!r}"
    elif default is not None:
        network, described = default(), "the bundle's network_def"
    else:
        raise CheckpointError(f"checkpoint {path} does not record its network (no 'network' entry)")
    try:
        network.load_state_dict(checkpoint["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit {described}: {e}") from e
    return network.to(map_location).eval()


def epoch_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """``checkpoint_epoch=N.pt`` files of a run folder, newest epoch first."""
    found = []
    for path in Path(ckpt_dir).glob("checkpoint_epoch=*.pt"):
        try:
            found.append((int(path.stem.split("=")[1]), path))
        except ValueError:
            continue
    return [p for _, p in sorted(found, reverse=True)]
