"""Runs a script as the GPU machine would: importable are only the standard library, this repository, the
distributions of the device image (``GPU_IMAGE``, /work/.library/device/KINDS.md, read 2026-11-17) and those
that ``benchmarks/gpu_wheels.sh`` carries; any other import raises ``ModuleNotFoundError`` and is reported on
stderr as ``GPU_IMAGE_LACKS <module>``. Checks on a CPU machine that the carried wheels cover what the GPU check
imports (an optional import that fails this way falls back as it would there).

    python benchmarks/gpu_imports.py benchmarks/bench_gpu.py --smoke
    python benchmarks/gpu_imports.py --without simpleitk benchmarks/bench_gpu.py --smoke   # must fail
"""

from __future__ import annotations

import importlib.abc
import importlib.metadata
import re
import runpy
import sys
from importlib.machinery import ModuleSpec
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OWN = {"pipeline", "transforms", "networks", "benchmarks", "__main__"}
GPU_IMAGE = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers
flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py
markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging
pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham
simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
werkzeug wheel wrapt xarray xxhash yarl zipp""".split()


def norm(name: str) -> str:
    """A distribution name in PEP 503 form (``Pytorch_Ignite`` -> ``pytorch-ignite``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def carried_wheels() -> list[str]:
    """The distributions named in ``PACKAGES=...`` of benchmarks/gpu_wheels.sh."""
    text = (REPO / "benchmarks" / "gpu_wheels.sh").read_text()
    match = re.search(r'^PACKAGES="([^"]*)"', text, re.MULTILINE)
    if match is None:
        raise ValueError("benchmarks/gpu_wheels.sh has no PACKAGES=\"...\" line")
    return match.group(1).split()


class _Missing(importlib.abc.Loader):
    """Fails the import of a module that is installed here but would be missing on the GPU machine."""

    def create_module(self, spec: ModuleSpec):
        print(f"GPU_IMAGE_LACKS {spec.name.split('.')[0]}", file=sys.stderr)
        raise ModuleNotFoundError(f"No module named {spec.name!r} (not on the GPU image nor in .whl)", name=spec.name)

    def exec_module(self, module) -> None:  # never reached: create_module raises
        raise AssertionError(module)


class GpuImageFinder(importlib.abc.MetaPathFinder):
    """Makes imports of installed top-level modules fail when none of their distributions is in ``allowed``
    (stdlib and this repository pass; modules not installed here fail as usual)."""

    def __init__(self, allowed: set[str]) -> None:
        self.allowed = {norm(d) for d in allowed}
        self.dists = importlib.metadata.packages_distributions()

    def find_spec(self, name: str, path=None, target=None) -> ModuleSpec | None:
        top = name.split(".")[0]
        if top in sys.stdlib_module_names or top in OWN or top.startswith("_") or top not in self.dists:
            return None
        if any(norm(d) in self.allowed for d in self.dists[top]):
            return None
        return ModuleSpec(name, _Missing())


def main() -> None:
    argv = sys.argv[1:]
    without = set()
    while argv and argv[0] == "--without":
        without.add(norm(argv[1]))
        argv = argv[2:]
    if not argv:
        raise SystemExit("usage: gpu_imports.py [--without DIST]... SCRIPT [ARGS...]")
    allowed = set(GPU_IMAGE) | {norm(d) for d in carried_wheels()} - without
    sys.meta_path.insert(0, GpuImageFinder(allowed))
    sys.argv = argv
    runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
