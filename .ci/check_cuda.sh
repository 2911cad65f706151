#!/usr/bin/env bash
# Compiles every csrc/cuda/*.cu for sm_80 and sm_90a with nvcc (no GPU
# needed) and fails on a compile error or on any register spill reported by
# ptxas. Prints, per file and architecture, the largest register count and
# the spill bytes of its kernels.
#
#   .ci/check_cuda.sh            # uses nvcc from PATH (or $NVCC)
#
# The flags mirror setup.py's CUDA build (torch adds the -D__CUDA_NO_HALF*
# defines to every extension, so the kernels must compile with them).
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC=${NVCC:-nvcc}
if ! command -v "$NVCC" >/dev/null 2>&1; then
  echo "check_cuda: nvcc not found" >&2
  exit 1
fi

ARCHS=("compute_80,code=sm_80" "compute_90a,code=sm_90a")
FLAGS=(-std=c++17 -O3 --use_fast_math --expt-relaxed-constexpr -I csrc
       -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
       -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__
       -Xptxas -v,--warn-on-spills)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
shopt -s nullglob
files=(csrc/cuda/*.cu)
if [ ${#files[@]} -eq 0 ]; then
  echo "check_cuda: no .cu files under csrc/cuda"
  exit 0
fi

printf '%-28s %-7s %8s %5s %12s %12s\n' file arch kernels regs spill_store spill_load
for f in "${files[@]}"; do
  for arch in "${ARCHS[@]}"; do
    sm=${arch##*code=}
    log="$tmp/$(basename "$f").$sm.log"
    if ! "$NVCC" "${FLAGS[@]}" -gencode "arch=$arch" -c "$f" -o "$tmp/out.o" >"$log" 2>&1; then
      cat "$log" >&2
      echo "check_cuda: FAILED to compile $f for $sm" >&2
      status=1
      continue
    fi
    # ptxas -v prints, per kernel, "Used N registers" and
    # "N bytes spill stores, M bytes spill loads".
    summary=$(awk '
      /Compiling entry function/ { kernels++ }
      /Used [0-9]+ registers/ { for (i = 1; i <= NF; i++) if ($i == "Used") { r = $(i+1) + 0; if (r > regs) regs = r } }
      /bytes spill stores/ { for (i = 1; i <= NF; i++) { if ($(i+1) == "bytes" && $(i+2) == "spill" && $(i+3) == "stores,") st += $i; if ($(i+1) == "bytes" && $(i+2) == "spill" && $(i+3) == "loads") ld += $i } }
      END { printf "%d %d %d %d", kernels, regs, st, ld }' "$log")
    read -r kernels regs st ld <<<"$summary"
    printf '%-28s %-7s %8s %5s %12s %12s\n' "$(basename "$f")" "$sm" "$kernels" "$regs" "$st" "$ld"
    if [ "$st" != 0 ] || [ "$ld" != 0 ] || grep -qi "warning.*spill\|Registers are spilled" "$log"; then
      grep -i -B2 "spill" "$log" | grep -v " 0 bytes spill stores, 0 bytes spill loads" >&2 || true
      echo "check_cuda: register spills in $f for $sm" >&2
      status=1
    fi
    if grep -q "warning" "$log"; then
      grep "warning" "$log" >&2
    fi
  done
done
exit $status
