#!/usr/bin/env bash
# Builds and runs the standalone CUDA check (dev/cuda/main.cu: every kernel
# of csrc/cuda against a float64 CPU reference, no torch).
#
#   bash dev/cuda/check.sh [check options]   # build for the local GPU, run
#   bash dev/cuda/check.sh --compile-only    # build for sm_80 and sm_90a, no GPU needed
#   bash dev/cuda/check.sh --dry [--quick]   # build (sm_80), run the CPU-only dry mode
#
# Check options (main.cu): --quick, --filter STR, --failures-only, --reps N,
# --list, --dump DIR. The table goes to stdout; exit status 0 = all passed,
# 1 = a mismatch, 2 = a CUDA error or a failed build.
#
# Objects: dev/cuda/build/<sm>/, one per source, compiled in parallel (JOBS,
# default all cores) and reused while up to date (dev/cuda/build_objects.sh,
# which .ci/check_cuda.sh shares: after it, only the check's own sources are
# left to compile). The executable: dev/cuda/build/<sm>/check.
#
# Environment: NVCC (default nvcc), JOBS, CUDA_ARCH (e.g. sm_90a: skips the
# GPU detection).
set -euo pipefail
cd "$(dirname "$0")/../.."

NVCC=${NVCC:-nvcc}
export NVCC
compile_only=0
dry=0
args=()
for a in "$@"; do
  case "$a" in
    --compile-only) compile_only=1 ;;
    --dry) dry=1; args+=("$a") ;;
    *) args+=("$a") ;;
  esac
done

if ! command -v "$NVCC" >/dev/null 2>&1; then
  echo "check.sh: nvcc not found (set NVCC)" >&2
  exit 2
fi

# The local GPU's target: nvidia-smi's compute capability, else nvcc's own
# device query (what -arch=native uses). Hopper builds sm_90a, as CI does.
detect_arch() {
  local cap=""
  if command -v nvidia-smi >/dev/null 2>&1; then
    cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .')
  fi
  if [ -z "$cap" ]; then
    local q
    q="$(dirname "$(command -v "$NVCC")")/__nvcc_device_query"
    if [ -x "$q" ]; then cap=$("$q" 2>/dev/null | tr ',' '\n' | head -n 1 | tr -d ' '); fi
  fi
  [ -n "$cap" ] || return 1
  if [ "$cap" = 90 ]; then echo sm_90a; else echo "sm_$cap"; fi
}

if [ "$compile_only" = 1 ]; then
  archs="sm_80 sm_90a"
elif [ -n "${CUDA_ARCH:-}" ]; then
  archs=$CUDA_ARCH
elif [ "$dry" = 1 ]; then
  archs=sm_80  # no GPU runs it: any target links
else
  if ! archs=$(detect_arch); then
    echo "check.sh: no GPU found (nvidia-smi, nvcc's device query); try --compile-only or --dry" >&2
    exit 2
  fi
fi

shopt -s nullglob
sources=(csrc/cuda/*.cu dev/cuda/*.cu dev/cuda/*.cpp)
start=$SECONDS
echo "check.sh: building for $archs (${JOBS:-$(nproc)} jobs)" >&2
if ! bash dev/cuda/build_objects.sh dev/cuda/build "$archs" "${sources[@]}"; then
  echo "check.sh: build failed" >&2
  exit 2
fi
for sm in $archs; do
  if grep -il "spill\|warning" dev/cuda/build/"$sm"/*.log 2>/dev/null | grep -q .; then
    grep -ih "warning" dev/cuda/build/"$sm"/*.log >&2 || true
  fi
  objs=()
  for s in "${sources[@]}"; do objs+=("dev/cuda/build/$sm/$(basename "$s").o"); done
  "$NVCC" -gencode "arch=compute_${sm#sm_},code=$sm" -Xcompiler -pthread \
    -o "dev/cuda/build/$sm/check" "${objs[@]}"
done
echo "check.sh: built dev/cuda/build/{${archs// /,}}/check in $((SECONDS - start)) s" >&2

if [ "$compile_only" = 1 ]; then
  exit 0
fi
exec "dev/cuda/build/$archs/check" "${args[@]}"
