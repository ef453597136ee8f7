"""Which runner the Predictor's networks use: the requested backend and torch layout, or, for ``auto``, the
fastest on one batch of the actual patch shape, measured once and recorded (:mod:`.backend_record`); an
unavailable or failing backend falls back to torch with one warning saying why."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from pipeline.inference.backends import (
    BACKENDS,
    LAYOUTS,
    OnnxRuntimeRunner,
    OpenVinoRunner,
    Runner,
    TorchRunner,
    channels_last_format,
)
from pipeline.inference.backend_record import choice_key, record_choice, recorded_choice
from pipeline.inference.onnx_export import exported_onnx

__all__ = ["BackendChoice", "choose_backend", "fastest", "patch_shape", "resolve_amp"]

logger = logging.getLogger(__name__)

_RUNTIMES: dict[str, Callable[..., Runner]] = {"onnxruntime": OnnxRuntimeRunner, "openvino": OpenVinoRunner}
_EXTRA = {"onnxruntime": "onnx", "openvino": "openvino"}


@dataclass
class BackendChoice:
    """The runners (one per network) and how they were chosen.

    Attributes:
        name: the runner in use: ``torch``, ``torch-channels_last``, ``onnxruntime`` or ``openvino``.
        runners: one per network, in order.
        timings_ms: best time per candidate on one patch batch (empty when nothing was measured).
        fallback: why the requested backend was not used (empty when it was).
        recorded: ``auto`` took an earlier run's recorded measurement (``timings_ms`` are that run's).
    """

    name: str
    runners: list[Runner]
    timings_ms: dict[str, float] = field(default_factory=dict)
    fallback: str = ""
    recorded: bool = False

    @property
    def amp(self) -> bool:
        """Whether the runners autocast (only torch does)."""
        return any(isinstance(r, TorchRunner) and r.amp for r in self.runners)

    def as_dict(self) -> dict:
        """JSON-able record for the run's report."""
        return {"backend": self.name, "timings_ms": self.timings_ms, "fallback": self.fallback or None,
                "recorded": self.recorded}


def fastest(runners: Mapping[str, Runner], x: torch.Tensor, rounds: int = 4) -> tuple[str, dict[str, float]]:
    """The fastest of ``runners`` on ``x`` ``(B, C, H, W[, D])``: one warm-up call each, then ``rounds``
    interleaved timed calls, the order rotated each round (a runtime's threads still busy after its call slow
    whichever runs next), best of each (a load spike hits one call, not one candidate)."""
    for run in runners.values():
        run(x)
    best = dict.fromkeys(runners, float("inf"))
    names = list(runners)
    for turn in range(rounds):
        for name in names[turn % len(names):] + names[: turn % len(names)]:
            run = runners[name]
            start = time.perf_counter()
            run(x)
            best[name] = min(best[name], 1000 * (time.perf_counter() - start))
    return min(best, key=best.get), {k: round(v, 2) for k, v in best.items()}


@torch.no_grad()
def choose_backend(
    nets: Sequence[nn.Module],
    patch_shape: Sequence[int],
    *,
    backend: str | None,
    layout: str | None,
    amp: bool,
    device: torch.device,
) -> BackendChoice:
    """Runners for ``nets`` on patches ``patch_shape`` ``(B, C, H, W[, D])``.

    Args:
        backend: one of :data:`~pipeline.inference.backends.BACKENDS`; ``None`` is torch.
        layout: the torch layout, one of :data:`~pipeline.inference.backends.LAYOUTS`; ``None`` is ``auto``.
        amp: autocast the torch runners (the runtimes run float32).
        device: CUDA runs torch only (``auto`` picks it; the CPU runtimes are an error there).
    """
    backend, layout = backend or "torch", layout or "auto"
    if backend not in BACKENDS or layout not in LAYOUTS:
        raise ValueError(f"backend must be one of {BACKENDS} and layout one of {LAYOUTS}, got {backend!r}, {layout!r}")
    if device.type != "cpu":
        if backend in _RUNTIMES:
            raise ValueError(f"backend {backend!r} runs on the CPU; device is {device} (use --backend torch or auto)")
        return _torch_choice(nets, "channels_last" if layout == "channels_last" else "contiguous", amp)
    key = _choice_key(nets[0], patch_shape, amp, layout) if backend == "auto" else None
    recorded = _recorded(recorded_choice(key), nets, patch_shape, amp) if key else None
    if recorded is not None:
        return recorded
    x = torch.rand(tuple(patch_shape), generator=torch.Generator().manual_seed(0))
    names = [backend] if backend in _RUNTIMES else [*_RUNTIMES] if backend == "auto" else []
    candidates: dict[str, list[Runner]] = {}
    reasons = []
    for name in names:
        try:
            candidates[name] = _runtime_runners(name, nets, patch_shape)
        except Exception as error:  # noqa: BLE001 - any import/export/compile failure means: use torch
            reasons.append(f"{name} unavailable ({type(error).__name__}: {str(error).splitlines()[0][:200]})")
    fallback = ""
    if backend in _RUNTIMES and not candidates:
        fallback = reasons[0]
        warnings.warn(f"{fallback}; running the network in torch (pip install 'clinseg[{_EXTRA[backend]}]')",
                      RuntimeWarning, stacklevel=3)  # fmt: skip
    elif reasons:
        logger.info("backend auto: %s", "; ".join(reasons))
    if backend in _RUNTIMES and candidates:
        return BackendChoice(backend, candidates[backend])
    layouts = ["contiguous", "channels_last"] if layout == "auto" else [layout]
    if layout == "auto" and channels_last_format(nets[0]) is None:
        layouts = ["contiguous"]
    for name in layouts:
        candidates[_torch_name(name)] = [_torch_runner(nets[0], name, amp)]
    if len(candidates) == 1:
        name = next(iter(candidates))
        return _complete(BackendChoice(name, candidates[name], fallback=fallback), nets, amp)
    name, timings = fastest({k: v[0] for k, v in candidates.items()}, x)
    logger.info("backend %s: %s chosen, best ms per patch batch %s", backend, name, timings)
    if key:
        record_choice(key, name, timings)
    return _complete(BackendChoice(name, candidates[name], timings, fallback), nets, amp)


def _choice_key(net: nn.Module, patch_shape: Sequence[int], amp: bool, layout: str) -> str | None:
    try:
        return choice_key(net, patch_shape, amp=amp, layout=layout)
    except ImportError:  # no onnx: no runtime to choose between, nothing worth recording
        return None


def _recorded(
    entry: dict | None, nets: Sequence[nn.Module], patch_shape: Sequence[int], amp: bool
) -> BackendChoice | None:
    """The recorded backend's runners, or ``None`` (nothing recorded, or it no longer builds: measure again)."""
    if entry is None:
        return None
    name, timings = entry["backend"], dict(entry.get("timings_ms") or {})
    if name in _RUNTIMES:
        try:
            return BackendChoice(name, _runtime_runners(name, nets, patch_shape), timings, recorded=True)
        except Exception as error:  # noqa: BLE001 - a runtime that no longer loads: measure again
            logger.info("recorded backend %s unavailable (%s); measuring again", name, error)
            return None
    if name in ("torch", "torch-channels_last"):
        layout = "contiguous" if name == "torch" else "channels_last"
        return replace(_torch_choice(nets, layout, amp), timings_ms=timings, recorded=True)
    return None


def _runtime_runners(name: str, nets: Sequence[nn.Module], patch_shape: Sequence[int]) -> list[Runner]:
    return [_RUNTIMES[name](exported_onnx(net, patch_shape)) for net in nets]


def _torch_name(layout: str) -> str:
    return "torch" if layout == "contiguous" else "torch-channels_last"


def _torch_runner(net: nn.Module, layout: str, amp: bool) -> TorchRunner:
    return TorchRunner(net, channels_last=layout == "channels_last", amp=amp)


def _torch_choice(nets: Sequence[nn.Module], layout: str, amp: bool) -> BackendChoice:
    return BackendChoice(_torch_name(layout), [_torch_runner(net, layout, amp) for net in nets])


def _complete(choice: BackendChoice, nets: Sequence[nn.Module], amp: bool) -> BackendChoice:
    """``choice`` with a torch runner for every network of an ensemble (measured on the first only)."""
    if choice.name.startswith("torch"):
        layout = "contiguous" if choice.name == "torch" else "channels_last"
        choice.runners = choice.runners + [_torch_runner(net, layout, amp) for net in nets[1:]]
    return choice


def resolve_amp(amp: bool | None, device: torch.device) -> bool:
    """``amp`` as given, or, when ``None``: on for CUDA (float16) and for CPUs with native bfloat16 arithmetic
    (AVX512-BF16 or AMX), off elsewhere (emulated bfloat16 is slower than float32)."""
    if amp is not None:
        return amp
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    native = [
        getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    ]
    return any(bool(check()) for check in native if check is not None)


def patch_shape(net: nn.Module, sw_batch_size: int, roi_size: Sequence[int]) -> tuple[int, ...]:
    """One sliding-window call's input ``(sw_batch_size, C, *roi_size)`` for ``net``: ``C`` is its ``in_channels``
    (ours, MONAI's U-Nets; a fusion net's first weight sees one modality), else its first convolution's
    ``(out, in, ...)``."""
    channels = getattr(net, "in_channels", None)
    if not isinstance(channels, int):
        weight = next((p for p in net.parameters() if p.ndim >= 3), None)
        if weight is None:
            raise ValueError(f"cannot tell the input channels of {type(net).__name__}: no conv weights")
        channels = int(weight.shape[1])
    return (int(sw_batch_size), channels, *map(int, roi_size))
