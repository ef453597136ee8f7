"""``--backend auto``'s measured choice, recorded once per network, patch, CPU and runtime versions.

Measuring builds every candidate (ONNX Runtime, OpenVINO, two torch layouts): each run that measures again loads
both runtimes' libraries and pays their memory (measured: +160 MB on a 512x512x300 CT, ``benchmarks/RESULTS.md``)
and may choose differently under another moment's load. So the first run records its choice in
``$CLINSEG_CACHE_DIR/exports/backend_choices.json`` (beside the exports) and later runs build only the recorded
backend; deleting the file (or a new checkpoint, patch, thread count, CPU or runtime version) measures again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from pipeline.core.atomic import atomic_write_json
from pipeline.inference.onnx_export import export_cache_dir, export_key

__all__ = ["choice_key", "record_choice", "recorded_choice"]

logger = logging.getLogger(__name__)

_FILE = "backend_choices.json"


def choice_key(net: nn.Module, patch_shape: Sequence[int], *, amp: bool, layout: str) -> str:
    """Digest of what the fastest backend depends on: the network's weights and patch (:func:`export_key`), the
    torch thread count, AMP, the torch layout asked for, the CPU model and the runtimes' versions."""
    versions = []
    for package in ("onnxruntime", "openvino"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package} absent")
    facts = [export_key(net, patch_shape), f"threads {torch.get_num_threads()}", f"amp {amp}", f"layout {layout}",
             _cpu_model(), *versions]  # fmt: skip
    return hashlib.sha256("|".join(facts).encode()).hexdigest()[:32]


def recorded_choice(key: str, folder: Path | None = None) -> dict | None:
    """``{"backend": NAME, "timings_ms": {...}}`` recorded under ``key``, or ``None`` (none, or an unreadable file)."""
    path = (folder or export_cache_dir()) / _FILE
    try:
        entry = json.loads(path.read_text()).get(key)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError) as error:
        logger.warning("%s unreadable (%s); measuring the backends again", path, error)
        return None
    return entry if isinstance(entry, dict) and isinstance(entry.get("backend"), str) else None


def record_choice(key: str, backend: str, timings_ms: dict[str, float], folder: Path | None = None) -> None:
    """Record ``backend`` (and the timings that chose it) under ``key``, atomically; a failure only logs."""
    folder = folder or export_cache_dir()
    path = folder / _FILE
    try:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            entries = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            entries = {}
        entries = entries if isinstance(entries, dict) else {}
        entries[key] = {"backend": backend, "timings_ms": timings_ms}
        atomic_write_json(path, entries)
    except OSError as error:
        logger.warning("could not record the backend choice in %s (%s)", path, error)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
