"""Checkpoints as data: ``{"model": state_dict, "network": {"name", "kwargs"}, ...}``, loaded with weights_only."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from monai.handlers import CheckpointSaver
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


class TrainingCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` that also stores the engine it is attached to (epoch, iteration).

    A bundle cannot list the trainer in its own handler's ``save_dict`` (a circular reference), so the
    engine is added when the handler is attached; ignite's ``Checkpoint`` keeps a reference to the dict.
    """

    def attach(self, engine: Engine) -> None:
        self.save_dict.setdefault("trainer", engine)
        super().attach(engine)


class EngineBestMetric:
    """An evaluator's best key-metric value and epoch as checkpointable state."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def state_dict(self) -> dict[str, Any]:
        return {"best_metric": float(self.engine.state.best_metric), "best_metric_epoch": int(self.engine.state.best_metric_epoch)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.engine.state.best_metric = state["best_metric"]
        self.engine.state.best_metric_epoch = state["best_metric_epoch"]


class BestCheckpointSaver(CheckpointSaver):
    """``CheckpointSaver`` of the best model that also stores the validator's best metric and its own ranking,
    so that after a resume a worse model never replaces the best one."""

    def __init__(self, save_dir: str, save_dict: dict, **kwargs: Any) -> None:
        kwargs.setdefault("save_key_metric", True)
        kwargs.setdefault("key_metric_save_state", True)
        super().__init__(save_dir, save_dict, **kwargs)

    def attach(self, engine: Engine) -> None:
        self.save_dict.setdefault("validation", EngineBestMetric(engine))
        super().attach(engine)


def epoch_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """``checkpoint_epoch=N.pt`` files of a run folder, newest epoch first."""
    found = []
    for path in Path(ckpt_dir).glob("checkpoint_epoch=*.pt"):
        try:
            found.append((int(path.stem.split("=")[1]), path))
        except ValueError:
            continue
    return [p for _, p in sorted(found, reverse=True)]


class ResumeHandler:
    """Restores a training run from the newest readable ``checkpoint_epoch=N.pt`` of ``ckpt_dir`` when started.

    MONAI's ``CheckpointSaver`` does not write atomically, so a run killed while saving can leave a truncated
    newest file: older checkpoints are tried next (keep ``n_saved >= 2``). Attach it before other handlers.

    Args:
        ckpt_dir: the run's checkpoint folder.
        load_dict: objects to restore, e.g. ``{"model": net, "optimizer": opt, "lr_scheduler": sched}``;
            the trainer itself is added when attached.
        enabled: resume only when True (bundle knob ``resume``).
        best_saver: the validator's :class:`BestCheckpointSaver`, whose ranking is restored from ``model.pt``.
        validator: the evaluator whose best metric and epoch are restored from ``model.pt``.
    """

    def __init__(
        self,
        ckpt_dir: str | Path,
        load_dict: dict[str, Any],
        enabled: bool = True,
        best_saver: CheckpointSaver | None = None,
        validator: Engine | None = None,
        best_filename: str = "model.pt",
    ) -> None:
        self.ckpt_dir = Path(ckpt_dir)
        self.load_dict = dict(load_dict)
        self.enabled = enabled
        self.best_saver = best_saver
        self.validator = validator
        self.best_filename = best_filename

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if not self.enabled:
            return
        for path in epoch_checkpoints(self.ckpt_dir):
            try:
                checkpoint = load_checkpoint(path, map_location=getattr(engine.state, "device", None) or "cpu")
            except CheckpointError as e:
                logger.warning("skipping unreadable checkpoint: %s", e)
                continue
            max_epochs = engine.state.max_epochs
            Checkpoint.load_objects(to_load={**self.load_dict, "trainer": engine}, checkpoint=checkpoint)
            engine.state.max_epochs = max_epochs  # the configured length wins: a resumed run may be extended
            self._restore_best()
            logger.info("resumed from %s at epoch %d (iteration %d)", path, engine.state.epoch, engine.state.iteration)
            return
        logger.info("resume asked but no checkpoint in %s: starting from scratch", self.ckpt_dir)

    def _restore_best(self) -> None:
        best_path = self.ckpt_dir / self.best_filename
        if not best_path.is_file():
            return
        best = load_checkpoint(best_path)
        if self.best_saver is not None and "checkpointer" in best:
            self.best_saver.load_state_dict(best["checkpointer"])
        if self.validator is not None and "validation" in best:
            EngineBestMetric(self.validator).load_state_dict(best["validation"])
