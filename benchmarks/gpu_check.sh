#!/usr/bin/env bash
# The transfer's GPU checks in one run, for a machine with one CUDA GPU, PyTorch and Triton (no
# install needed: the transfer modules import with plain torch):
#   1. the CUDA tests of the transfer (kernels against fp64 references, TransferNet on "triton"),
#      with each kernel's first block configuration (SML_TRITON_AUTOTUNE=0: no autotuning per
#      test shape);
#   2. benchmarks/gpu_transfer.py at 2M rows in 64k-row chunks, kernels autotuned (the first call
#      of each shape compiles every configuration: 151 compilations; the 139 distinct builds of
#      benchmarks/triton_kernels.py take 2.5 minutes on one core of a 2-core CPU machine).
# Results go to $OUT (default ./gpu_check): gpu.txt, tests.log, gpu_transfer.txt and .json.
# At most 9.5 minutes, one device call: the tests are capped at 3, the benchmark gets the rest.
#
#   bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_check}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee "$OUT/gpu.txt"
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
    | tee -a "$OUT/gpu.txt"

status=0
# Compiling the kernels for each test shape is most of the tests' time: compile in parallel.
XDIST=$("$PY" -c "import xdist" 2>/dev/null && echo "-n 8" || true)
SML_TRITON_AUTOTUNE=0 timeout 180 "$PY" -m pytest -q -p no:cacheprovider $XDIST \
    tests/sml_torchrec/modules/test_transfer_triton.py \
    tests/sml_torchrec/modules/test_transfer.py -k "cuda or triton" 2>&1 | tee "$OUT/tests.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

timeout $((570 - SECONDS)) "$PY" benchmarks/gpu_transfer.py --out "$OUT/gpu_transfer.json" 2>&1 \
    | grep -v '^{' | tee "$OUT/gpu_transfer.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
exit $status
