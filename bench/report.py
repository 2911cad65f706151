"""What the benchmark shows and stores: progress bar, table, JSON, markdown, plots.

Every result is a row (runner._row): one implementation, one shape, one
mode. `add_speedups` relates each row to fastattn's fastest backend on the
same shape and mode: `fastattn_x` = this row's time / that backend's time
(above 1: fastattn is faster), and fastattn rows carry `speedup_vs`, their
ratio to every peer. Plots follow flash-attention's README: throughput
against sequence length (hidden size for norms) per implementation, and
peak memory against length.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections import defaultdict

# ---------------------------------------------------------------- progress


class Progress:
    """A one-line progress bar on stderr (a line per ~5% when not a terminal)."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.total = 0
        self.done = 0
        self.label = ""
        self.start = time.monotonic()
        self.tty = stream.isatty()
        self._last_logged = -1.0
        self._last_time = 0.0

    def add_total(self, n: int) -> None:
        self.total += n
        self._draw()

    def step(self, label: str) -> None:
        self.label = label
        self._draw()

    def advance(self, n: int = 1) -> None:
        self.done = min(self.total, self.done + n)
        self._draw()

    def _draw(self) -> None:
        frac = self.done / self.total if self.total else 0.0
        elapsed = time.monotonic() - self.start
        width = 24
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        line = f"[{bar}] {self.done}/{self.total} {int(elapsed) // 60}:{int(elapsed) % 60:02d} {self.label}"
        if self.tty:
            cols = shutil.get_terminal_size((100, 20)).columns
            self.stream.write("\r" + line[:cols - 1].ljust(cols - 1))
            self.stream.flush()
        elif abs(frac - self._last_logged) >= 0.05 or elapsed - self._last_time >= 15:
            # a log line per 5% (the fraction drops when a part adds its total)
            self._last_logged, self._last_time = frac, elapsed
            self.stream.write(line + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


# ---------------------------------------------------------------- speedups


def add_speedups(rows: list[dict]) -> None:
    groups = defaultdict(list)
    for r in rows:
        groups[(r["op"], r["label"], r["mode"], r["dtype"])].append(r)
    for group in groups.values():
        timed = [r for r in group if r["ms"]]
        fast = [r for r in timed if r["fastattn"]]
        if not fast:
            continue
        best = min(fast, key=lambda r: r["ms"])
        for r in timed:
            r["fastattn_x"] = r["ms"] / best["ms"]
        for r in fast:
            r["speedup_vs"] = {p["impl"]: p["ms"] / r["ms"] for p in timed if not p["fastattn"]}


# ------------------------------------------------------------------ tables


def _fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _cells(r: dict) -> list[str]:
    if r["status"] != "ok":
        return [r["status"], "", "", "", "", r["message"].splitlines()[0][:70]]
    fraction = r["ceiling_fraction"]
    value = r["throughput"]
    return [_fmt(r["ms"], ".3f"), _fmt(value, ".0f" if value and value >= 100 else ".3g"),
            "" if fraction is None else f"{100 * fraction:.0f}%",
            "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}",
            _fmt(r.get("fastattn_x"), ".2f"), ""]


HEADER = ["shape", "mode", "implementation", "ms", "{unit}", "% ceiling", "peak MiB",
          "fastattn x", "note"]


def _sections(rows: list[dict]):
    sections = defaultdict(list)
    for r in rows:
        sections[(r["op"], r["dtype"], r["unit"])].append(r)
    return sections.items()


def _ceiling_text(unit: str, dtype: str, ceilings: dict) -> str:
    if unit == "tokens/s":
        return "none (whole models)"
    if unit == "GB/s":
        return f"copy {ceilings['copy_GBps']:.0f} GB/s"
    table = ceilings["matmul_TFLOPs"]
    name = dtype if dtype in table else next(iter(table))
    return f"{name} matmul {table[name]:.3g} TFLOP/s"


def terminal_table(rows: list[dict], ceilings: dict) -> str:
    out = []
    for (op, dtype, unit), section in _sections(rows):
        out.append(f"\n== {op} ({dtype}): {unit}; ceiling = {_ceiling_text(unit, dtype, ceilings)};"
                   " fastattn x = this time / fastattn's best time ==")
        table = [[h.format(unit=unit) for h in HEADER]]
        previous = None
        for r in section:
            key = (r["label"], r["mode"])
            shape, mode = (r["label"], r["mode"]) if key != previous else ("", "")
            previous = key
            table.append([shape, mode, r["impl"]] + _cells(r))
        widths = [max(len(row[i]) for row in table) for i in range(len(HEADER))]
        for row in table:
            out.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return "\n".join(out)


def markdown(rows: list[dict], env: dict, ceilings: dict, notes: list[str]) -> str:
    lines = ["# fastattn benchmark", "",
             f"{env.get('gpu') or env.get('cpu')}, torch {env['torch']}, triton {env['triton']}, "
             f"commit {env['commit']}, {env['date']}", "",
             f"Ceilings measured in this run: copy {ceilings['copy_GBps']:.0f} GB/s; "
             + ", ".join(f"{k} matmul {v:.3g} TFLOP/s" for k, v in ceilings["matmul_TFLOPs"].items()),
             "", "`fastattn x`: this implementation's time over fastattn's fastest backend "
             "(above 1: fastattn is faster).", ""]
    for (op, dtype, unit), section in _sections(rows):
        lines += [f"## {op} ({dtype}, {unit}; ceiling {_ceiling_text(unit, dtype, ceilings)})", "",
                  "| " + " | ".join(h.format(unit=unit) for h in HEADER) + " |",
                  "|" + "---|" * len(HEADER)]
        for r in section:
            cells = [r["label"], r["mode"], r["impl"]] + _cells(r)
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
        lines.append("")
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def write_json(path: str, env: dict, settings: dict, ceilings: dict, notes: list[str],
               rows: list[dict]) -> None:
    with open(path, "w") as f:
        json.dump({"environment": env, "settings": settings, "ceilings": ceilings,
                   "notes": notes, "results": rows}, f, indent=1)


# ------------------------------------------------------------------- plots

PLOTS = {"attention.png": ("attention", "cross"), "decode.png": ("decode",),
         "layernorm.png": ("layernorm",)}


def _families(rows: list[dict], ops: tuple[str, ...], key: str):
    """{family: {mode: {impl: [(x, value)]}}} for families with >= 2 sizes."""
    data = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in rows:
        if r["op"] in ops and r["status"] == "ok" and r.get(key) is not None:
            data[r["family"]][r["mode"]][r["impl"]].append((r["x"], r[key]))
    return {f: modes for f, modes in data.items()
            if len({x for impls in modes.values() for pts in impls.values() for x, _ in pts}) > 1}


def _plot(path: str, families: dict, ylabel: str, xlabel_of, modes=None) -> bool:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if not families:
        return False
    all_modes = modes or sorted({m for f in families.values() for m in f},
                                key=["fwd", "bwd", "fwd+bwd"].index)
    fig, axes = plt.subplots(len(families), len(all_modes), squeeze=False,
                             figsize=(4.2 * len(all_modes), 3.2 * len(families)))
    for row, (family, by_mode) in enumerate(families.items()):
        for col, mode in enumerate(all_modes):
            ax = axes[row][col]
            for impl, points in sorted(by_mode.get(mode, {}).items()):
                points.sort()
                style = "-o" if impl.startswith("fastattn") else "--."
                ax.plot([p[0] for p in points], [p[1] for p in points], style, label=impl,
                        linewidth=2 if impl.startswith("fastattn") else 1)
            ax.set_xscale("log", base=2)
            ax.set_title(f"{family}, {mode}", fontsize=9)
            ax.set_xlabel(xlabel_of(family), fontsize=8)
            ax.set_ylabel(ylabel, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if by_mode.get(mode):
                ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _xlabel(family: str) -> str:
    if family.startswith("cross") or family.startswith("decode"):
        return "keys Lk"
    if "rows=" in family:
        return "hidden size"
    return "sequence length"


def plots(rows: list[dict], out_dir: str, notes: list[str]) -> list[str]:
    """The PNG files written (none, with a note, without matplotlib)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        notes.append("plots skipped: matplotlib is not installed (pip install 'fastattn[bench]')")
        return []
    written = []
    for name, ops in PLOTS.items():
        unit = "GB/s" if ops[0] in ("decode", "layernorm") else "TFLOP/s"
        if _plot(os.path.join(out_dir, name), _families(rows, ops, "throughput"), unit, _xlabel):
            written.append(name)
    memory = {f: {m: impls for m, impls in modes.items() if m == "fwd+bwd" or
                  ("fwd+bwd" not in modes and m == "fwd")}
              for f, modes in _families(rows, ("attention", "cross"), "peak_mib").items()}
    if memory and _plot(os.path.join(out_dir, "memory.png"), memory, "peak memory (MiB)",
                        _xlabel, modes=None):
        written.append("memory.png")
    return written


def print_notes(notes: list[str], stream=sys.stdout) -> None:
    if notes:
        print("\nNotes:", file=stream)
        for n in notes:
            print(f"  - {n}", file=stream)
