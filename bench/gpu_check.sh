#!/usr/bin/env bash
# The one-call GPU check (shared/GPU.md): build ncx in place for Hopper, run the
# CUDA tests, run the GPU benchmarks, keep full logs in LOGDIR (argument, else
# $OUT, else ./gpu_logs) and print a short table last.
#
#   bash bench/gpu_check.sh [LOGDIR]
#
# Budget: well inside 8 minutes on an H100/H200, build included.
set -uo pipefail
cd "$(dirname "$0")/.."
LOG="${1:-${OUT:-gpu_logs}}"
mkdir -p "$LOG"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" NCX_CUDA=1 MAX_JOBS="${MAX_JOBS:-16}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start ))s] $*"; }

stamp "device: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null)"
stamp "python: $($PY -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__)')"

stamp "build (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
if ! $PY -m pip install --no-build-isolation --no-deps -e . > "$LOG/build.log" 2>&1; then
  tail -40 "$LOG/build.log"; stamp "BUILD FAILED"; exit 1
fi
$PY -c "import ncx.ops, ncx._C as C; assert C.WITH_CUDA, 'built without CUDA'; print('ncx built with CUDA')" \
  2>&1 | tee -a "$LOG/build.log"

stamp "CUDA tests"
# NCX_GPU_ARTIFACT_DIR: tests/test_int_m1.py leaves a dataset compressed on this GPU with an
# integer M1 there; commit it as tests/data/gpu_int_m1 and CI decodes it on a CPU.
NCX_GPU_ARTIFACT_DIR="$LOG/gpu_int_m1" $PY -m pytest -q -x tests/test_cuda.py tests/test_int_ops_cuda.py \
  tests/test_int_m1.py ${NCX_GPU_EXTRA_TESTS:-} > "$LOG/tests.log" 2>&1
tests_rc=$?
tail -5 "$LOG/tests.log"

stamp "GPU benchmarks"
$PY bench/gpu_bench.py --out "$LOG/gpu_bench.json" > "$LOG/bench.log" 2>&1
bench_rc=$?
if [ -f bench/gpu_pipeline.py ]; then
  stamp "pipeline throughput (M1 + coder)"
  $PY bench/gpu_pipeline.py --out "$LOG/gpu_pipeline.json" > "$LOG/pipeline.log" 2>&1
fi

stamp "integer vs float M1 coding (same text, CUDA then CPU)"
trained=""
[ -f runs/m1-small-27min.safetensors ] && trained="--m1 runs/m1-small-27min.safetensors"
$PY bench/int_m1_throughput.py $trained --device cuda --no-bpb --bytes 16384 --json "$LOG/int_m1_cuda.json" \
  > "$LOG/int_m1.log" 2>&1
$PY bench/int_m1_throughput.py $trained --device cpu --threads 16 --no-bpb --bytes 16384 --json "$LOG/int_m1_cpu.json" \
  >> "$LOG/int_m1.log" 2>&1
int_rc=$?

stamp "done: tests rc=$tests_rc bench rc=$bench_rc int_m1 rc=$int_rc"
echo "==================== summary ===================="
tail -30 "$LOG/bench.log"
[ -f "$LOG/pipeline.log" ] && tail -15 "$LOG/pipeline.log"
grep -E "^(AC|EqualInfoAC)" "$LOG/int_m1.log"
exit $(( tests_rc || bench_rc || int_rc ))
