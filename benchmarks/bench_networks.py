"""Parameters, FLOPs per patch and CPU forward throughput of every network vs MONAI's BasicUNet (same run).

    python benchmarks/bench_networks.py --threads 2 --repeats 3

Prints one markdown table (one row per network and patch): throughput ratio > 1 means faster than BasicUNet.
Timed forwards are interleaved round-robin over the networks (one forward each per round), so load from other
processes on a shared machine hits every network alike; each rate is the median over the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from monai.networks.nets import BasicUNet
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from networks import build_network

REFERENCE = "basic_unet (MONAI, reference)"
# Benchmark configuration of each network: input channels and, per spatial_dims, keyword arguments beyond
# spatial_dims/in_channels/out_channels ({} = class defaults). The article-sized DenseUNet needs 3.5 TFLOPs
# per 96^3 patch (its decoder's dense blocks run at full resolution), so 3D uses a slimmer one.
CONFIGS: dict[str, tuple[int, dict[int, dict]]] = {
    "unet": (1, {2: {"features": (32, 64, 128, 256, 512)}, 3: {"features": (32, 64, 128, 256, 512)}}),
    "res_unet": (1, {2: {"channels": (32, 64, 128, 256, 512)}, 3: {"channels": (32, 64, 128, 256, 512)}}),
    "attention_unet": (1, {2: {}, 3: {}}),
    "dense_unet": (1, {2: {}, 3: {"init_features": 16, "growth_rate": 8, "levels": 3}}),
    "dual_encoder_fusion": (2, {2: {}, 3: {}}),
    "fusion_seg_net": (2, {2: {}, 3: {}}),
}


def make(name: str, spatial_dims: int) -> tuple[torch.nn.Module, int]:
    if name == REFERENCE:
        return BasicUNet(spatial_dims=spatial_dims, in_channels=1, out_channels=2), 1
    in_channels, kwargs = CONFIGS[name]
    out_channels = 1 if name == "dual_encoder_fusion" else 2
    net = build_network(
        name,
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        **kwargs[spatial_dims],
    )
    return net, in_channels


def count_flops(name: str, spatial_dims: int, shape: tuple[int, ...]) -> float:
    """Forward FLOPs (2 per multiply-add) for one patch, counted on the meta device (nothing is computed)."""
    with torch.device("meta"):
        net, in_channels = make(name, spatial_dims)
        x = torch.empty(1, in_channels, *shape)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net.eval()(x)
    return float(counter.get_total_flops())


def throughputs(cases: dict[str, tuple[torch.nn.Module, torch.Tensor]], repeats: int) -> dict[str, float]:
    """Patches per second of each case: one warm-up each, then ``repeats`` interleaved rounds, median."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    with torch.no_grad():
        for net, x in cases.values():
            net.eval()(x)
        for _ in range(repeats):
            for name, (net, x) in cases.items():
                start = time.perf_counter()
                net(x)
                times[name].append(time.perf_counter() - start)
    return {name: 1.0 / statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size2d", type=int, default=256)
    parser.add_argument("--size3d", type=int, default=96)
    parser.add_argument("--dims", type=int, nargs="*", default=[2, 3], choices=[2, 3])
    parser.add_argument("--networks", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    print("| network | patch | params (M) | GFLOPs / patch | patches / s | throughput vs BasicUNet |")
    print("|---|---|---|---|---|---|")
    for spatial_dims in args.dims:
        size = args.size2d if spatial_dims == 2 else args.size3d
        shape = (size,) * spatial_dims
        patch = "x".join(map(str, shape))
        cases = {}
        for name in [REFERENCE, *args.networks]:
            net, in_channels = make(name, spatial_dims)
            cases[name] = (net, torch.randn(1, in_channels, *shape))
        rates = throughputs(cases, args.repeats)
        for name, (net, _) in cases.items():
            params = sum(p.numel() for p in net.parameters()) / 1e6
            flops = count_flops(name, spatial_dims, shape) / 1e9
            ratio = rates[name] / rates[REFERENCE]
            print(
                f"| {name} | {patch} | {params:.2f} | {flops:.1f} | {rates[name]:.3g} | {ratio:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
