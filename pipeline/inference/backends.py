"""Runners of one network on a batch of patches ``(B, C, H, W[, D])`` -> float32 logits ``(B, K, H, W[, D])``:
torch (contiguous or channels-last, optionally autocast), ONNX Runtime and OpenVINO (both optional extras,
imported only when asked for, running the exported ONNX file of :mod:`pipeline.inference.onnx_export`)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["BACKENDS", "LAYOUTS", "OnnxRuntimeRunner", "OpenVinoRunner", "Runner", "TorchRunner", "channels_last_format"]

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
"""``--backend`` choices: ``auto`` measures the available ones on the actual patch (CPU) or takes torch (CUDA)."""

LAYOUTS = ("auto", "contiguous", "channels_last")
"""``--layout`` choices of the torch backend: ``auto`` measures both on CPU (contiguous on CUDA)."""

Runner = Callable[[torch.Tensor], torch.Tensor]


def channels_last_format(net: nn.Module) -> torch.memory_format | None:
    """``channels_last_3d`` for a 3D network, ``channels_last`` for a 2D one (by its weights' rank), else None."""
    rank = max((p.ndim for p in net.parameters()), default=0)
    return {4: torch.channels_last, 5: torch.channels_last_3d}.get(rank)


class TorchRunner:
    """``net`` in torch; ``channels_last`` converts a copy of it (the original keeps its layout), ``amp``
    autocasts (bfloat16 on CPU, float16 on CUDA) with float32 logits out."""

    def __init__(self, net: nn.Module, *, channels_last: bool = False, amp: bool = False) -> None:
        self.layout = channels_last_format(net) if channels_last else None
        if channels_last and self.layout is None:
            raise ValueError(f"channels_last needs a 2D or 3D convolutional network, got {type(net).__name__}")
        self.net = copy.deepcopy(net).to(memory_format=self.layout) if self.layout is not None else net
        self.amp = amp
        self.device_type = next(net.parameters(), torch.empty(0)).device.type

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout is not None:
            x = x.contiguous(memory_format=self.layout)
        dtype = torch.bfloat16 if self.device_type == "cpu" else torch.float16
        with torch.autocast(self.device_type, dtype=dtype, enabled=self.amp):
            out = self.net(x)
        return out.float().contiguous()


class OnnxRuntimeRunner:
    """An ONNX file in ONNX Runtime on CPU with ``threads`` intra-op threads (torch's count by default)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        # idle threads sleep instead of spinning: spinning would take the cores from torch and the rest of the run
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        patches = np.ascontiguousarray(torch.as_tensor(x).detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self.input_name: patches})[0])


class OpenVinoRunner:
    """An ONNX file compiled by OpenVINO for the CPU with ``threads`` inference threads (torch's by default)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import openvino

        core = openvino.Core()
        config = {"INFERENCE_NUM_THREADS": threads or torch.get_num_threads(), "INFERENCE_PRECISION_HINT": "f32"}
        self.model = core.compile_model(core.read_model(str(path)), "CPU", config)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        patches = np.ascontiguousarray(torch.as_tensor(x).detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(np.array(self.model(patches)[0]))
