"""MR artefact augmentation on training patches: ``RandTorchIOMetad`` against MONAI's ``RandTorchIOd``.

    python benchmarks/bench_mr_augment.py [--repeats 10] [--threads 2]

A training patch (2 x 48 x 48 x 32, BRATS-sized planned patch) is a view cropped from a cached 2 x 240 x 240 x 155
volume, as ``RandCropByLabelClassesd`` returns it. TorchIO deep-copies its subject, and a deep copy of a view
copies its whole storage: MONAI's ``RandTorchIOd`` hands TorchIO the view, ``RandTorchIOMetad`` a compact plain
tensor. Each artefact is applied with probability 1; the table gives ms per patch and the ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from monai.data import MetaTensor
from monai.transforms import RandTorchIOd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transforms.augment.mr import RandTorchIOMetad  # noqa: E402

ARTEFACTS = {
    "RandomBiasField": {"coefficients": 0.4},
    "RandomMotion": {"degrees": 3.0, "translation": 3.0, "num_transforms": 2},
    "RandomGhosting": {"num_ghosts": (2, 6), "intensity": (0.2, 0.5)},
    "RandomSpike": {"num_spikes": (1, 1), "intensity": (0.1, 0.3)},
}


def _ms(transform, sample: dict, repeats: int) -> float:
    transform(dict(sample))
    start = time.perf_counter()
    for _ in range(repeats):
        transform(dict(sample))
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    volume = MetaTensor(torch.randn(2, 240, 240, 155))
    patch = volume[:, 100:148, 90:138, 60:92]  # a view, as a crop of the cached scan is
    sample = {"image": patch}
    print(f"torch threads {args.threads}, {args.repeats} repeats, patch {tuple(patch.shape)} (view: "
          f"{not patch.is_contiguous()})")  # fmt: skip
    print("| artefact | MONAI RandTorchIOd ms | RandTorchIOMetad ms | ratio |")
    print("|---|---|---|---|")
    for name, kwargs in ARTEFACTS.items():
        reference = _ms(RandTorchIOd(["image"], name, p=1.0, **kwargs), sample, args.repeats)
        ours = _ms(RandTorchIOMetad(["image"], name, p=1.0, **kwargs), sample, args.repeats)
        print(f"| {name} | {reference:.0f} | {ours:.0f} | {reference / ours:.1f}x |")


if __name__ == "__main__":
    main()
