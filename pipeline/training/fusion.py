"""Pieces of the two-stage fusion -> segmentation schedule that a bundle wires: a fusion metric, a weight loader.

Stage 1 (``fusion_pretrain``) trains the fusion network alone and keeps the checkpoint with the best
:class:`FusionSSIMMetric` on validation; stage 2 (joint training) starts from it with
:class:`PretrainedWeightsLoader`. Both are bundle ``_target_`` s (``bundles/ctmr_fusion_seg3d``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.metrics import SSIMMetric
from torch import nn

from pipeline.core.checkpoint import CheckpointError, load_checkpoint
from pipeline.training.distributed import unwrap
from pipeline.training.losses import rescale_unit

__all__ = ["FusionSSIMMetric", "PretrainedWeightsLoader"]

logger = logging.getLogger(__name__)


class FusionSSIMMetric(SSIMMetric):
    """Mean SSIM of a fused image to every source modality (higher is better, 1 = identical to all).

    MONAI's ``SSIMMetric`` compares images of equal channels; here ``y_pred`` is the fused image
    ``(B, 1, *spatial)`` and ``y`` the stacked sources ``(B, N, *spatial)``, and the per-sample value is
    ``mean_k SSIM(y_pred, y[:, k])``. Images are expected in ``[0, data_range]``; ``rescale_sources=True`` maps
    each source onto it by its own min and max first (z-scored MR). Other arguments as ``SSIMMetric``.

    Example (bundle YAML, key metric of a validator whose network is the fusion net)::

        val_fusion_ssim:
          _target_: IgniteMetricHandler
          metric_fn: {_target_: pipeline.training.fusion.FusionSSIMMetric, spatial_dims: 3, win_size: 7}
          output_transform: $monai.handlers.from_engine(['pred', 'image'])
    """

    def __init__(self, *args: Any, rescale_sources: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rescale_sources = rescale_sources

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Per-sample mean SSIM ``(B, 1)``."""
        if not isinstance(y_pred, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise TypeError("FusionSSIMMetric: y_pred and y must be torch tensors.")
        if y_pred.dim() != y.dim() or y_pred.shape[1] != 1 or y_pred.shape[0] != y.shape[0]:
            raise ValueError(
                "FusionSSIMMetric: y_pred must be the fused image (B, 1, *spatial) and y the sources "
                f"(B, N, *spatial), got {tuple(y_pred.shape)} and {tuple(y.shape)}."
            )
        if y_pred.shape[2:] != y.shape[2:]:
            raise ValueError(
                f"FusionSSIMMetric: spatial shapes differ, {tuple(y_pred.shape[2:])} vs {tuple(y.shape[2:])}."
            )
        y_pred = torch.as_tensor(y_pred).float()
        y = torch.as_tensor(y).float()
        if self.rescale_sources:
            y = rescale_unit(y) * self.data_range
        per_source = [self._compute_metric(y_pred, y[:, k : k + 1]) for k in range(y.shape[1])]
        return torch.stack(per_source).mean(dim=0)


class PretrainedWeightsLoader:
    """Loads an earlier stage's weights into a network when training starts (ignite handler).

    Unlike MONAI's ``CheckpointLoader`` it can be switched off by data: ``load_path=None`` (train from
    scratch) or ``resume=True`` (a resumed run continues from its own checkpoint) load nothing. The
    checkpoint is read with ``weights_only=True`` and must hold a ``model`` state dict that fits exactly.

    Args:
        load_path: checkpoint written by the earlier stage (e.g. its best ``model.pt``), or ``None``.
        network: the module to load into (or its DDP wrapper: the wrapped module is loaded).
        resume: whether this run resumes; then nothing is loaded.
        map_location: device for the loaded tensors.
    """

    def __init__(
        self,
        load_path: str | Path | None,
        network: nn.Module,
        resume: bool = False,
        map_location: str | torch.device = "cpu",
    ) -> None:
        if load_path is not None and not Path(load_path).is_file():
            raise CheckpointError(f"PretrainedWeightsLoader: load_path {load_path} is not a file")
        self.load_path = None if load_path is None else Path(load_path)
        self.network = network
        self.resume = bool(resume)
        self.map_location = map_location

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if self.load_path is None or self.resume:
            return
        state = load_checkpoint(self.load_path, map_location=self.map_location)["model"]
        try:
            unwrap(self.network).load_state_dict(state)
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint {self.load_path} does not fit the network: {e}") from e
        logger.info("loaded pretrained weights from %s", self.load_path)
