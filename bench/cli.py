"""`fastattn-bench` / `python -m bench`: arguments, environment, the run, outputs.

    python -m bench --quick                  # every part, small grid, < 2 min
    python -m bench --op attention --dtype bf16,fp16 --peers sdpa-flash,flex
    python -m bench --shapes my_shapes.json --out results/

See docs/BENCHMARKS.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import time

OPS = ("layernorm", "attention", "cross", "decode", "model")
DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
          "half": "float16", "fp32": "float32", "float32": "float32"}
# Peers whose compilation costs more than a quick CPU run can afford.
SLOW_ON_CPU = ("compile", "flex")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _list(text: str) -> tuple[str, ...]:
    return tuple(p for p in re.split(r"[,\s]+", text.strip()) if p)


def parse_args(argv=None) -> argparse.Namespace:
    from .peers import ALL_PEERS
    p = argparse.ArgumentParser(prog="fastattn-bench", description=(
        "Benchmark fastattn's kernels against PyTorch and other libraries, after checking "
        "each result against fastattn.reference. Writes bench.json, bench.md and plots."))
    p.add_argument("--op", default="all", choices=OPS + ("all",),
                   help="which part to run (default: all)")
    p.add_argument("--dtype", default="auto",
                   help="comma-separated dtypes: bf16, fp16, fp32 (default: bf16 on a GPU, "
                        "fp32 on a CPU)")
    p.add_argument("--device", default="auto",
                   help="cuda, cuda:N or cpu (default: cuda if present, else cpu)")
    p.add_argument("--quick", action="store_true",
                   help="the small grid (under 2 minutes on any device)")
    p.add_argument("--shapes", metavar="FILE",
                   help="JSON list of shape objects replacing the built-in grids "
                        "(see bench/shapes.py)")
    p.add_argument("--peers", default="auto",
                   help=f"comma-separated peers among {', '.join(ALL_PEERS)}; 'all', 'none', "
                        "or 'auto' (all, less torch.compile and flex in a quick CPU run)")
    p.add_argument("--backends", default="auto",
                   help="fastattn backends to time (default: cuda,triton on a GPU, cpu on a CPU; "
                        "the Triton interpreter is never timed)")
    p.add_argument("--modes", default="fwd,bwd,fwd+bwd",
                   help="comma-separated subset of fwd, bwd, fwd+bwd (decode is fwd only)")
    p.add_argument("--out", metavar="DIR",
                   help="output folder (default: bench/out/<date>_<device>_<commit>)")
    p.add_argument("--no-plots", action="store_true", help="do not write PNG plots")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="time budget: shapes not started by then are left out (noted)")
    args = p.parse_args(argv)
    for mode in _list(args.modes):
        if mode not in ("fwd", "bwd", "fwd+bwd"):
            p.error(f"--modes: unknown mode {mode!r}")
    for name in _list(args.dtype):
        if name != "auto" and name not in DTYPES:
            p.error(f"--dtype: unknown dtype {name!r} (expected bf16, fp16 or fp32)")
    if args.peers not in ("auto", "all", "none"):
        for name in _list(args.peers):
            if name not in ALL_PEERS:
                p.error(f"--peers: unknown peer {name!r} (expected some of {', '.join(ALL_PEERS)})")
    return args


def _git_commit() -> str:
    if os.environ.get("FASTATTN_COMMIT"):
        return os.environ["FASTATTN_COMMIT"]
    try:
        out = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _driver_version() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def environment(device) -> dict:
    import numpy
    import torch
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    env = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
           "commit": _git_commit(), "python": platform.python_version(),
           "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "triton": triton_version, "numpy": numpy.__version__,
           "cpu": _cpu_name(), "cpu_threads": torch.get_num_threads(),
           # other processes' load skews CPU timings; recorded to judge them
           "load_average": [round(x, 2) for x in os.getloadavg()], "gpu": None}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_GiB=round(props.total_memory / 2**30, 1),
                   compute_capability=f"{props.major}.{props.minor}", driver=_driver_version())
    import fastattn
    env["fastattn_backends"] = fastattn.backends()
    return env


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def main(argv=None) -> int:
    args = parse_args(argv)
    notes: set[str] = set()
    # Timings must never come from the Triton interpreter; triton reads this
    # variable when fastattn's kernels are first defined, so clear it first.
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        notes.add("TRITON_INTERPRET was set; cleared for the benchmark (the interpreter "
                  "is never timed)")
    os.environ["TRITON_INTERPRET"] = "0"

    import torch
    from . import ceilings, ops_attention, ops_layernorm, ops_model, report, shapes, timing
    from .peers import ALL_PEERS, ATTENTION_PEERS, NORM_PEERS
    from .runner import Context

    device = torch.device(args.device if args.device != "auto"
                          else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("fastattn-bench: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dtype_names = _list(args.dtype)
    if dtype_names == ("auto",):
        dtype_names = ("bf16",) if device.type == "cuda" else ("fp32",)
    dtypes = [getattr(torch, DTYPES[d]) for d in dtype_names]
    if args.peers == "auto":
        wanted_peers = ALL_PEERS
        if device.type == "cpu" and args.quick:
            wanted_peers = tuple(p for p in ALL_PEERS if p not in SLOW_ON_CPU)
            notes.add("quick CPU run: torch.compile and flex peers left out (compile time); "
                      "name them in --peers to include them")
    else:
        wanted_peers = {"all": ALL_PEERS, "none": ()}.get(args.peers, _list(args.peers))
    wanted_backends = None if args.backends == "auto" else _list(args.backends)
    ops = OPS if args.op == "all" else (args.op,)
    modes = _list(args.modes)

    try:
        user_shapes = shapes.load(args.shapes) if args.shapes else None
    except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        print(f"fastattn-bench: --shapes {args.shapes}: {exc}", file=sys.stderr)
        return 2
    if user_shapes is not None:
        ops = tuple(op for op in ops if any(s["op"] == op for s in user_shapes))

    env = environment(device)
    where = _slug(env["gpu"] or "cpu")
    out_dir = args.out or os.path.join(
        ROOT, "bench", "out", f"{datetime.date.today().isoformat()}_{where}_{env['commit']}")
    os.makedirs(out_dir, exist_ok=True)

    budget = timing.budget_for(device, args.quick)
    print(f"fastattn-bench: {env['gpu'] or env['cpu']}, torch {env['torch']}, "
          f"triton {env['triton']}, commit {env['commit']}; measuring ceilings...", file=sys.stderr)
    ceils = ceilings.measure(device, dtypes, budget)
    print(f"ceilings: copy {ceils['copy_GBps']:.1f} GB/s, matmul "
          + ", ".join(f"{k} {v:.2f} TFLOP/s" for k, v in ceils["matmul_TFLOPs"].items()),
          file=sys.stderr)

    progress = report.Progress()
    start = time.monotonic()
    deadline_total = start + 60 * args.max_minutes if args.max_minutes else float("inf")
    rows: list[dict] = []
    try:
        for n, op in enumerate(ops):
            # An even share of the remaining budget per remaining part.
            remaining = (deadline_total - time.monotonic()) / (len(ops) - n)
            for dtype in dtypes:
                ctx = Context(device=device, dtype=dtype, budget=budget, ceilings=ceils,
                              progress=progress, notes=notes, modes=modes,
                              deadline=time.monotonic() + remaining / len(dtypes))
                if op == "model":
                    rows += ops_model.run(args.quick, wanted_peers, ctx)
                    continue
                grid = ([s for s in user_shapes if s["op"] == op] if user_shapes is not None
                        else shapes.grid(op, args.quick, device.type))
                if op == "layernorm":
                    rows += ops_layernorm.run(
                        grid, wanted_backends,
                        tuple(p for p in wanted_peers if p in NORM_PEERS), ctx)
                else:
                    rows += ops_attention.run(
                        op, grid, wanted_backends,
                        tuple(p for p in wanted_peers if p in ATTENTION_PEERS), ctx)
    except KeyboardInterrupt:
        notes.add("interrupted: the results below are partial")
    progress.close()

    report.add_speedups(rows)
    note_list = sorted(notes)
    settings = {"ops": list(ops), "dtypes": [str(d) for d in dtypes], "device": str(device),
                "quick": args.quick, "peers": list(wanted_peers), "modes": list(modes),
                "shapes_file": args.shapes, "seconds": round(time.monotonic() - start, 1)}
    written = []
    if not args.no_plots and rows:
        written = report.plots(rows, out_dir, note_list)
    report.write_json(os.path.join(out_dir, "bench.json"), env, settings, ceils, note_list, rows)
    with open(os.path.join(out_dir, "bench.md"), "w") as f:
        f.write(report.markdown(rows, env, ceils, note_list))
    print(report.terminal_table(rows, ceils) if rows else "\nno results (see the notes)")
    report.print_notes(note_list)
    files = ["bench.json", "bench.md"] + written
    print(f"\nwrote {', '.join(files)} to {out_dir} ({settings['seconds']} s)")
    fails = [r for r in rows if r["status"] == "FAIL"]
    if fails:
        print(f"{len(fails)} result(s) FAILED the correctness gate", file=sys.stderr)
        return 1
    return 0

