"""Sliding-window forward that evaluates patches holding a single value (air after the CT window, padding) once.

A patch whose voxels all hold the same value per channel gives the same network output wherever it lies, so
the output is computed once per distinct value and reused: exact (the network is deterministic in eval mode),
and for CT the air around the body costs nothing. MONAI's ``sliding_window_inference`` evaluates every patch.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch

__all__ = ["UniformPatchCache"]


class UniformPatchCache:
    """Wraps a network forward ``(B, C, *roi) -> (B, K, *roi)`` for ``SlidingWindowInferer``.

    Args:
        forward: the network (or its autocast wrapper), in eval mode.
        max_entries: distinct (value, patch shape) outputs kept; the oldest is dropped beyond it.
    """

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], max_entries: int = 8) -> None:
        self.forward = forward
        self.max_entries = max_entries
        self._outputs: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.evaluated = 0
        """Patches the network has run on (uniform ones once per distinct value)."""

    def _uniform_output(self, patch: torch.Tensor) -> torch.Tensor:
        """Network output ``(K, *roi)`` for a uniform ``patch`` ``(C, *roi)``, from the cache when seen before."""
        key = (tuple(patch.flatten(1)[:, 0].tolist()), tuple(patch.shape), patch.dtype, patch.device)
        if key not in self._outputs:
            self._outputs[key] = self.forward(patch[None])[0]
            self.evaluated += 1
            if len(self._outputs) > self.max_entries:
                self._outputs.popitem(last=False)
        self._outputs.move_to_end(key)
        return self._outputs[key]

    def __call__(self, patches: torch.Tensor) -> torch.Tensor:
        flat = patches.flatten(2)
        uniform = (flat.amin(dim=2) == flat.amax(dim=2)).all(dim=1)
        if not bool(uniform.any()):
            self.evaluated += patches.shape[0]
            return self.forward(patches)
        varied = ~uniform
        computed = iter(self.forward(patches[varied]) if bool(varied.any()) else ())
        self.evaluated += int(varied.sum())
        return torch.stack(
            [self._uniform_output(p) if same else next(computed) for p, same in zip(patches, uniform.tolist())]
        )
