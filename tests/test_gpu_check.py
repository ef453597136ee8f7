"""The GPU check (benchmarks/bench_gpu.py, gpu_check.sh) on a CPU: its smoke run prints every table with the CUDA
parts skipped, and it imports nothing that the GPU machine lacks beyond the wheels gpu_wheels.sh carries."""

from __future__ import annotations

import importlib.metadata
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from gpu_imports import carried_wheels  # noqa: E402

GPU_IMPORTS = REPO / "benchmarks" / "gpu_imports.py"
BENCH = REPO / "benchmarks" / "bench_gpu.py"


def _run(*args: str, env: dict | None = None, timeout: int = 500) -> subprocess.CompletedProcess:
    """``python benchmarks/gpu_imports.py ARGS`` (imports limited to the GPU image and the carried wheels)."""
    base = {k: v for k, v in os.environ.items() if k != "OUT"}
    full_env = {**base, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, str(GPU_IMPORTS), *args], capture_output=True, text=True, env=full_env, timeout=timeout, cwd=REPO
    )


@pytest.fixture(scope="module")
def smoke() -> subprocess.CompletedProcess:
    return _run(str(BENCH), "--smoke")


@pytest.mark.slow
def test_smoke_runs_with_only_the_gpu_image_and_carried_wheels(smoke):
    assert smoke.returncode == 0, smoke.stderr[-3000:]
    assert "Traceback" not in smoke.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "header",
    [
        "| network (patch, batch) | float32 steps/s | bf16 AMP steps/s | ratio AMP/float32 |",
        "| Predictor, 48x48x24 CT on cpu | s per CT | ratio float32/row |",
        "| CLAHE 16x16x16 | CPU (auto backend) s | GPU (torch) s | ratio CPU/GPU |",
        "| 1-GPU torchrun NCCL smoke train | DDP steps/s | plain steps/s | ratio DDP/plain |",
    ],
)
def test_smoke_prints_each_table(smoke, header):
    lines = smoke.stdout.splitlines()
    assert header in lines, smoke.stdout
    row = lines[lines.index(header) + 2]
    assert row.startswith("| ") and "failed" not in row, row


@pytest.mark.slow
@pytest.mark.parametrize("row_start", ["| 3D tiles |", "| ct_organ_resunet3d |"])
def test_smoke_skips_the_cuda_parts(smoke, row_start):
    rows = [ln for ln in smoke.stdout.splitlines() if ln.startswith(row_start)]
    assert rows and "skipped: no CUDA" in rows[-1], smoke.stdout


@pytest.mark.slow
def test_smoke_writes_the_tables_to_out(tmp_path):
    done = _run(str(BENCH), "--smoke", "--parts", "c", env={"OUT": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| CLAHE 16x16x16 |" in (tmp_path / "gpu_results.md").read_text()


@pytest.mark.slow
def test_ddp_child_trains_under_a_process_group(tmp_path):
    """The torchrun child of part (d), here with gloo on the CPU (torchrun's variables set by hand)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    done = _run(str(BENCH), "--ddp-child", "--smoke", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "backend gloo" in done.stdout and "DDP_STEPS_PER_S" in done.stdout


@pytest.mark.parametrize("dist", carried_wheels())
def test_carried_wheels_are_installed_here(dist):
    """gpu_wheels.sh pins each to the version installed here: it must be installed."""
    assert importlib.metadata.version(dist)


@pytest.mark.slow
@pytest.mark.parametrize("dist, module", [("simpleitk", "SimpleITK"), ("pytorch-ignite", "ignite")])
def test_gpu_path_fails_without_a_carried_wheel(tmp_path, dist, module):
    """The import check can fail: without one carried wheel, the GPU path's imports break."""
    script = tmp_path / "imports.py"
    script.write_text("import pipeline.inference.predictor\nimport pipeline.training.distributed\n")
    done = _run("--without", dist, str(script))
    assert done.returncode != 0
    assert f"GPU_IMAGE_LACKS {module}" in done.stderr
