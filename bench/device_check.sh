#!/usr/bin/env bash
# The GPU checks in one call on a lent machine (its python3 holds torch + CUDA):
# build for sm_90, run every GPU test, then the CUDA benchmarks. Each stage has its
# own time limit so that one slow stage cannot eat the others' time. Everything
# lands in $OUT (at most 8 files come back): logs, and the results folder as a tarball.
#   usage: bash bench/device_check.sh COMMIT
# HPSGD_CHECK_OPS_TESTS / HPSGD_CHECK_RUN_TESTS (test files, empty for none) and
# HPSGD_CHECK_BENCH (a subset of: kernels comm hook step-overlap probe profile) narrow a rerun;
# HPSGD_CHECK_TEST_LIMIT, HPSGD_CHECK_BENCH_LIMIT and HPSGD_CHECK_TEST_TIMEOUT (per
# test) shorten its stages (seconds); HPSGD_CHECK_RUN_WORKERS runs the runtime tests
# on that many workers (default 1: they time the host).
set -u
OUT=${OUT:?set OUT to a folder for the logs}
export HPSGD_COMMIT=${1:-unknown} PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${MAX_JOBS:-16}
# A stage past its limit gets SIGABRT: Python's fault handler then prints every
# thread's stack into the log (where it hung), before the SIGKILL 5 s later.
export PYTHONFAULTHANDLER=1
PY=${PY:-python3}
RES=$(mktemp -d)
summary() { echo "$*" | tee -a "$OUT/summary.txt"; }
stage() {  # stage NAME SECONDS LOG COMMAND...
    local name=$1 secs=$2 log=$3; shift 3
    local t0=$SECONDS
    timeout -s ABRT -k 5 "$secs" "$@" >>"$OUT/$log" 2>&1
    local rc=$?
    summary "$(printf '%-14s rc=%-3s %4ss  (limit %ss, log %s)' "$name" "$rc" $((SECONDS - t0)) "$secs" "$log")"
    return $rc
}

{ date -u +%FT%TZ; echo "commit $HPSGD_COMMIT"; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
  $PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(), "nccl", torch.cuda.nccl.version())'
  nvcc --version | tail -2; nproc; } >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

stage build 180 build.log $PY setup.py -q build_ext --inplace || { tail -40 "$OUT/build.log"; exit 1; }
$PY -c 'import hpsgd_ext as h; print("built: cuda", h.built_with_cuda(), "nccl", h.built_with_nccl())' | tee -a "$OUT/summary.txt"

# -v: each test's name and verdict as it ends (a crash or a hang then has a name);
# the thread method dumps the stacks and ends a test stuck in C code too.
# A test still running 5 s before its limit has every thread's stack printed by
# pytest's fault handler to the worker's real stderr (the log): the timeout's own
# dump goes to a captured stream that an xdist worker loses.
TT=${HPSGD_CHECK_TEST_TIMEOUT:-60}
PYT="$PY -m pytest -p no:cacheprovider -v -rfEs --timeout $TT --timeout-method thread -o faulthandler_timeout=$((TT - 5))"
# Tests that measure something write it here too (an xdist worker's stdout is lost).
export HPSGD_BENCH_OUT=$RES
# In worker processes (pytest-xdist): a test that crashes the interpreter is
# reported as failed and the rest still run. The kernel tests time nothing and run
# on 3 workers; the runtime tests time the host and the streams, so one at a time,
# with -s so that a timed-out test's stack dump reaches the log. The two groups run
# side by side: the runtime tests' bounds are on the host's time or far above a
# shared GPU's slowdown, and the device time saved is what a lease is short of.
OPS_TESTS=${HPSGD_CHECK_OPS_TESTS-"tests/test_ops.py tests/test_ops_gpu.py tests/test_ops_layouts.py tests/test_ops_errors.py tests/test_ops_opcheck.py tests/test_ops_verdict.py tests/test_ops_quantized.py tests/test_ops_quant_sum.py"}
RUN_TESTS=${HPSGD_CHECK_RUN_TESTS-"tests/test_hook_gpu.py tests/test_hook_gpu_multiprocess.py tests/test_comm_gpu.py tests/test_quantized_comm.py tests/test_quantized_comm_multiprocess.py"}
LIMIT=${HPSGD_CHECK_TEST_LIMIT:-180}
# shellcheck disable=SC2086
[ -n "$OPS_TESTS" ] && stage tests-ops "$LIMIT" tests-ops.log \
    $PYT -n 3 --max-worker-restart 100 -m gpu $OPS_TESTS &
# shellcheck disable=SC2086
[ -n "$RUN_TESTS" ] && stage tests-runtime "$LIMIT" tests-runtime.log \
    $PYT -s -n "${HPSGD_CHECK_RUN_WORKERS:-1}" --max-worker-restart 100 -m gpu --durations 20 $RUN_TESTS &
wait
cat "$OUT"/tests-*.log 2>/dev/null | grep -E "^(FAILED|ERROR)|(passed|failed).* in " | tail -25 | tee -a "$OUT/summary.txt"
[ -z "${HPSGD_CHECK_BENCH:-}" ] && stage bench-suite 45 tests-ops.log $PYT -k cuda bench --benchmark-disable

B="$PY -m hpsgd_ext.bench"
for b in ${HPSGD_CHECK_BENCH:-kernels comm hook step-overlap}; do
    case $b in
    kernels) stage kernels "${HPSGD_CHECK_BENCH_LIMIT:-60}" bench.log $B kernels --device cuda --out "$RES" ;;
    comm) stage comm "${HPSGD_CHECK_BENCH_LIMIT:-40}" bench.log $B comm --device cuda --max-bytes 256M --out "$RES" ;;
    hook) stage hook "${HPSGD_CHECK_BENCH_LIMIT:-60}" bench.log $B hook --device cuda --repeats 500 --out "$RES" ;;
    step-overlap) stage step-overlap "${HPSGD_CHECK_BENCH_LIMIT:-40}" bench.log $B step-overlap --device cuda --out "$RES" ;;
    # Access patterns for the kernel (bench/cuda/stream_probe.cu), and where the
    # host's time goes at a boundary (bench/profile_host.py).
    probe) stage probe "${HPSGD_CHECK_BENCH_LIMIT:-60}" bench.log bash -c \
        "nvcc -O3 -std=c++17 -arch=sm_90 -o $RES/stream_probe bench/cuda/stream_probe.cu && $RES/stream_probe | tee $RES/stream-probe.txt && rm $RES/stream_probe" ;;
    profile) stage profile "${HPSGD_CHECK_BENCH_LIMIT:-60}" bench.log env PYTHONPATH=. $PY bench/profile_host.py --out "$RES" ;;
    *) summary "unknown benchmark $b" ;;
    esac
done
tar czf "$OUT/results.tgz" -C "$RES" .
for f in "$RES"/*.txt; do echo "== $(basename "$f")"; cat "$f"; done | tail -c 6000
echo; cat "$OUT/summary.txt"
