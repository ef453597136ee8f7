"""An nnU-Net checkpoint is read only when it holds data: tensors, numbers, strings and containers.

nnU-Net's own loader (``nnUNetPredictor.initialize_from_trained_model_folder``) unpickles each
``fold_X/checkpoint_*.pth`` with ``torch.load(weights_only=False)``, which runs whatever code a pickle names. clinseg
first reads each file with ``weights_only=True``, allowing only the numpy scalars nnU-Net's trainer writes in its
``logging`` and ``_best_ema`` entries, and refuses a file that needs anything more before nnU-Net opens it.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

__all__ = ["check_checkpoints_hold_only_data"]

_NUMPY_SCALARS = (np.float64, np.float32, np.float16, np.int64, np.int32, np.bool_)


def _numpy_scalar_globals() -> list:
    """What ``pickle`` names to rebuild a numpy scalar: ``_core.multiarray.scalar``, ``dtype`` and dtype classes."""
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray.scalar, np.dtype, *{type(np.dtype(t)) for t in _NUMPY_SCALARS}]


def check_checkpoints_hold_only_data(paths: Iterable[Path]) -> None:
    """Read each checkpoint with ``torch.load(weights_only=True)`` (numpy scalars allowed).

    Raises:
        ValueError: a checkpoint names other objects (classes, functions); the file and the refused name given.
    """
    with torch.serialization.safe_globals(_numpy_scalar_globals()):
        for path in paths:
            try:
                torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as error:
                reason = str(error).strip().splitlines()
                refused = next((line for line in reason if "GLOBAL" in line or "Unsupported" in line), reason[0])
                raise ValueError(
                    f"nnU-Net checkpoint {path}: holds more than tensors and plain data ({refused.strip()}); "
                    "clinseg reads only checkpoints torch.load(weights_only=True) accepts, since unpickling "
                    "anything else can run code"
                ) from None
