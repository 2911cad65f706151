"""`fastattn-bench` / `python -m fastattn.bench`: arguments, environment, the run, outputs.

    python -m fastattn.bench --quick                  # every part, small grid, < 2 min
    python -m fastattn.bench --op layernorm,cross     # some parts
    python -m fastattn.bench --op uneven,percall      # padding scaling, per-call cost
    python -m fastattn.bench --op variants            # windows, variant overhead, T5 bias
    python -m fastattn.bench --op attention --dtype bf16,fp16 --peers sdpa-flash,flex
    python -m fastattn.bench --shapes my_shapes.json --out results/

Results go to --out, by default ./fastattn-bench-out/<date>_<device>_<revision>/
under the current directory (never inside the installed package). The
revision is FASTATTN_COMMIT if set, else the git commit when this code runs
from a git checkout of fastattn, else the installed package's version.
See docs/BENCHMARKS.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import math
import re
import subprocess
import sys
import time

OPS = ("layernorm", "attention", "uneven", "cross", "decode", "percall", "model", "variants")
DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
          "half": "float16", "fp32": "float32", "float32": "float32"}
# Peers whose compilation costs more than a quick CPU run can afford.
SLOW_ON_CPU = ("compile", "flex")
HERE = os.path.dirname(os.path.abspath(__file__))   # bench/ in a checkout
ROOT = os.path.dirname(HERE)
OUT_FOLDER = "fastattn-bench-out"
# Other processes' load above this, per core (1-minute load average), makes
# the run warn: a quarter of every core busy elsewhere already skews timings.
LOAD_PER_CORE_WARN = 0.25


def _list(text: str) -> tuple[str, ...]:
    return tuple(p for p in re.split(r"[,\s]+", text.strip()) if p)


def parse_args(argv=None) -> argparse.Namespace:
    from .peers import ALL_PEERS
    p = argparse.ArgumentParser(prog="fastattn-bench", description=(
        "Benchmark fastattn's kernels against PyTorch and other libraries, after checking "
        "each result against fastattn.reference. Writes bench.json, bench.md and plots."))
    p.add_argument("--op", default="all",
                   help=f"comma-separated parts among {', '.join(OPS)}, or 'all' (default)")
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
                   help=f"output folder (default: ./{OUT_FOLDER}/<date>_<device>_<revision> "
                        "in the current directory)")
    p.add_argument("--no-plots", action="store_true", help="do not write PNG plots")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="time budget: shapes not started by then are left out (noted)")
    args = p.parse_args(argv)
    try:
        args.ops = parse_ops(args.op)
    except ValueError as exc:
        p.error(str(exc))
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


def parse_ops(text: str) -> tuple[str, ...]:
    """'all', one part, or a comma list of parts -> the parts, in the order given."""
    names = _list(text)
    if not names:
        raise ValueError("--op: no part given")
    if "all" in names:
        return OPS
    unknown = [n for n in names if n not in OPS]
    if unknown:
        raise ValueError(f"--op: unknown part(s) {', '.join(map(repr, unknown))} "
                         f"(expected some of {', '.join(OPS)}, or all)")
    return tuple(dict.fromkeys(names))


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def source_checkout() -> str | None:
    """The git work tree this benchmark runs from (its bench/ folder is this
    code), or None: an installed package, where a repository around
    site-packages must not lend its commit."""
    top = _git("rev-parse", "--show-toplevel")
    if not top:
        return None
    try:
        if os.path.samefile(top, ROOT) and os.path.samefile(
                os.path.join(top, "bench", "cli.py"), os.path.abspath(__file__)):
            return top
    except OSError:
        pass
    return None


def package_version() -> str | None:
    try:
        from importlib.metadata import PackageNotFoundError, version
        try:
            return version("fastattn")
        except PackageNotFoundError:
            pass
    except ImportError:
        pass
    try:
        import fastattn
        return getattr(fastattn, "__version__", None)
    except ImportError:
        return None


def revision() -> dict:
    """{"revision": the run's label, "commit": git hash or None, "git_dirty",
    "fastattn_version", "revision_source"}: FASTATTN_COMMIT if set, else git
    when running from a checkout, else the package metadata's version."""
    version = package_version()
    info = {"fastattn_version": version, "commit": None, "git_dirty": None}
    if os.environ.get("FASTATTN_COMMIT"):
        info.update(commit=os.environ["FASTATTN_COMMIT"], revision_source="FASTATTN_COMMIT")
    elif source_checkout():
        commit = _git("rev-parse", "--short", "HEAD")
        if commit:
            status = _git("status", "--porcelain", "--untracked-files=no")
            info.update(commit=commit, git_dirty=bool(status), revision_source="git checkout")
    if info["commit"]:
        info["revision"] = info["commit"]
    else:
        info.update(revision=f"v{version}" if version else "unversioned",
                    revision_source="package metadata" if version else "none found")
    return info


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def load_state(own_cpu_rate: float = 0.0, own_seconds: float = 0.0,
               threshold: float = LOAD_PER_CORE_WARN, loadavg=None, cores=None) -> dict:
    """The load average, and the part of it other processes make, per core.

    The 1-minute load average is an exponential average with a 60 s time
    constant: this process, keeping `own_cpu_rate` cores busy for
    `own_seconds`, adds about rate * (1 - exp(-seconds/60)) to it, which is
    taken off (approximately: our threads waiting for a core count too).
    """
    loadavg = os.getloadavg() if loadavg is None else loadavg
    cores = cores or os.cpu_count() or 1
    own = own_cpu_rate * (1 - math.exp(-own_seconds / 60.0))
    others = max(0.0, loadavg[0] - own) / cores
    return {"loadavg": [round(x, 2) for x in loadavg], "cores": cores,
            "own_share": round(own, 2), "others_per_core": round(others, 2),
            "busy": others > threshold}


def _load_warning(when: str, state: dict, threshold: float) -> str | None:
    if not state["busy"]:
        return None
    return (f"the machine was busy at the {when} of the run: 1-minute load average "
            f"{state['loadavg'][0]} on {state['cores']} cores, about "
            f"{state['others_per_core']} per core from other processes (warning above "
            f"{threshold}); timings are slower and noisier than on an idle machine (on a "
            "CPU torch's threads wait for a core, and samples may cluster at multiples of "
            "the scheduler's time slice, which no spread flag can show)")


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
           **revision(), "python": platform.python_version(),
           "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "triton": triton_version, "numpy": numpy.__version__,
           "cpu": _cpu_name(), "cpu_threads": torch.get_num_threads(),
           # other processes' load skews CPU timings; recorded to judge them
           "load_average": [round(x, 2) for x in os.getloadavg()], "gpu": None}
    from . import timing
    size, what = timing.cache_info(device)
    env["cache"] = {"bytes": size, "what": what, "cover": timing.COVER}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_GiB=round(props.total_memory / 2**30, 1),
                   compute_capability=f"{props.major}.{props.minor}", driver=_driver_version())
    import fastattn
    env["fastattn_backends"] = fastattn.backends()
    return env


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()


def default_out_dir(env: dict, cwd: str | None = None) -> str:
    """./fastattn-bench-out/<date>_<device>_<revision> under the current
    directory; "-2", "-3"... appended rather than overwrite an earlier run."""
    where = _slug(env["gpu"] or f"cpu-{os.cpu_count()}core")
    base = os.path.join(cwd or os.getcwd(), OUT_FOLDER,
                        f"{datetime.date.today().isoformat()}_{where}_{_slug(env['revision'])}")
    path, n = base, 1
    while os.path.exists(path) and os.listdir(path):
        n += 1
        path = f"{base}-{n}"
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    wall_start, cpu_start = time.monotonic(), _own_cpu_seconds()
    load = {"threshold_per_core": LOAD_PER_CORE_WARN, "start": load_state()}
    load["cores"] = load["start"]["cores"]
    notes: set[str] = set()
    warning = _load_warning("start", load["start"], LOAD_PER_CORE_WARN)
    if warning:
        print(f"fastattn-bench: WARNING: {warning}", file=sys.stderr)
        notes.add(warning)
    # Timings must never come from the Triton interpreter; triton reads this
    # variable when fastattn's kernels are first defined, so clear it first.
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        notes.add("TRITON_INTERPRET was set; cleared for the benchmark (the interpreter "
                  "is never timed)")
    os.environ["TRITON_INTERPRET"] = "0"

    import dataclasses

    import torch
    from . import (ceilings, ops_attention, ops_layernorm, ops_model, ops_percall, ops_uneven,
                   ops_variants, report, shapes, timing)
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
    ops = args.ops
    modes = _list(args.modes)

    try:
        user_shapes = shapes.load(args.shapes) if args.shapes else None
    except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        print(f"fastattn-bench: --shapes {args.shapes}: {exc}", file=sys.stderr)
        return 2
    if user_shapes is not None:
        ops = tuple(op for op in ops if any(s["op"] == op for s in user_shapes))

    env = environment(device)
    env["load"] = load
    out_dir = os.path.abspath(args.out or default_out_dir(env))
    os.makedirs(out_dir, exist_ok=True)

    budget = timing.budget_for(device, args.quick)
    print(f"fastattn-bench: {env['gpu'] or env['cpu']}, torch {env['torch']}, "
          f"triton {env['triton']}, fastattn {env['fastattn_version']} ({env['revision']}); "
          f"cold caches past the {env['cache']['what']}; measuring ceilings...", file=sys.stderr)
    ceils = ceilings.measure(device, dtypes, budget)
    print(f"ceilings: copy {ceils['copy_GBps']:.1f} GB/s, matmul "
          + ", ".join(f"{k} {v:.3g} TFLOP/s" for k, v in ceils["matmul_TFLOPs"].items()),
          file=sys.stderr)

    # Plan every part first, so the progress bar's total is known from the start.
    progress = report.Progress()
    parts = []
    for op in ops:
        for dtype in dtypes:
            ctx = Context(device=device, dtype=dtype, budget=budget, ceilings=ceils,
                          progress=progress, notes=notes, modes=modes)
            if op == "model":
                part = ops_model.plan(args.quick, wanted_peers, ctx)
            elif op == "variants":
                part = ops_variants.plan(args.quick, wanted_backends, wanted_peers, ctx)
            else:
                grid = ([s for s in user_shapes if s["op"] == op] if user_shapes is not None
                        else shapes.grid(op, args.quick, device.type))
                if op == "uneven":
                    part = ops_uneven.plan(grid, wanted_backends, ctx)
                elif op == "percall":
                    part = ops_percall.plan(grid, wanted_backends, ctx)
                elif op == "layernorm":
                    part = ops_layernorm.plan(
                        grid, wanted_backends,
                        tuple(p for p in wanted_peers if p in NORM_PEERS), ctx)
                else:
                    part = ops_attention.plan(
                        op, grid, wanted_backends,
                        tuple(p for p in wanted_peers if p in ATTENTION_PEERS), ctx)
            if part is not None:
                parts.append(part)
    progress.set_total(sum(p.steps for p in parts))

    start = time.monotonic()
    deadline_total = start + 60 * args.max_minutes if args.max_minutes else float("inf")
    rows: list[dict] = []
    try:
        for n, part in enumerate(parts):
            # An even share of the remaining budget per remaining part.
            part.ctx.deadline = time.monotonic() + (deadline_total - time.monotonic()) / (
                len(parts) - n)
            rows += part.run()
    except KeyboardInterrupt:
        notes.add("interrupted: the results below are partial")
    progress.close()

    wall = time.monotonic() - wall_start
    load["end"] = load_state(own_cpu_rate=(_own_cpu_seconds() - cpu_start) / max(wall, 1e-9),
                             own_seconds=wall)
    warning = _load_warning("end", load["end"], LOAD_PER_CORE_WARN)
    if warning:
        print(f"fastattn-bench: WARNING: {warning}", file=sys.stderr)
        notes.add(warning)
    report.add_speedups(rows)
    report.flag_notes(rows, ceils, notes)
    note_list = report.ordered_notes(notes)
    settings = {"ops": list(ops), "dtypes": [str(d) for d in dtypes], "device": str(device),
                "quick": args.quick, "peers": list(wanted_peers), "modes": list(modes),
                "shapes_file": args.shapes, "budget": dataclasses.asdict(budget),
                "noisy_iqr": timing.NOISY_IQR, "out": out_dir,
                "seconds": round(time.monotonic() - start, 1)}
    written = []
    if not args.no_plots and rows:
        written = report.plots(rows, out_dir, note_list, env["gpu"] or env["cpu"], device.type)
    report.write_json(os.path.join(out_dir, "bench.json"), env, settings, ceils, note_list, rows)
    with open(os.path.join(out_dir, "bench.md"), "w") as f:
        f.write(report.markdown(rows, env, ceils, note_list, settings))
    print(report.terminal_table(rows, ceils) if rows else "\nno results (see the notes)")
    report.print_notes(note_list)
    files = ["bench.json", "bench.md"] + written
    print(f"\nwrote {', '.join(files)} to {out_dir} ({settings['seconds']} s)")
    fails = [r for r in rows if r["status"] == "FAIL"]
    if fails:
        print(f"{len(fails)} result(s) FAILED the correctness gate", file=sys.stderr)
        return 1
    return 0
