"""``python -m monai.bundle run`` on a shipped bundle as the README writes it (``common.yaml`` first), in a
subprocess that imports this checkout's packages whichever checkout the environment was installed from."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.core.bundle import Bundle
from tests.conftest import REPO


def monai_bundle_run(
    bundle: Path, configs: Sequence[str | Path], workdir: Path, *args: str, threads: int = 2
) -> str:
    """Run ``configs`` (names under ``configs/`` or overlay files) as clinseg lists them (``common.yaml``, then
    each shared base config before the bundle's own), with ``args`` (``--key value`` overrides); asserts success
    and returns stdout + stderr."""
    configs_dir = bundle / "configs"
    files = Bundle.at(bundle).config_files(list(configs))
    command = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str([str(f) for f in files]),
        "--meta_file", str(configs_dir / "metadata.json"),
        "--logging_file", str(configs_dir / "logging.conf"),
        "--bundle_root", str(bundle),
        *args,
    ]  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": str(threads), "HOME": str(workdir), "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, check=False, capture_output=True, text=True, cwd=workdir, env=env, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    return output
