#!/usr/bin/env bash
# One call on a GPU machine: build the extension, run the GPU tests, run the
# full benchmark; everything lands in RESULTS_DIR, in under 9 minutes.
#
#   bash bench/gpu_check.sh RESULTS_DIR
#
# RESULTS_DIR receives at most 10 plain files:
#   env.txt        GPU, driver, versions, commit, build summary
#   log.txt        build output, test output, benchmark console output
#   bench.json     every figure with its environment (bench/report.py)
#   bench.md       the markdown tables
#   attention.png  cross.png  decode.png  layernorm.png  memory.png  model.png
#                  (if matplotlib is there)
# Copy the folder to bench/results/<date>_<gpu>_<commit>/ to commit a run.
#
# Optional: wheels in .whl/ (for peers such as liger-kernel, or matplotlib)
# are installed offline into /tmp/fastattn-site and put on PYTHONPATH.
# FASTATTN_COMMIT names the commit when the checkout has no .git folder.
set -uo pipefail

RESULTS=${1:?usage: bash bench/gpu_check.sh RESULTS_DIR}
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
START=$(date +%s)
TOTAL_BUDGET=540          # 9 minutes for the whole script
LOG="$RESULTS/log.txt"
ENV="$RESULTS/env.txt"
: > "$LOG"

elapsed() { echo $(( $(date +%s) - START )); }
say() { echo "[gpu_check $(elapsed)s] $*" | tee -a "$LOG"; }

# ------------------------------------------------------------ environment
if [ -z "${FASTATTN_COMMIT:-}" ]; then
    FASTATTN_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
fi
export FASTATTN_COMMIT
{
    echo "date: $(date -Iseconds)"
    echo "commit: $FASTATTN_COMMIT"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
    "$PY" - <<'EOF' 2>&1
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda)
try:
    import triton; print("triton", triton.__version__)
except ImportError:
    print("triton not installed")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, "| capability", f"{p.major}.{p.minor}", "| SMs", p.multi_processor_count)
EOF
    echo "cpu cores: $(nproc)"
} > "$ENV"

if ls .whl/*.whl >/dev/null 2>&1; then
    say "installing wheels from .whl/ into /tmp/fastattn-site"
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/fastattn-site .whl/*.whl >> "$LOG" 2>&1 \
        || say "wheel install failed (continuing without them)"
    export PYTHONPATH="/tmp/fastattn-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"

# ------------------------------------------------------------ build (<= 5 min)
# Only the local GPU's architecture, to keep the build short (sm_90a on Hopper).
ARCH=$("$PY" -c "import torch; c = torch.cuda.get_device_capability(); print(f'{c[0]}.{c[1]}' + ('a' if c == (9, 0) else ''))" 2>>"$LOG")
say "building fastattn._C for TORCH_CUDA_ARCH_LIST=${ARCH:-default} with $(nproc) jobs"
if timeout 300 env MAX_JOBS="$(nproc)" TORCH_CUDA_ARCH_LIST="${ARCH:-9.0}" FASTATTN_FORCE_CUDA_BUILD=1 \
        "$PY" setup.py build_ext --inplace >> "$LOG" 2>&1; then
    say "build ok"
    echo "build: ok (arch ${ARCH}, $(elapsed)s)" >> "$ENV"
else
    say "build FAILED or timed out (see above); continuing with Triton only"
    echo "build: FAILED (arch ${ARCH})" >> "$ENV"
fi
"$PY" -c "import fastattn, json; print(json.dumps(fastattn.backends(), indent=1))" >> "$ENV" 2>&1

# ------------------------------------------------------------ tests (<= 2.5 min)
TEST_BUDGET=$(( 150 < TOTAL_BUDGET - $(elapsed) - 120 ? 150 : TOTAL_BUDGET - $(elapsed) - 120 ))
if [ "$TEST_BUDGET" -gt 20 ]; then
    # The compute-sanitizer test (marked slow, minutes) has a call of its own:
    #   python -m pytest tests/test_sanitizer.py -m gpu
    say "GPU tests (pytest -m 'gpu and not slow'), ${TEST_BUDGET}s budget"
    timeout -s INT -k 10 "$TEST_BUDGET" "$PY" -m pytest tests -q -m "gpu and not slow" -rs \
        -p no:cacheprovider \
        >> "$LOG" 2>&1
    rc=$?
    echo "gpu tests: exit $rc (124 = timed out)" >> "$ENV"
    say "GPU tests exit code $rc"
else
    say "no time left for the GPU tests"
    echo "gpu tests: not run (no time left)" >> "$ENV"
fi

# ------------------------------------------------------------ benchmark (the rest)
BENCH_BUDGET=$(( TOTAL_BUDGET - $(elapsed) - 15 ))
if [ "$BENCH_BUDGET" -gt 30 ]; then
    # Shapes not started 45 s before the deadline are left out (noted in the results).
    MINUTES=$("$PY" -c "print(max(0.2, ($BENCH_BUDGET - 45) / 60))")
    say "benchmark: --max-minutes $MINUTES, hard limit ${BENCH_BUDGET}s"
    timeout -s INT -k 15 "$BENCH_BUDGET" "$PY" -m fastattn.bench --op all --max-minutes "$MINUTES" \
        --out "$RESULTS" >> "$LOG" 2>&1
    rc=$?
    echo "benchmark: exit $rc (1 = a correctness FAIL, 124 = timed out)" >> "$ENV"
    say "benchmark exit code $rc"
else
    say "no time left for the benchmark"
    echo "benchmark: not run (no time left)" >> "$ENV"
fi
say "done; files in $RESULTS: $(ls "$RESULTS" | tr '\n' ' ')"
