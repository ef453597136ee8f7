#!/usr/bin/env bash
# Downloads into .whl/ (git-ignored) the wheels that benchmarks/gpu_check.sh installs on the GPU machine, which has
# no network and lacks these packages: exactly what benchmarks/bench_gpu.py imports beyond that machine's image
# (tests/test_gpu_check.py checks this list against a run that may import nothing else). Python 3.12, x86-64,
# versions pinned to the ones installed in the project's virtual environment ($VENV, default ./.venv).
#   VENV=/path/to/.venv benchmarks/gpu_wheels.sh      # prints the total size (the device takes 64 MiB in all)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PACKAGES="monai pytorch-ignite nibabel pydicom simpleitk"

exclude=$(git rev-parse --git-path info/exclude)   # .whl/ must not travel as untracked files, only as `carry`
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
freeze=$("$VENV/bin/python" -m pip freeze)
pins=()
for name in $PACKAGES; do
  pin=$(grep -i "^${name}==" <<<"$freeze") || { echo "gpu_wheels.sh: $name is not installed in $VENV" >&2; exit 1; }
  pins+=("$pin")
done
rm -rf .whl && mkdir .whl
"$VENV/bin/python" -m pip download -q -d .whl --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 "${pins[@]}"
ls -1 .whl
du -sh .whl
