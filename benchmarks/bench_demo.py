"""Wall time and Dice of the main job (``clinseg demo``) in a fresh work folder.

Usage: python benchmarks/bench_demo.py [--workdir /tmp/clinseg-demo-bench]

Prints a markdown row: wall time, its ratio to the 10-minute budget of the demo, validation Dice per label
at the best epoch and the test-case Dice on the input grid, as the demo reports them.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

BUDGET_S = 600.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/clinseg-demo-bench")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    clinseg = Path(sys.executable).parent / "clinseg"
    start = time.perf_counter()
    done = subprocess.run([str(clinseg), "demo", "--workdir", str(workdir)], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"demo failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    validation = re.search(r"validation Dice \(best epoch (\d+)\): mean ([\d.]+); (.*)", done.stdout)
    test = re.search(r"test-case Dice on the input grid: (.*)", done.stdout)
    print("| wall time (s) | ratio to 600 s budget | best epoch | validation Dice | test-case Dice (input grid) |")
    print("|---|---|---|---|---|")
    print(f"| {wall:.0f} | {wall / BUDGET_S:.2f} | {validation.group(1)} | mean {validation.group(2)}; "
          f"{validation.group(3)} | {test.group(1)} |")


if __name__ == "__main__":
    main()
