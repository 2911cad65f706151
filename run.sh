#!/usr/bin/env bash
# The two entry points of the README:
#   bash run.sh bench [fastattn-bench options]   the kernel benchmark (GPU if present, else CPU)
#   bash run.sh test  [pytest options]           the test suite
# Each first installs what is missing (torch, triton, test tools) and builds
# fastattn's extension in place if it is not built yet.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

have() { "$PY" -c "import $1" >/dev/null 2>&1; }

ensure_installed() {
    if ! have torch; then
        "$PY" -m pip install -q torch==2.13.0
    fi
    if ! have triton; then
        "$PY" -m pip install -q triton==3.6.0
    fi
    # Triton 3.6's interpreter needs numpy < 2.3.
    "$PY" -c "import numpy, sys; v = tuple(map(int, numpy.__version__.split('.')[:2])); sys.exit(v >= (2, 3))" \
        >/dev/null 2>&1 || "$PY" -m pip install -q "numpy<2.3"
    for pkg in pytest hypothesis ninja; do
        have "$pkg" || "$PY" -m pip install -q "$pkg"
    done
    if ! "$PY" -c "import fastattn._C" >/dev/null 2>&1; then
        MAX_JOBS=${MAX_JOBS:-$(nproc)} "$PY" -m pip install -q --no-build-isolation -e .
    fi
}

gpu_present() { "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; }

cmd=${1:-}
shift || true
case "$cmd" in
    bench)
        ensure_installed
        exec "$PY" -m bench --quick "$@"
        ;;
    test)
        ensure_installed
        # Without a GPU the Triton kernels run on CPU tensors in the interpreter.
        gpu_present || export TRITON_INTERPRET=1
        exec "$PY" -m pytest tests -q -rs "$@"
        ;;
    *)
        echo "usage: bash run.sh bench|test [options]" >&2
        exit 2
        ;;
esac
