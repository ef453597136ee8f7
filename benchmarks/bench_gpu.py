"""GPU check: AMP vs float32 training, Predictor seconds per 512x512x300 CT, CLAHE GPU vs CPU, 1-GPU DDP smoke.

Every figure is a ratio against a reference timed in the same run:

(a) training steps/s of ``networks.build_network`` nets with the bundle's loss (``dice_ce_loss``) and AdamW, bf16
    autocast vs float32 (reference): the ``ct_organ_resunet3d`` size (its ``network_args``, ``roi_size``, 2 volumes
    x 2 patches) and an nnU-Net-sized plan (5 levels 32..320 channels, 128^3 patch, batch 2). Random tensors stand
    in for the data: the bundle's train.yaml wires MLflow tracking and a datalist, so its workflow is not run here;
    this times the network, loss and optimizer alone.
(b) seconds per synthetic 512x512x300 int16 CT (0.8x0.8x1.5 mm, in memory) through clinseg's ``Predictor`` built
    from the bundle with random weights, load to labels on the input grid: AMP (the Predictor's float16 on CUDA)
    vs float32 (reference), and AMP + ``torch.compile`` of the network where it compiles (its failure is reported,
    not raised; TensorRT is not on the GPU image). The first case of each row is a warm-up (and the compile).
(c) CLAHE (``transforms.intensity.clahe``) of a 256x256x128 volume: the torch path on the GPU vs the CPU default (numba).
(d) a 1-process ``torchrun`` NCCL smoke train through ``pipeline.training.distributed`` (DDP), steps/s vs the
    same net, patch and precision without DDP from (a).

Each part has a time cap (``--cap-s``, per row); CUDA parts print "skipped: no CUDA" without a GPU. Prints markdown
tables and writes them to ``$OUT/gpu_results.md`` when ``$OUT`` is set. ``--smoke``: tiny sizes, 1-2 steps (CPU CI).

    python benchmarks/bench_gpu.py            # on the GPU, via benchmarks/gpu_check.sh
    python benchmarks/bench_gpu.py --smoke    # anywhere
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import networks  # noqa: E402
from pipeline.training.losses import dice_ce_loss  # noqa: E402

BUNDLE = REPO / "bundles" / "ct_organ_resunet3d"
BUNDLE_BATCH = 4  # the bundle's train.yaml: batch_size 2 volumes x samples_per_volume 2 patches
NNUNET_NET, NNUNET_PATCH, NNUNET_BATCH = {"channels": [32, 64, 128, 256, 320]}, [128, 128, 128], 2
SMOKE_NET, SMOKE_PATCH = {"channels": [4, 8, 16]}, [16, 16, 16]
SKIP_CUDA = "skipped: no CUDA"


def bundle_network() -> tuple[dict, list[int]]:
    """The bundle's network widths (``channels``) and training patch (``roi_size``), from its common.yaml."""
    from pipeline.core.bundle import Bundle

    parser = Bundle.at(BUNDLE).parser("inference")
    return {"channels": list(parser.get_parsed_content("network_args")["channels"])}, list(parser.get("roi_size"))


def build(net_args: dict) -> torch.nn.Module:
    """The bundle's ``res_unet`` (1 input, 3 classes) with ``net_args`` widths."""
    return networks.build_network("res_unet", spatial_dims=3, in_channels=1, out_channels=3, **net_args)


def rate(step: Callable[[], None], steps: int, cap_s: float, device: torch.device, warmup: int = 2) -> float:
    """Steps per second of ``step`` over at most ``steps`` steps or ``cap_s`` seconds, after ``warmup`` steps."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    start, done = time.perf_counter(), 0
    while done < steps and (done == 0 or time.perf_counter() - start < cap_s):
        step()
        done += 1
    sync()
    return done / (time.perf_counter() - start)


def train_step(net: torch.nn.Module, batch: int, patch: list[int], device: torch.device, amp: bool):
    """One AdamW step of ``net`` on a random ``(batch, 1, *patch)`` batch, bf16 autocast when ``amp``."""
    loss_fn = dice_ce_loss("multiclass", include_background=False)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    image = torch.rand(batch, 1, *patch, device=device)
    label = torch.randint(0, 3, (batch, 1, *patch), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(net(image), label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def part_training(args: argparse.Namespace, device: torch.device) -> tuple[list[str], dict]:
    """(a): rows, and the bf16 steps/s per config (the reference of (d))."""
    rows = ["| network (patch, batch) | float32 steps/s | bf16 AMP steps/s | ratio AMP/float32 |", "|---|---|---|---|"]
    bundle_net, roi = bundle_network()
    configs = [("ct_organ_resunet3d", bundle_net, roi, BUNDLE_BATCH), ("nnU-Net-sized plan", NNUNET_NET, NNUNET_PATCH, NNUNET_BATCH)]
    if args.smoke:
        configs = [("ct_organ_resunet3d", SMOKE_NET, SMOKE_PATCH, 1)]
    amp_rates = {}
    for name, net_args, patch, batch in configs:
        rates = {}
        for amp in (False, True):
            torch.manual_seed(0)
            net = build(net_args).to(device).train()
            rates[amp] = rate(train_step(net, batch, patch, device, amp), args.steps, args.cap_s, device, args.warmup)
            del net
        amp_rates[name] = (net_args, patch, batch, rates[True])
        shape = "x".join(map(str, patch))
        rows.append(f"| {name} ({shape}, {batch}) | {rates[False]:.2f} | {rates[True]:.2f} | {rates[True] / rates[False]:.2f} |")
    return rows, amp_rates


def phantom(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic CT (int16 HU): air, body ellipse, organ sphere, noise; RAS affine."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in shape), indexing="ij", sparse=True)
    hu = np.full(shape, -1000, np.float32)
    hu[np.broadcast_to((x / 0.75) ** 2 + (y / 0.5) ** 2 < 1, shape)] = 30
    hu[x**2 + y**2 + (z * 0.6) ** 2 < 0.09] = 90
    hu += np.random.default_rng(0).normal(0, 15, shape).astype(np.float32)
    return hu.astype(np.int16), np.diag([*spacing, 1.0])


def part_predict(args: argparse.Namespace, device: torch.device) -> list[str]:
    """(b): Predictor seconds per CT, float32 (reference), AMP, AMP + torch.compile."""
    from pipeline.core.checkpoint import NetworkSpec
    from pipeline.core.bundle import Bundle
    from pipeline.inference.backend_choice import resolve_amp
    from pipeline.inference.backends import TorchRunner
    from pipeline.inference.options import InferenceOptions
    from pipeline.inference.predictor import Predictor

    shape = tuple(args.ct_shape)
    rows = [f"| Predictor, {'x'.join(map(str, shape))} CT on {device.type} | s per CT | ratio float32/row |", "|---|---|---|"]
    parser = Bundle.at(BUNDLE).parser("inference")
    torch.manual_seed(0)
    spec = NetworkSpec(parser.get_parsed_content("network_name"), parser.get_parsed_content("network_args"))
    ct = phantom(shape, (0.8, 0.8, 1.5))
    amp_name = "AMP (float16)" if device.type == "cuda" else "AMP (bfloat16)"  # the Predictor's autocast dtypes
    runs = [("float32", False, False), (amp_name, True, False), (f"{amp_name} + torch.compile", True, True)]
    ref = None
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "model.pt"
        torch.save({"model": spec.build().state_dict(), "network": spec.state_dict()}, checkpoint)
        for name, amp, compiled in runs:
            if compiled and args.smoke:
                rows.append(f"| {name} | skipped: --smoke | |")
                continue
            if amp and not resolve_amp(None, device):  # emulated bfloat16: tens of times slower than float32
                rows.append(f"| {name} | skipped: no native bfloat16 on this CPU | |")
                continue
            options = InferenceOptions(device=device.type, amp=amp)
            predictor = Predictor.from_bundle(BUNDLE, checkpoint, options=options)
            if compiled:  # the Predictor's forwards wrap its networks: rebuild them around the compiled ones
                predictor._forwards = [
                    predictor._forward(TorchRunner(torch.compile(net), amp=predictor.amp))
                    for net in predictor.networks
                ]
            try:
                seconds = _seconds_per_case(predictor, ct, args.cases, args.cap_s, device)
            except Exception as error:  # noqa: BLE001 - torch.compile failures are reported as a row
                message = (str(error).splitlines() or [""])[0][:120].replace("|", "/")
                rows.append(f"| {name} | failed: {type(error).__name__}: {message} | |")
                continue
            ref = seconds if ref is None else ref
            rows.append(f"| {name} | {seconds:.2f} | {ref / seconds:.2f} |")
    return rows


def _seconds_per_case(predictor, ct, cases: int, cap_s: float, device: torch.device) -> float:
    """Mean seconds of ``predictor.predict_image(ct)`` after one warm-up case, at most ``cases`` or ``cap_s``."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    predictor.predict_image(ct)
    sync()
    start, done = time.perf_counter(), 0
    while done < cases and (done == 0 or time.perf_counter() - start < cap_s):
        predictor.predict_image(ct)
        done += 1
    sync()
    return (time.perf_counter() - start) / done


def part_clahe(args: argparse.Namespace, device: torch.device) -> list[str]:
    """(c): CLAHE on the GPU (torch path) vs the CPU default backend."""
    from transforms.intensity.clahe import clahe

    shape = (16, 16, 16) if args.smoke else (256, 256, 128)
    vol = torch.rand(1, *shape).pow(2)
    rows = [f"| CLAHE {'x'.join(map(str, shape))} | CPU (auto backend) s | GPU (torch) s | ratio CPU/GPU |", "|---|---|---|---|"]
    cpu = 1 / rate(lambda: clahe(vol), args.steps, args.cap_s, torch.device("cpu"), warmup=1)
    if device.type != "cuda":
        return rows + [f"| 3D tiles | {cpu:.3f} | {SKIP_CUDA} | |"]
    gpu_vol = vol.to(device)
    gpu = 1 / rate(lambda: clahe(gpu_vol), args.steps, args.cap_s, device, warmup=1)
    return rows + [f"| 3D tiles | {cpu:.3f} | {gpu:.4f} | {cpu / gpu:.1f} |"]


def part_ddp(args: argparse.Namespace, device: torch.device, amp_rates: dict) -> list[str]:
    """(d): ``torchrun --nproc_per_node 1`` of :func:`ddp_child`, steps/s vs the plain bf16 rate from (a)."""
    rows = ["| 1-GPU torchrun NCCL smoke train | DDP steps/s | plain steps/s | ratio DDP/plain |", "|---|---|---|---|"]
    if device.type != "cuda":
        return rows + [f"| ct_organ_resunet3d | {SKIP_CUDA} | | |"]
    _, patch, batch, plain = amp_rates["ct_organ_resunet3d"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", __file__, "--ddp-child",
           "--steps", str(args.steps), "--cap-s", str(args.cap_s), "--warmup", str(args.warmup)]
    return rows + [_ddp_row(cmd, args.cap_s, patch, batch, plain)]


def _ddp_row(cmd: list[str], cap_s: float, patch: list[int], batch: int, plain: float) -> str:
    """Runs the torchrun ``cmd`` and turns its ``DDP_STEPS_PER_S`` line into a row (or a failure row)."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=cap_s + 120, cwd=REPO)
    except subprocess.TimeoutExpired:
        return "| ct_organ_resunet3d | failed: timed out | | |"
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("DDP_STEPS_PER_S")]
    if done.returncode or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:160]
        return f"| ct_organ_resunet3d | failed (rc {done.returncode}): {tail} | | |"
    ddp, backend = float(lines[-1].split()[1]), lines[-1].split()[3]
    return f"| ct_organ_resunet3d ({'x'.join(map(str, patch))}, {batch}, bf16, {backend}) | {ddp:.2f} | {plain:.2f} | {ddp / plain:.2f} |"


def ddp_child(args: argparse.Namespace) -> None:
    """Under torchrun: DDP-wrapped bundle-sized net (NCCL on CUDA, gloo on the CPU), bf16 steps; rank 0 prints
    ``DDP_STEPS_PER_S <rate> backend <name>``."""
    from pipeline.training import distributed

    device = distributed.local_device()
    net_args, patch, batch = (SMOKE_NET, SMOKE_PATCH, 1) if args.smoke else (*bundle_network(), BUNDLE_BATCH)
    torch.manual_seed(0)
    net = distributed.data_parallel(build(net_args).train(), device)
    steps_per_s = rate(train_step(net, batch, patch, device, True), args.steps, args.cap_s, device, args.warmup)
    if distributed.global_rank() == 0:
        print(f"DDP_STEPS_PER_S {steps_per_s:.4f} backend {torch.distributed.get_backend()}", flush=True)
    distributed.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 1-2 steps, no torch.compile")
    parser.add_argument("--steps", type=int, default=30, help="timed training/CLAHE steps per row, at most")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--cases", type=int, default=2, help="timed CTs per predict row, at most")
    parser.add_argument("--cap-s", type=float, default=20.0, help="time cap of one row's timed loop, seconds")
    parser.add_argument("--ct-shape", type=int, nargs=3, default=[512, 512, 300])
    parser.add_argument("--parts", default="abcd", help="which parts to run, e.g. 'ac'")
    parser.add_argument("--ddp-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.warmup, args.cases, args.ct_shape = 2, 1, 1, [48, 48, 24]
    if args.ddp_child:
        ddp_child(args)
        return
    if not torch.cuda.is_available():
        torch.set_num_threads(min(2, torch.get_num_threads()))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True  # fixed shapes throughout: every row, reference included, autotunes
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU"
    out = Path(os.environ["OUT"]) / "gpu_results.md" if os.environ.get("OUT") else None
    emit(f"GPU check on {name}, torch {torch.__version__}{', --smoke' if args.smoke else ''}", out, first=True)
    amp_rates: dict = {}
    if "a" in args.parts:
        rows, amp_rates = part_training(args, device)
        emit("\n".join(rows), out)
    if "b" in args.parts:
        emit("\n".join(part_predict(args, device)), out)
    if "c" in args.parts:
        emit("\n".join(part_clahe(args, device)), out)
    if "d" in args.parts:
        if device.type == "cuda" and not amp_rates:
            amp_rates = part_training(argparse.Namespace(**{**vars(args), "smoke": False}), device)[1]
        emit("\n".join(part_ddp(args, device, amp_rates)), out)


def emit(table: str, out: Path | None, first: bool = False) -> None:
    """Print ``table`` and append it to ``out`` (when set) at once, so a run cut off keeps the finished parts."""
    print(table + "\n", flush=True)
    if out is not None:
        with out.open("w" if first else "a") as f:
            f.write(table + "\n\n")

if __name__ == "__main__":
    main()
