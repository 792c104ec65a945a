#!/usr/bin/env bash
# The one-call GPU check (docs/design.md, "GPU check"): build ncx in place for Hopper, run the
# CUDA tests, run the GPU benchmarks (coder, pipeline, integer M1, M2 training MFU), keep full
# logs in LOGDIR (argument, else $OUT, else ./gpu_logs) and print a short table last.
#
#   bash bench/gpu_check.sh [LOGDIR]
#   NCX_GPU_DRY_RUN=1 bash bench/gpu_check.sh LOGDIR   # CPU rehearsal (tests/test_gpu_check.py)
#
# Budget: well inside 8 minutes on an H100/H200, build included.
#
# Dry run (NCX_GPU_DRY_RUN=1): the same steps on the CPU with tiny sizes, so a mistake in this
# script or in the scripts it calls surfaces before GPU time is spent: no build (the in-place
# build is used as it is), no nvidia-smi, the CUDA tests only collected (pytest --collect-only:
# the files and their imports), gpu_bench.py and gpu_pipeline.py with --dry-run, the integer-M1
# comparison on the CPU with a few hundred bytes. A missing GPU never makes it fail; a broken
# step does. Its figures mean nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
LOG="${1:-${OUT:-gpu_logs}}"
mkdir -p "$LOG"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" NCX_CUDA=1 MAX_JOBS="${MAX_JOBS:-16}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
DRY="${NCX_GPU_DRY_RUN:-0}"
[ "$DRY" = 0 ] && DRY=""
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start ))s] $*"; }

if [ -n "$DRY" ]; then
  # One thread: on a shared CI machine, OpenMP threads that wait on each other slow tiny runs down many times.
  export OMP_NUM_THREADS=1
  stamp "DRY RUN on the CPU (NCX_GPU_DRY_RUN=$NCX_GPU_DRY_RUN): no build, no nvidia-smi, tiny sizes; figures mean nothing"
else
  stamp "device: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null)"
fi
stamp "python: $($PY -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__)')"

if [ -n "$DRY" ]; then
  stamp "build: skipped (dry run), the in-place build as it is"
  $PY -c "import ncx.ops, ncx._C as C; print('ncx imports; built with CUDA:', bool(getattr(C, 'WITH_CUDA', False)))" \
    > "$LOG/build.log" 2>&1
  build_rc=$?
  cat "$LOG/build.log"
  [ $build_rc = 0 ] || { stamp "ncx DOES NOT IMPORT"; exit 1; }
else
  stamp "build (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
  if ! $PY -m pip install --no-build-isolation --no-deps -e . > "$LOG/build.log" 2>&1; then
    tail -40 "$LOG/build.log"; stamp "BUILD FAILED"; exit 1
  fi
  # build_info names the int8 GEMM int_linear uses here (torch._int_mm if its probe passed).
  $PY -c "import ncx.ops, ncx._C as C; assert C.WITH_CUDA, 'built without CUDA'; print(ncx.ops.build_info())" \
    2>&1 | tee -a "$LOG/build.log"
fi

# Dry run: collect only (the files and their imports); the CPU tests run in CI anyway.
stamp "CUDA tests${DRY:+ (dry run: collected only)}"
# NCX_GPU_ARTIFACT_DIR: tests/test_int_m1.py leaves a dataset compressed on this GPU with an
# integer M1 there; commit it as tests/data/gpu_int_m1 and CI decodes it on a CPU.
NCX_GPU_ARTIFACT_DIR="$LOG/gpu_int_m1" $PY -m pytest -q -x ${DRY:+--collect-only} tests/test_cuda.py \
  tests/test_int_ops_cuda.py tests/test_int_m1.py ${NCX_GPU_EXTRA_TESTS:-} > "$LOG/tests.log" 2>&1
tests_rc=$?
# The window vocabulary built on the GPU == on the CPU (its other tests are CPU-only).
$PY -m pytest -q -x ${DRY:+--collect-only} -m cuda tests/test_window_vocab.py >> "$LOG/tests.log" 2>&1 || tests_rc=1
tail -5 "$LOG/tests.log"

stamp "GPU benchmarks${DRY:+ (dry run)}"
$PY bench/gpu_bench.py ${DRY:+--dry-run} --out "$LOG/gpu_bench.json" > "$LOG/bench.log" 2>&1
bench_rc=$?
pipe_rc=0
if [ -f bench/gpu_pipeline.py ]; then
  # --budget-s: each of its five stages stops between chunks once the next would end past this
  # (and is cut inside one at twice it), so the script takes about 2 minutes (3 at worst).
  stamp "pipeline throughput (M1 + coder)${DRY:+ (dry run)}"
  $PY bench/gpu_pipeline.py ${DRY:+--dry-run} --budget-s "${NCX_PIPELINE_BUDGET_S:-20}" \
    --out "$LOG/gpu_pipeline.json" > "$LOG/pipeline.log" 2>&1
  pipe_rc=$?
fi

trained=""
[ -f runs/m1-small-27min.safetensors ] && trained="--m1 runs/m1-small-27min.safetensors"
if [ -n "$DRY" ]; then
  stamp "integer vs float M1 coding (dry run: CPU twice, 256 bytes, 1 thread)"
  int_dev=cpu int_args="--threads 1 --bytes 256 --piece-bytes 128" int_threads=1
else
  stamp "integer vs float M1 coding (same text, CUDA then CPU)"
  int_dev=cuda int_args="--bytes 16384" int_threads=16
fi
$PY bench/int_m1_throughput.py $trained --device $int_dev --no-bpb $int_args --json "$LOG/int_m1_cuda.json" \
  > "$LOG/int_m1.log" 2>&1
int_cuda_rc=$?
$PY bench/int_m1_throughput.py $trained --device cpu --threads $int_threads --no-bpb $int_args \
  --json "$LOG/int_m1_cpu.json" >> "$LOG/int_m1.log" 2>&1
int_rc=$(( int_cuda_rc || $? ))  # either run failing counts (before, only the CPU run's status did)

# Last, so that a slow compile cannot cost the figures above: each preset stops at --time-limit.
stamp "M2 training tokens/s and MFU (25m, 113m)${DRY:+ (dry run: nano on the CPU)}"
timeout "${NCX_M2_TIMEOUT_S:-180}" $PY bench/m2_mfu.py ${DRY:+--dry-run} --steps 20 --time-limit 75 \
  --out "$LOG/m2_mfu.json" > "$LOG/m2_mfu.log" 2>&1
m2_rc=$?

stamp "done${DRY:+ (DRY RUN)}: tests rc=$tests_rc bench rc=$bench_rc pipeline rc=$pipe_rc int_m1 rc=$int_rc m2 rc=$m2_rc"
echo "==================== summary ===================="
tail -30 "$LOG/bench.log"
if [ -f "$LOG/pipeline.log" ]; then
  # The table from its first line on (or the log's tail if the script died before it).
  if grep -q "^ncx pipeline on" "$LOG/pipeline.log"; then
    sed -n '/^ncx pipeline on/,$p' "$LOG/pipeline.log"
  else
    tail -15 "$LOG/pipeline.log"
  fi
fi
grep -E "^(AC|EqualInfoAC)" "$LOG/int_m1.log"
if grep -q "^M2 training on" "$LOG/m2_mfu.log"; then sed -n '/^M2 training on/,$p' "$LOG/m2_mfu.log"; else tail -5 "$LOG/m2_mfu.log"; fi
exit $(( tests_rc || bench_rc || pipe_rc || int_rc || m2_rc ))
