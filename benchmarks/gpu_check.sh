#!/usr/bin/env bash
# The GPU check (issue 21 item 6), one script for the device machine (no network; torch 2.11+cu130, numpy, scipy,
# scikit-image, numba there, but no monai, ignite, nibabel, pydicom or SimpleITK): installs the wheels carried in
# .whl/, prints nvidia-smi and versions, runs benchmarks/bench_gpu.py under `timeout 470` (its parts are time-capped
# to finish in under 8 minutes on an H100) and leaves its tables, log and environment in $OUT.
#
# 1. Here (PyPI reachable), once: VENV=/path/to/the/project/.venv benchmarks/gpu_wheels.sh   (fills .whl/, 58 MiB)
# 2. Only when the device tool's `status` says can_start_another: true, from the checkout that the session sends
#    (the device copies that checkout's working tree, so this script must be in it), make the call
#      run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=540)
#    A second try needs another start; there is no time for a third within a 15-minute device budget.
# 3. Record: the files come back under the reply's files_at: gpu_results.md (the tables), gpu_log.txt, env.txt.
#    Paste gpu_results.md's tables into benchmarks/RESULTS.md under "## GPU check (issue 21)" with the command above,
#    the date, the GPU and driver from env.txt, and "split: none (synthetic tensors and phantom CT)". Every row is
#    already a ratio against its reference in the same run (float32, float32, CPU CLAHE, plain non-DDP training).
# Extra arguments go to bench_gpu.py (e.g. `--parts ab`).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out} SITE=${SITE:-/tmp/site}   # SITE: where the wheels are installed
mkdir -p "$OUT"
shopt -s nullglob
wheels=(.whl/*.whl)
if [ ${#wheels[@]} -eq 0 ]; then
  echo "gpu_check.sh: no wheels in $PWD/.whl: run benchmarks/gpu_wheels.sh here first and carry .whl" >&2
  exit 2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}" \
  || { echo "gpu_check.sh: installing the wheels in .whl failed" >&2; exit 2; }
export PYTHONPATH=$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 OUT
{
  nvidia-smi || echo "nvidia-smi: not available"
  python3 -c 'import sys, torch, monai, numpy; print("python", sys.version.split()[0], "torch", torch.__version__,
    "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "monai", monai.__version__, "numpy", numpy.__version__)'
} 2>&1 | tee "$OUT/env.txt"
timeout 470 python3 benchmarks/bench_gpu.py "$@" 2>&1 | tee "$OUT/gpu_log.txt"
rc=${PIPESTATUS[0]}
[ "$rc" -eq 124 ] && echo "gpu_check.sh: bench_gpu.py hit the 470 s timeout; $OUT/gpu_results.md holds the parts that finished"
exit "$rc"
