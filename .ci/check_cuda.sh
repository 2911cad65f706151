#!/usr/bin/env bash
# Compiles every csrc/cuda/*.cu for sm_80 and sm_90a with nvcc (no GPU
# needed) and fails on a compile error or on any register spill reported by
# ptxas. Prints, per file and architecture, the number of kernels, the
# largest register count and the spill bytes of its kernels; with
# --kernels also one line per kernel family (kernel, dtype, head-dim
# bucket: its variants' register range and spills).
#
#   .ci/check_cuda.sh [--kernels]    # uses nvcc from PATH (or $NVCC)
#
# The (file, architecture) compilations run in parallel, JOBS at a time
# (default: all cores), through dev/cuda/build_objects.sh (the flags of
# setup.py's CUDA build plus ptxas -v; torch adds the -D__CUDA_NO_HALF*
# defines to every extension, so the kernels must compile with them). The
# objects stay in dev/cuda/build/<sm>/ (ignored by git), where
# dev/cuda/check.sh --compile-only finds them up to date.
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC=${NVCC:-nvcc}
export NVCC
JOBS=${JOBS:-$(nproc)}
export JOBS
kernels=0
[ "${1:-}" = "--kernels" ] && kernels=1
if ! command -v "$NVCC" >/dev/null 2>&1; then
  echo "check_cuda: nvcc not found" >&2
  exit 1
fi

ARCHS=(sm_80 sm_90a)
OUT=dev/cuda/build
shopt -s nullglob
files=(csrc/cuda/*.cu)
if [ ${#files[@]} -eq 0 ]; then
  echo "check_cuda: no .cu files under csrc/cuda"
  exit 0
fi

start=$SECONDS
build_ok=1
bash dev/cuda/build_objects.sh "$OUT" "${ARCHS[*]}" "${files[@]}" 2>/dev/null || build_ok=0
wall=$((SECONDS - start))

status=0
printf '%-28s %-7s %8s %5s %12s %12s\n' file arch kernels regs spill_store spill_load
for f in "${files[@]}"; do
  for sm in "${ARCHS[@]}"; do
    log="$OUT/$sm/$(basename "$f").log"
    if [ ! -f "$OUT/$sm/$(basename "$f").o" ]; then
      [ -f "$log" ] && cat "$log" >&2
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
    read -r nk regs st ld <<<"$summary"
    printf '%-28s %-7s %8s %5s %12s %12s\n' "$(basename "$f")" "$sm" "$nk" "$regs" "$st" "$ld"
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

if [ "$kernels" = 1 ]; then
  # Per kernel family: "<sm> <regs> <spill bytes> <demangled name>" per
  # kernel, grouped by kernel name and its first two template arguments.
  demangle=cat
  command -v c++filt >/dev/null 2>&1 && demangle=c++filt
  echo
  printf '%-7s %-34s %-6s %4s %9s %7s\n' arch family dtype D variants regs
  for f in "${files[@]}"; do for sm in "${ARCHS[@]}"; do
    log="$OUT/$sm/$(basename "$f").log"
    [ -f "$log" ] || continue
    awk -v sm="$sm" '
      /Compiling entry function/ { name = $7; gsub("\047", "", name) }
      /bytes spill stores/ { for (i = 1; i <= NF; i++) if ($(i+1) == "bytes" && $(i+2) == "spill") sp += $i }
      /Used [0-9]+ registers/ { for (i = 1; i <= NF; i++) if ($i == "Used") r = $(i+1); print sm, r, sp + 0, name; sp = 0 }' "$log"
  done; done | $demangle | sed -E 's/fastattn::cuda::(attn::)?(detail::)?//g; s/\(anonymous namespace\):://g' |
    awk '{
      sm = $1; r = $2; sp = $3; $1 = $2 = $3 = ""; name = substr($0, 4)
      sub(/\(.*$/, "", name); sub(/^void /, "", name)
      fam = name; targs = ""
      if (match(name, /<.*>/)) { fam = substr(name, 1, RSTART - 1); targs = substr(name, RSTART + 1, RLENGTH - 2) }
      n = split(targs, a, ", ")
      dt = (n >= 1 && a[1] ~ /^(__half|__nv_bfloat16|float)$/) ? a[1] : "-"
      d = (dt != "-" && n >= 2) ? a[2] : ((n >= 1 && a[1] ~ /^[0-9]+$/) ? a[1] : "-")
      if (dt == "__half") dt = "fp16"; else if (dt == "__nv_bfloat16") dt = "bf16"; else if (dt == "float") dt = "fp32"
      if (fam ~ /simt/) dt = "fp32"
      key = sm " " fam " " dt " " d
      cnt[key]++; if (!(key in lo) || r < lo[key]) lo[key] = r; if (r > hi[key]) hi[key] = r; spill[key] += sp
    } END {
      for (k in cnt) { split(k, f, " "); printf "%-7s %-34s %-6s %4s %9d %3d-%3d%s\n", f[1], f[2], f[3], f[4], cnt[k], lo[k], hi[k], spill[k] ? " SPILL" : "" }
    }' | sort -k1,1 -k2,2 -k3,3 -k4,4n
fi
[ "$build_ok" = 1 ] || status=1
echo "check_cuda: ${#files[@]} files x ${#ARCHS[@]} architectures, built in ${wall} s ($JOBS jobs; up-to-date objects reused)"
exit $status
