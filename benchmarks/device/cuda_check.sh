#!/usr/bin/env bash
# On a lent GPU machine (no network), from the repository root, with .whl/ carried (prepare.sh fills it):
# install into the image's Python, then `doctor`, the CUDA proof (cuda_check.py) and the test suite, whose
# engines offload every layer there (`--gpu-layers auto`). Output goes to $OUT (the device tool's folder).
# Usage: SIZES=tiny,medium benchmarks/device/cuda_check.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/cuda-check}
mkdir -p "$out"
python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --force-reinstall .whl/*.whl || exit 1
cublas=$(find /opt /usr/local /usr/lib -name 'libcublas.so.13' 2>/dev/null | head -1)
export LD_LIBRARY_PATH="${cublas%/*}:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export PYTHONUNBUFFERED=1
bin=$(python3 -c 'import sys, os; print(os.path.dirname(sys.executable))')
nvidia-smi --query-gpu=name,memory.total,memory.free,driver_version --format=csv | tee "$out/gpu.txt"
"$bin/synatra-local" doctor 2>&1 | tee "$out/doctor.txt"
python3 benchmarks/cuda_check.py --out "$out" --sizes "${SIZES:-tiny,medium}" 2>&1 | tee "$out/cuda_check.txt"
check=${PIPESTATUS[0]}
timeout "${TEST_TIMEOUT:-240}" "$bin/pytest" -q -p no:cacheprovider -x tests 2>&1 | tee "$out/pytest.txt"
tests=${PIPESTATUS[0]}
echo "cuda_check exit $check, pytest exit $tests"
[ "$check" = 0 ] && [ "$tests" = 0 ]
