"""Wall time until ``clinseg inspect /nonexistent`` reports the missing path, before and after the CLI package.

The "before" tree is a ``git archive`` of a revision (default: 080019d, the last ``pipeline/cli.py``); the
reference measured in the same run is ``python -c pass`` (interpreter start). Each command runs ``--repeat``
times, alternating trees; the median is reported.

    python benchmarks/bench_cli_startup.py [--before-rev 080019d] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _wall(command: list[str], pythonpath: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    start = time.perf_counter()
    subprocess.run(command, env=env, cwd=pythonpath, capture_output=True, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before-rev", default="080019d", help="git revision of the 'before' tree")
    parser.add_argument("--repeat", type=int, default=5, help="runs per command")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        before = Path(tmp) / "before"
        archive = Path(tmp) / "before.tar"
        subprocess.run(["git", "archive", "-o", str(archive), args.before_rev, "pipeline", "transforms", "networks"],
                       cwd=ROOT, check=True)  # fmt: skip
        with tarfile.open(archive) as tar:
            tar.extractall(before, filter="data")
        commands = {
            "python -c pass (reference)": ([sys.executable, "-c", "pass"], ROOT),
            "before: inspect /nonexistent": ([sys.executable, "-m", "pipeline.cli", "inspect", "/nonexistent"], before),
            "after: inspect /nonexistent": ([sys.executable, "-m", "pipeline.cli", "inspect", "/nonexistent"], ROOT),
            "before: --help": ([sys.executable, "-m", "pipeline.cli", "--help"], before),
            "after: --help": ([sys.executable, "-m", "pipeline.cli", "--help"], ROOT),
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeat):
            for name, (command, path) in commands.items():
                times[name].append(_wall(command, path))
    reference = statistics.median(times["python -c pass (reference)"])
    after = statistics.median(times["after: inspect /nonexistent"])
    before_s = statistics.median(times["before: inspect /nonexistent"])
    print("| command | median wall (s) | ratio to python -c pass |")
    print("|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.3f} | {statistics.median(values) / reference:.1f} |")
    print(f"\ninspect /nonexistent: after/before = {after / before_s:.3f}")


if __name__ == "__main__":
    main()
