#!/usr/bin/env bash
# The two entry points of the README:
#   bash run.sh bench [fastattn-bench options]   the kernel benchmark (GPU if present, else CPU)
#   bash run.sh test  [pytest paths and options] the test suite (default: tests/)
# Each first installs only what is missing (torch, triton and the test tools
# for tests, matplotlib for plots) and makes fastattn of this checkout
# importable with its kernels, saying what it does, one line per step with
# its time. A fastattn installed from elsewhere is left alone: this
# checkout is put first on PYTHONPATH instead.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
PY=${PYTHON:-python3}
START=$SECONDS

say() { printf '[run.sh %3ds] %s\n' $((SECONDS - START)) "$*"; }

# The modules among "$@" that are not installed (looked up, not imported,
# outside the checkout, whose folders would shadow installed packages).
missing() {
    (cd / && "$PY" -c 'import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))' "$@")
}

pip_install() {
    say "installing $*"
    "$PY" -m pip install -q "$@"
}

gpu_present() { (cd / && "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"); }

ensure_torch() {
    # The CPU build of torch on a machine without a GPU (plain `pip install
    # torch` would pull several GB of CUDA packages).
    [ -z "$(missing torch)" ] || pip_install torch==2.13.0
}

ensure_test_tools() {
    [ -z "$(missing triton)" ] || pip_install triton==3.6.0
    local tools
    tools=$(missing pytest hypothesis ninja)
    # shellcheck disable=SC2086
    [ -z "$tools" ] || pip_install $tools
    if ! gpu_present; then
        # Triton 3.6's interpreter (the Triton kernels on CPU) needs numpy < 2.3.
        (cd / && "$PY" -c 'import importlib.metadata as m, sys
v = tuple(int(x) for x in m.version("numpy").split(".")[:2]); sys.exit(v >= (2, 3))') \
            >/dev/null 2>&1 || pip_install "numpy<2.3"
    fi
}

ensure_fastattn() {
    # This checkout's fastattn, its kernels loaded (or built: one line says so).
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    say "fastattn from $ROOT"
    "$PY" -m fastattn.info --kernels || say "the cpu backend is unavailable (see above)"
}

cmd=${1:-}
shift || true
case "$cmd" in
    bench)
        ensure_torch
        [ -z "$(missing matplotlib)" ] || pip_install matplotlib
        ensure_fastattn
        say "benchmark: python -m fastattn.bench --quick $*"
        exec "$PY" -m fastattn.bench --quick "$@"
        ;;
    test)
        ensure_torch
        ensure_test_tools
        ensure_fastattn
        # Without a GPU the Triton kernels run on CPU tensors in the interpreter.
        gpu_present || export TRITON_INTERPRET=1
        args=("$@")
        # paths given? then those; else the whole suite
        has_path=0
        for a in "${args[@]+"${args[@]}"}"; do
            [[ "$a" != -* && -e "${a%%::*}" ]] && has_path=1
        done
        [ "$has_path" = 1 ] || args=(tests "${args[@]+"${args[@]}"}")
        say "tests: python -m pytest -rs ${args[*]}"
        exec "$PY" -m pytest -rs "${args[@]}"
        ;;
    *)
        echo "usage: bash run.sh bench|test [options]" >&2
        exit 2
        ;;
esac
