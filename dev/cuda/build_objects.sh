#!/usr/bin/env bash
# Compiles CUDA/C++ sources to one object per (architecture, source), in
# parallel, with the flags of fastattn's CUDA build; shared by
# .ci/check_cuda.sh and dev/cuda/check.sh, so that CI compiles each kernel
# file once for both.
#
#   dev/cuda/build_objects.sh OUTROOT "sm_80 sm_90a" SOURCE...
#
# Writes OUTROOT/<sm>/<source basename>.o and .log (nvcc's output: ptxas -v
# register and spill lines). An object is rebuilt only when it is missing or
# older than its source, any header it may include (csrc/*; for sources
# outside csrc/ also dev/cuda/*.h) or this script; the flags are fixed here
# (a different nvcc is not detected: remove OUTROOT). Runs JOBS compilations at a time (default: all
# cores), the largest sources first. Exit status 1 if any compilation failed
# (its log goes to stderr). Run from the repository root.
#
# The flags mirror setup.py's CUDA build (fastattn/_build.py NVCC_FLAGS;
# torch adds the -D__CUDA_NO_HALF* defines to every extension, so the
# kernels must compile with them), plus ptxas' per-kernel report.
set -euo pipefail

if [ $# -lt 3 ]; then
  echo "usage: $0 OUTROOT \"ARCH...\" SOURCE..." >&2
  exit 2
fi
outroot=$1
archs=$2
shift 2

NVCC=${NVCC:-nvcc}
JOBS=${JOBS:-$(nproc)}
FLAGS="-std=c++17 -O3 --use_fast_math --expt-relaxed-constexpr -lineinfo -I csrc -I dev/cuda \
-D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ \
-D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ \
-Xptxas -v,--warn-on-spills -Xcompiler -pthread"

shopt -s nullglob
kernel_headers=(csrc/*.h csrc/*/*.h csrc/*/*.cuh "$0")
newest_kernel=$(ls -t "${kernel_headers[@]}" | head -n 1)
newest_any=$(ls -t "${kernel_headers[@]}" dev/cuda/*.h | head -n 1)

jobs=()
for sm in $archs; do
  mkdir -p "$outroot/$sm"
  for s in "$@"; do
    o="$outroot/$sm/$(basename "$s").o"
    case "$s" in csrc/*) newest=$newest_kernel ;; *) newest=$newest_any ;; esac
    if [ ! -f "$o" ] || [ "$s" -nt "$o" ] || [ "$newest" -nt "$o" ]; then
      jobs+=("$(stat -c %s "$s") $s $sm")
    fi
  done
done
[ ${#jobs[@]} -eq 0 ] && exit 0

export NVCC FLAGS outroot
printf '%s\n' "${jobs[@]}" | sort -rn | cut -d' ' -f2- | xargs -P "$JOBS" -L 1 bash -c '
  s=$0; sm=$1; o="$outroot/$sm/$(basename "$s").o"; log="${o%.o}.log"
  # shellcheck disable=SC2086
  if $NVCC $FLAGS -gencode "arch=compute_${sm#sm_},code=$sm" -c "$s" -o "$o.tmp" >"$log" 2>&1; then
    mv "$o.tmp" "$o"
  else
    rm -f "$o.tmp" "$o"
    cat "$log" >&2
    echo "build_objects: FAILED to compile $s for $sm" >&2
    exit 1
  fi' || exit 1
