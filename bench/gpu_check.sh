#!/usr/bin/env bash
# The GPU check in one call of at most 9 minutes: the standalone CUDA kernel
# check, the extension build (in the background, overlapping it), the GPU
# tests in priority order, then the benchmark with the time that is left.
#
#   bash bench/gpu_check.sh OUTDIR              # on a GPU machine
#   bash bench/gpu_check.sh --quick OUTDIR      # the quick standalone check and benchmark
#   bash bench/gpu_check.sh --dry OUTDIR        # no GPU: every step's CPU-side part
#   bash bench/gpu_check.sh --cheap OUTDIR      # --dry, each step cut to seconds (tests)
#
# Steps, in order (each appends to its file in OUTDIR as it goes, so a run
# stopped at its limit still leaves what ran):
#   cuda_check    bash dev/cuda/check.sh (no torch)           -> cuda_check.txt
#   build         setup.py build_ext --inplace, in the background from the
#                 start, for the local GPU only                -> build.txt
#   tests_cuda    cuda backend correctness (pytest -k cuda-cuda)
#   tests_triton  Triton fp16/bf16 correctness
#   tests_guards  device and stream guards (tests/test_device_guards.py)
#   tests_graphs  CUDA graph capture and replay
#   tests_syncs   no host synchronisation in a swapped model   -> tests.txt
#   bench         python -m fastattn.bench (GPU; --quick when the time left
#                 is short)                                    -> bench.txt,
#                 bench.json, bench.md, attention.png
# and summary.txt: the environment, then one row per step (step, status,
# seconds, detail), rewritten after every step and printed at the end.
# OUTDIR receives these 8 files and no others (files of these names left
# there by an earlier run are removed first).
#
# Status of a step: ok; FAIL (a test or check failed, a build error);
# timeout (stopped at its time limit); all-skipped (pytest ran but passed
# nothing, e.g. the cuda backend is unavailable); none-selected; no-time
# (the budget left too little to start it); skipped (not applicable here);
# running (it was running when the run was stopped); pending (never
# reached). Exit status 0 if every step
# is ok, else 1; 2 for bad arguments.
#
# The budget: TOTAL_BUDGET = 540 s, or GPU_CHECK_BUDGET seconds (at most
# 540). Every step runs under `timeout` with its cap or what the budget
# leaves once the steps behind it have their minimum, whichever is less.
#
# Environment: GPU_CHECK_BUDGET, GPU_CHECK_DRY=1 (as --dry), GPU_CHECK_QUICK=1
# (as --quick), GPU_CHECK_CHEAP=1 (as --cheap), GPU_CHECK_JOBS (parallel
# compile jobs, default: the cores, at most 32), PYTHON (default python3),
# FASTATTN_COMMIT (the commit to record when the copy has no .git).
# Wheels in .whl/ (for peers such as liger-kernel) are installed offline
# into /tmp/fastattn-site first and put on PYTHONPATH.
set -uo pipefail

usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
}

MAX_BUDGET=540
DRY=${GPU_CHECK_DRY:-0}
QUICK=${GPU_CHECK_QUICK:-0}
CHEAP=${GPU_CHECK_CHEAP:-0}
OUTDIR=""
for arg in "$@"; do
    case "$arg" in
        --dry) DRY=1 ;;
        --quick) QUICK=1 ;;
        --cheap) CHEAP=1 ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "gpu_check.sh: unknown option $arg" >&2; usage >&2; exit 2 ;;
        *)
            if [ -n "$OUTDIR" ]; then echo "gpu_check.sh: one OUTDIR only" >&2; exit 2; fi
            OUTDIR=$arg ;;
    esac
done
[ "$CHEAP" = 1 ] && DRY=1
if [ -z "$OUTDIR" ]; then usage >&2; exit 2; fi
BUDGET=${GPU_CHECK_BUDGET:-$MAX_BUDGET}
if ! [[ "$BUDGET" =~ ^[0-9]+$ ]]; then
    echo "gpu_check.sh: GPU_CHECK_BUDGET must be a whole number of seconds" >&2
    exit 2
fi
[ "$BUDGET" -gt "$MAX_BUDGET" ] && BUDGET=$MAX_BUDGET

START=$(date +%s)
mkdir -p "$OUTDIR" || exit 2
OUTDIR=$(cd "$OUTDIR" && pwd)
cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)
PY=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || exit 2
mkdir -p "$WORK/rows"
OUT_FILES=(summary.txt cuda_check.txt build.txt tests.txt bench.txt bench.json bench.md
           attention.png)
for f in "${OUT_FILES[@]}"; do rm -f "$OUTDIR/$f"; done
STEPS=(cuda_check build tests_cuda tests_triton tests_guards tests_graphs tests_syncs bench)

CORES=$(nproc 2>/dev/null || echo 2)
JOBS=${GPU_CHECK_JOBS:-$CORES}
[ "$JOBS" -gt 32 ] && JOBS=32
if [ "$CHEAP" = 1 ]; then MIN_STEP=2; GRACE=5; else MIN_STEP=10; GRACE=15; fi
# The least time the benchmark is started with (steps before it leave it this).
BENCH_MIN=75
[ "$DRY" = 1 ] && BENCH_MIN=20
[ "$CHEAP" = 1 ] && BENCH_MIN=12
MODE=gpu
[ "$DRY" = 1 ] && MODE=dry
[ "$CHEAP" = 1 ] && MODE="dry (cheap)"

export PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [ "$DRY" = 1 ]; then
    # The Triton kernels run in the interpreter on CPU tensors (the tests' conftest does the same).
    export TRITON_INTERPRET=1
fi

elapsed() { echo $(( $(date +%s) - START )); }
left() { echo $(( BUDGET - $(elapsed) )); }
say() { printf '[gpu_check %3ds] %s\n' "$(elapsed)" "$*"; }

# step_time CAP RESERVE [FLOOR]: the seconds a step may run: its cap, or the
# budget left after RESERVE seconds kept for the steps behind it; if that is
# under MIN_STEP, what is left above FLOOR (an earlier step goes before the
# minimums of later ones); 0 if still under MIN_STEP.
step_time() {
    local t
    t=$(( $(left) - $2 ))
    if [ "$t" -lt "$MIN_STEP" ] && [ -n "${3:-}" ]; then t=$(( $(left) - $3 )); fi
    [ "$t" -gt "$1" ] && t=$1
    if [ "$t" -lt "$MIN_STEP" ]; then echo 0; else echo "$t"; fi
}

# record STEP STATUS SECONDS DETAIL: the step's row, then summary.txt rewritten.
record() {
    printf '%s\t%s\t%s\n' "$2" "$3" "$4" > "$WORK/rows/$1.tmp" && mv "$WORK/rows/$1.tmp" "$WORK/rows/$1"
    write_summary
}

write_summary() {
    local s status secs detail
    {
        cat "$WORK/env.txt" 2>/dev/null
        echo
        printf '%-13s %-13s %7s  %s\n' step status seconds detail
        for s in "${STEPS[@]}"; do
            if [ -f "$WORK/rows/$s" ]; then
                IFS=$'\t' read -r status secs detail < "$WORK/rows/$s"
            else
                status=pending secs=- detail=""
            fi
            printf '%-13s %-13s %7s  %s\n' "$s" "$status" "$secs" "$detail"
        done
        echo "total: $(elapsed) s of a $BUDGET s budget (mode: $MODE)"
    } > "$WORK/summary.$BASHPID" 2>/dev/null && mv "$WORK/summary.$BASHPID" "$OUTDIR/summary.txt"
}

# Every command runs under `timeout`, through a Python exec wrapper that
# puts SIGINT back to its default first: commands started in the background
# by a non-interactive shell inherit SIGINT ignored (bash cannot undo that),
# and `timeout -s INT` must reach Python as KeyboardInterrupt (pytest then
# prints its summary, the benchmark writes its partial results). The
# command runs in the background and is waited for, so a signal to this
# script is handled at once (on_signal stops what runs).
RESET_SIGINT='import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
os.execvp(sys.argv[1], sys.argv[1:])'

# run_limited SIGNAL SECONDS FILE CMD...: CMD under timeout, output appended to FILE.
run_limited() {
    local sig=$1 t=$2 file=$3 pid rc
    shift 3
    timeout -s "$sig" -k "$GRACE" "$t" "$PY" -c "$RESET_SIGINT" "$@" >> "$file" 2>&1 < /dev/null &
    pid=$!
    echo "$pid" > "$WORK/pid.$BASHPID"
    wait "$pid"
    rc=$?
    rm -f "$WORK/pid.$BASHPID"
    return $rc
}

status_of_rc() {
    case "$1" in
        0) echo ok ;;
        124|137) echo timeout ;;
        *) echo FAIL ;;
    esac
}

header() {  # header FILE TEXT: a line that opens a step in its file
    printf '\n===== [%ds] %s\n' "$(elapsed)" "$2" >> "$1"
}

BG_PID=""
on_signal() {
    trap '' INT TERM
    say "stopped by a signal: stopping the running steps, writing the summary"
    local f
    for f in "$WORK"/pid.*; do
        [ -f "$f" ] && kill -TERM "$(cat "$f")" 2>/dev/null
    done
    [ -n "$BG_PID" ] && kill -TERM "$BG_PID" 2>/dev/null
    write_summary
    cat "$OUTDIR/summary.txt" 2>/dev/null
    rm -rf "$WORK"
    exit 1
}
trap on_signal INT TERM

# ------------------------------------------------------------ environment
if [ -z "${FASTATTN_COMMIT:-}" ]; then
    FASTATTN_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [ "$FASTATTN_COMMIT" != unknown ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
        FASTATTN_COMMIT="$FASTATTN_COMMIT+uncommitted-changes"
    fi
fi
export FASTATTN_COMMIT
{
    echo "gpu_check: mode $MODE, budget $BUDGET s, $CORES cores, $JOBS compile jobs"
    echo "date: $(date -Iseconds)"
    echo "commit: $FASTATTN_COMMIT"
    if [ "$DRY" = 0 ]; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,compute_cap \
            --format=csv 2>&1 | sed 's/^/nvidia-smi: /'
    fi
    command -v nvcc >/dev/null 2>&1 && nvcc --version | tail -n 2 | head -n 1 | sed 's/^/nvcc: /'
    timeout 60 "$PY" - <<'EOF' 2>&1
import platform
import torch
line = f"python {platform.python_version()} | torch {torch.__version__} | cuda {torch.version.cuda}"
try:
    import triton
    line += f" | triton {triton.__version__}"
except ImportError:
    line += " | triton not installed"
print(line)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"gpu: {p.name} | capability {p.major}.{p.minor} | {p.multi_processor_count} SMs | "
          f"{p.total_memory / 2**30:.0f} GiB")
EOF
} > "$WORK/env.txt"
write_summary
say "mode $MODE, budget ${BUDGET}s, results in $OUTDIR"
if [ "$DRY" = 0 ] && ! command -v nvidia-smi >/dev/null 2>&1; then
    say "nvidia-smi not found: is this a GPU machine? (--dry runs the CPU-side parts)"
fi

if ls .whl/*.whl >/dev/null 2>&1; then
    say "installing the wheels of .whl/ into /tmp/fastattn-site"
    header "$OUTDIR/build.txt" "wheels from .whl/"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/fastattn-site \
        .whl/*.whl >> "$OUTDIR/build.txt" 2>&1 || say "wheel install failed (continuing without them)"
    export PYTHONPATH="$PYTHONPATH:/tmp/fastattn-site"
fi

# ------------------------------------------------------------ build (background)
# The local GPU's architecture only (sm_90a on Hopper), to keep the build short.
ARCH=""
if [ "$DRY" = 0 ]; then
    ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' ')
    [ -n "$ARCH" ] || ARCH=$(timeout 60 "$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null)
    [ "$ARCH" = 9.0 ] && ARCH=9.0a
fi

build_step() {
    local file="$OUTDIR/build.txt" t0 t rc status detail kernels cuda
    t0=$(date +%s)
    if [ "$DRY" = 1 ]; then
        # No CUDA build on a machine without a GPU: the kernels this
        # checkout already has (none are built: FASTATTN_JIT=0), as reported.
        header "$file" "build: dry, not built; FASTATTN_JIT=0 python -m fastattn.info"
        t=$(step_time 60 0)
        if [ "$t" = 0 ]; then record build no-time 0 ""; return; fi
        record build running - "limit ${t}s"
        FASTATTN_JIT=0 run_limited INT "$t" "$file" "$PY" -m fastattn.info
        rc=$?
        kernels=$(grep -m 1 '^compiled kernels' "$file" | sed 's/^compiled kernels *//')
        record build "$(status_of_rc $rc)" $(( $(date +%s) - t0 )) "dry: not built; kernels here: ${kernels:-?}"
        return
    fi
    t=$(step_time 330 0)
    if [ "$t" = 0 ]; then record build no-time 0 ""; return; fi
    record build running - "limit ${t}s"
    header "$file" "build: MAX_JOBS=$JOBS TORCH_CUDA_ARCH_LIST=${ARCH:-default} FASTATTN_FORCE_CUDA_BUILD=1 python setup.py build_ext --inplace (limit ${t}s)"
    # setup.py prints the full compiler output (a first-use build shows only
    # its last line on failure); the tests then load fastattn._C.
    MAX_JOBS=$JOBS TORCH_CUDA_ARCH_LIST="${ARCH:-9.0a}" FASTATTN_FORCE_CUDA_BUILD=1 \
        run_limited TERM "$t" "$file" "$PY" setup.py build_ext --inplace
    rc=$?
    status=$(status_of_rc $rc)
    header "$file" "python -m fastattn.info"
    FASTATTN_JIT=0 timeout -k 5 60 "$PY" -m fastattn.info >> "$file" 2>&1 < /dev/null
    kernels=$(grep -m 1 '^compiled kernels' "$file" | sed 's/^compiled kernels *//')
    cuda=$(grep -m 1 '^cuda: attention' "$file" | sed 's/^cuda: attention *//')
    detail="arch ${ARCH:-?}; kernels: ${kernels:-?}; cuda attention: ${cuda:-?}"
    if [ "$status" = ok ] && [ "$cuda" != available ]; then status=FAIL; fi
    record build "$status" $(( $(date +%s) - t0 )) "$detail"
}
say "build: started in the background (log: build.txt)"
build_step &
BG_PID=$!

# ------------------------------------------------------------ standalone CUDA check
cuda_check_step() {
    local file="$OUTDIR/cuda_check.txt" t0 t rc args=() last
    t0=$(date +%s)
    if ! command -v "${NVCC:-nvcc}" >/dev/null 2>&1; then
        header "$file" "cuda_check: nvcc not found"
        record cuda_check skipped 0 "nvcc not found"
        return
    fi
    if [ "$DRY" = 1 ]; then
        args=(--dry --quick)
        # --cheap: a dozen cases (the build is still the cached one, if fresh).
        [ "$CHEAP" = 1 ] && args+=(--filter L17x9)
        t=$(step_time "$([ "$CHEAP" = 1 ] && echo 30 || echo 240)" 60 "$BENCH_MIN")
    else
        # Reserve: a minimum for the tests and the benchmark behind it.
        t=$(step_time 240 150 "$BENCH_MIN")
        if [ "$QUICK" = 1 ] || [ "$t" -lt 180 ]; then args=(--quick); fi
    fi
    if [ "$t" = 0 ]; then record cuda_check no-time 0 ""; return; fi
    record cuda_check running - "limit ${t}s"
    say "cuda_check: bash dev/cuda/check.sh ${args[*]} (limit ${t}s)"
    header "$file" "JOBS=$JOBS bash dev/cuda/check.sh ${args[*]} (limit ${t}s)"
    JOBS=$JOBS run_limited INT "$t" "$file" bash dev/cuda/check.sh "${args[@]}"
    rc=$?
    last=$(grep -E '^[0-9]+ cases, ' "$file" | tail -n 1)
    record cuda_check "$(status_of_rc $rc)" $(( $(date +%s) - t0 )) "${args[*]:+${args[*]}: }${last:-rc $rc}"
}
cuda_check_step

# ------------------------------------------------------------ wait for the build
if [ -n "$BG_PID" ]; then
    say "waiting for the build"
    wait "$BG_PID"
    BG_PID=""
fi
BUILD_STATUS=$(cut -f1 "$WORK/rows/build" 2>/dev/null)
say "build: ${BUILD_STATUS:-?}"
# Whatever happened, no test process may start a build of its own on first use.
export FASTATTN_JIT=0

# ------------------------------------------------------------ GPU tests
TESTS_FILE="$OUTDIR/tests.txt"

# pytest_step STEP CAP REMAINING_TEST_STEPS PYTEST_ARGS...
pytest_step() {
    local step=$1 cap=$2 after=$3 t0 t rc before out last status
    shift 3
    t0=$(date +%s)
    t=$(step_time "$cap" $(( BENCH_MIN + after * MIN_STEP * 2 )) "$BENCH_MIN")
    if [ "$t" = 0 ]; then record "$step" no-time 0 ""; return; fi
    record "$step" running - "limit ${t}s"
    local args=(-q -rfE --tb=short -p no:cacheprovider "$@")
    [ "$DRY" = 1 ] && args+=(--collect-only)
    say "$step: pytest ${*} (limit ${t}s)"
    header "$TESTS_FILE" "$step: python -m pytest ${args[*]} (limit ${t}s)"
    before=$(wc -l < "$TESTS_FILE")
    run_limited INT "$t" "$TESTS_FILE" "$PY" -m pytest "${args[@]}"
    rc=$?
    out=$(tail -n +"$((before + 1))" "$TESTS_FILE")
    last=$(printf '%s\n' "$out" | grep -E '(passed|failed|skipped|errors?|collected|deselected|no tests ran).* in [0-9.]+s' \
           | tail -n 1 | sed 's/=//g; s/^ *//; s/ *$//')
    case "$rc" in
        0) if [ "$DRY" = 1 ] || printf '%s' "$last" | grep -q passed; then status=ok; else status=all-skipped; fi ;;
        1) status=FAIL ;;
        5) status=none-selected ;;
        124|137) status=timeout ;;
        *) status=FAIL ;;
    esac
    if [ "$DRY" = 1 ] && [ "$status" = ok ]; then last="dry: $last"; fi
    record "$step" "$status" $(( $(date +%s) - t0 )) "${last:-rc $rc}"
}

# In priority order; the CAP of each, and a minimum kept for those behind it.
pytest_step tests_cuda 100 4 tests -m "gpu and not slow" -k "cuda-cuda"
pytest_step tests_triton 120 3 tests -m "not slow" \
    -k "(triton-cuda or test_triton_variants) and (float16 or bfloat16)"
pytest_step tests_guards 45 2 tests/test_device_guards.py -m "gpu and not slow"
pytest_step tests_graphs 45 1 tests/test_compile_dynamic.py -k cuda_graph
pytest_step tests_syncs 45 0 tests/models/test_hf_dropin.py -k "never_syncs or reads_no_more_values"

# ------------------------------------------------------------ benchmark
bench_step() {
    local file="$OUTDIR/bench.txt" t0 t rc args minutes last f what
    t0=$(date +%s)
    t=$(( $(left) - 5 ))
    if [ "$t" -lt "$BENCH_MIN" ]; then record bench no-time 0 "${t}s left"; return; fi
    if [ "$CHEAP" = 1 ]; then
        args=(--device cpu --quick --op layernorm --peers torch --modes fwd --no-plots)
    elif [ "$DRY" = 1 ]; then
        args=(--device cpu --quick --op all)
    elif [ "$QUICK" = 1 ] || [ "$t" -lt 240 ]; then
        args=(--device cuda --quick --op all)
    else
        args=(--device cuda --op all)
    fi
    what="${args[*]}"
    record bench running - "limit ${t}s"
    # Shapes not started by --max-minutes are left out (noted); the rest of
    # the limit is for the ceilings at the start and the plots and files at the end.
    minutes=$("$PY" -c "print(round(max(0.05, ($t - max(8, $t * 0.2)) / 60), 2))")
    args+=(--max-minutes "$minutes" --out "$WORK/bench")
    say "bench: python -m fastattn.bench ${args[*]} (limit ${t}s)"
    header "$file" "python -m fastattn.bench ${args[*]} (limit ${t}s)"
    run_limited INT "$t" "$file" "$PY" -m fastattn.bench "${args[@]}"
    rc=$?
    # Of the plots, attention.png only: 8 files in all come back.
    local copied=""
    for f in bench.json bench.md attention.png; do
        if [ -f "$WORK/bench/$f" ]; then cp "$WORK/bench/$f" "$OUTDIR/$f"; copied="$copied $f"; fi
    done
    last=$(grep -E '^wrote .* \([0-9.]+ s\)$' "$file" | tail -n 1 | sed -E 's/.*\(([0-9.]+ s)\)$/\1 measured/')
    last="${copied:+kept$copied; }${last}"
    if [ "$rc" = 1 ]; then last="correctness FAIL rows (see bench.txt); $last"; fi
    record bench "$(status_of_rc $rc)" $(( $(date +%s) - t0 )) "$what --max-minutes $minutes; ${last:-rc $rc}"
}
bench_step

# ------------------------------------------------------------ summary
write_summary
echo
cat "$OUTDIR/summary.txt"
echo "files in $OUTDIR: $(cd "$OUTDIR" && ls | tr '\n' ' ')"
rc=0
for s in "${STEPS[@]}"; do
    [ "$(cut -f1 "$WORK/rows/$s" 2>/dev/null)" = ok ] || rc=1
done
rm -rf "$WORK"
exit $rc
