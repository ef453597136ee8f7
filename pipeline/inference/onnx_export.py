"""A network exported once to ONNX per weights, patch shape and exporter versions, cached on disk.

ONNX Runtime and OpenVINO (which reads ONNX itself) both run the same file. The cache folder is
``$CLINSEG_CACHE_DIR/exports`` (default ``~/.cache/clinseg/exports``): beside a checkpoint may be read-only (a
``models:/`` download, a shared model folder). Files are written atomically, so concurrent runs never read a
half-written export.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from transforms.io.atomic import atomic_write

__all__ = ["export_cache_dir", "export_key", "exported_onnx"]


def export_cache_dir() -> Path:
    """``$CLINSEG_CACHE_DIR/exports``, else ``~/.cache/clinseg/exports``."""
    root = os.environ.get("CLINSEG_CACHE_DIR") or Path.home() / ".cache" / "clinseg"
    return Path(root) / "exports"


def export_key(net: nn.Module, patch_shape: Sequence[int]) -> str:
    """Hex digest of the weights (names, dtypes, shapes, values), ``patch_shape`` ``(B, C, H, W[, D])``, the
    network's class and the torch and onnx versions: a new export whenever any of them changes."""
    import onnx

    digest = hashlib.sha256()
    header = f"{type(net).__qualname__}|{list(patch_shape)}|torch {torch.__version__}|onnx {onnx.__version__}"
    digest.update(header.encode())
    for name, value in net.state_dict().items():
        value = value.detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{list(value.shape)}".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()[:32]


def exported_onnx(net: nn.Module, patch_shape: Sequence[int], folder: Path | None = None) -> Path:
    """The ONNX file of ``net`` (float32, on CPU) for patches ``patch_shape`` ``(B, C, H, W[, D])``, batch size
    dynamic (the last window batch and the uniform-patch cache send fewer); exported only if not cached."""
    folder = Path(folder) if folder is not None else export_cache_dir()
    path = folder / f"{export_key(net, patch_shape)}.onnx"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    # batch >= 2 in the example: torch.export specializes sizes 0 and 1
    example = torch.zeros((max(2, int(patch_shape[0])), *map(int, patch_shape[1:])))
    with atomic_write(path) as tmp, _quiet("onnxscript", "onnx_ir"):
        torch.onnx.export(
            net, (example,), str(tmp), dynamo=True, input_names=["patches"], output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim.DYNAMIC},), external_data=False, verbose=False,
        )  # fmt: skip
    return path


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """The exporter's optimizer logs every rewrite at INFO: only its warnings while exporting."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
