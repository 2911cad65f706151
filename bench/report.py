"""What the benchmark shows and stores: progress bar, table, JSON, markdown, plots.

Every result is a row (runner._row): one implementation, one shape, one
mode. `add_speedups` relates each row to fastattn's fastest backend on the
same shape and mode: `fastattn_x` = this row's time / that backend's time
(above 1: fastattn is faster), and fastattn rows carry `speedup_vs`, their
ratio to every peer.

Flags, in the terminal table and bench.md alike (and as fields of bench.json):
  ?   after the time and throughput: the row is noisy, its samples' IQR
      exceeds NOISY_IQR (10%) of their median (`noisy`: true)
  !   after "% ceiling": above 100% of the ceiling measured in this run,
      which no honest measurement can be (`above_ceiling`: true); a note
      says what it means
  *   after a ratio to a goal (uneven padding: time over the work-proportional
      time; per call: fastattn's time over torch's; row field `ratio`): above
      the goal. Those parts also get a summary table after the others. The
      variants part's rows carry a list of such figures (`goals`: a speedup
      or a memory saving, which must reach its goal, "goal >=", or a ratio
      that must stay below it, "goal <="; no goal: shown only); * marks one
      on the wrong side.
Plots follow flash-attention's README: throughput against sequence length
(hidden size for norms) per implementation, with the samples' interquartile
range as error bars; every implementation has one colour in every plot
(`COLOURS`), and every title names the dtype and the device.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import zlib
from collections import defaultdict

from .timing import NOISY_IQR

NOISY_MARK = "?"
CEILING_MARK = "!"
GOAL_MARK = "*"
# Parts timed warm on purpose (whole models; tiny calls); a shape with
# "warm": true (the variants part's T5 models) is too.
WARM_OPS = ("model", "percall")

# ---------------------------------------------------------------- progress


class Progress:
    """A one-line progress bar on stderr (a line per 5% or 15 s when not a
    terminal). Its total is set once, before anything runs."""

    def __init__(self, total: int = 0, stream=sys.stderr):
        self.stream = stream
        self.total = total
        self.done = 0
        self.label = ""
        self.start = time.monotonic()
        self.tty = stream.isatty()
        self._last_logged = -1.0
        self._last_time = 0.0

    def set_total(self, n: int) -> None:
        self.total = n
        self.start = time.monotonic()
        self._draw()

    def step(self, label: str) -> None:
        self.label = label
        self._draw()

    def advance(self, n: int = 1) -> None:
        self.done = min(self.total, self.done + n)
        self._draw()

    def line(self) -> str:
        frac = self.done / self.total if self.total else 0.0
        elapsed = time.monotonic() - self.start
        width = 24
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        eta = ""
        if 0 < self.done < self.total:
            left = elapsed * (self.total - self.done) / self.done
            eta = f" eta {int(left) // 60}:{int(left) % 60:02d}"
        return (f"[{bar}] {self.done}/{self.total} {int(elapsed) // 60}:{int(elapsed) % 60:02d}"
                f"{eta} {self.label}")

    def _draw(self) -> None:
        frac = self.done / self.total if self.total else 0.0
        elapsed = time.monotonic() - self.start
        line = self.line()
        if self.tty:
            cols = shutil.get_terminal_size((100, 20)).columns
            self.stream.write("\r" + line[:cols - 1].ljust(cols - 1))
            self.stream.flush()
        elif frac - self._last_logged >= 0.05 or elapsed - self._last_time >= 15:
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


def flag_notes(rows: list[dict], ceilings: dict, notes: set[str]) -> None:
    """Notes explaining the flags the rows carry (added only where they occur)."""
    timed = [r for r in rows if r["status"] == "ok" and r["ms"]]
    noisy = [r for r in timed if r.get("noisy")]
    above = [r for r in timed if r.get("above_ceiling")]
    if noisy:
        notes.add(f"{len(noisy)} of {len(timed)} timed rows are noisy (marked {NOISY_MARK}): "
                  f"the interquartile range of their samples exceeds {NOISY_IQR:.0%} of the "
                  "median, so the median (and any comparison with it) is uncertain; rerun on "
                  "an idle machine")
    if above:
        notes.add(f"{len(above)} row(s) above 100% of their ceiling (marked {CEILING_MARK}): "
                  "no kernel can beat the copy or the matmul measured in the same run, so "
                  "such a figure is not a fraction of the hardware bound but a sign that the "
                  "measurement is off: the ceiling itself was measured low (a busy machine; "
                  "see its spread), the row's data was partly served from a cache, or the "
                  "row is noisy; its time is still what was measured")
    for name, stats in ceilings.get("measurements", {}).items():
        if stats.get("noisy"):
            notes.add(f"ceiling {name} is noisy (IQR {stats['iqr_rel']:.0%} of its median): "
                      "every '% ceiling' relative to it is uncertain")
    untimed_cold = [r for r in timed if r["op"] not in WARM_OPS and r.get("timing")
                    and not r["timing"].get("cold") and not r["shape"].get("warm")]
    if untimed_cold:
        notes.add(f"{len(untimed_cold)} row(s) timed with warm caches (no memory for the "
                  "input rotation or the scrub buffer)")


def ordered_notes(notes: set[str]) -> list[str]:
    """Warnings about the machine first, then what the flags mean, then the rest."""
    def rank(n: str) -> tuple[int, str]:
        if n.startswith("the machine was busy"):
            return (0, "0" if "at the start" in n else "1")
        if "marked" in n or n.startswith("ceiling ") or "warm caches" in n:
            return (1, n)
        return (2, n)
    return sorted(notes, key=rank)


# ------------------------------------------------------------------ tables


def _fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _ceiling_cell(fraction) -> str:
    if fraction is None:
        return ""
    if fraction > 1.0:
        return f"{100 * fraction:.0f}%{CEILING_MARK}"
    return f"{100 * fraction:.0f}%"


def _flags(r: dict) -> list[str]:
    flags = []
    t = r.get("timing") or {}
    if r.get("noisy"):
        flags.append(f"noisy (IQR {t.get('iqr_rel', 0):.0%})")
    if r.get("above_ceiling"):
        flags.append("above ceiling")
    if t and not t.get("min_time_reached", True):
        flags.append(f"short: {t['total_s']:.2f} s of samples")
    return flags


def ratio_text(r: dict) -> str:
    """E.g. '1.23x work-proportional (goal <= 1.1x)', GOAL_MARK after a ratio above its goal."""
    q = r["ratio"]
    mark = GOAL_MARK if q["value"] > q["goal"] else ""
    return f"{q['value']:.2f}x{mark} {q['what']} (goal <= {q['goal']}x)"


def missed(g: dict) -> bool:
    """A `goals` entry on the wrong side of its goal (none: never)."""
    if g.get("goal") is None:
        return False
    return g["value"] < g["goal"] if g.get("higher") else g["value"] > g["goal"]


def goal_text(g: dict) -> str:
    """E.g. '17.3x speedup vs full causal (goal >= 10.0x)', '250 MiB peak saved
    vs hf sdpa (goal >= 256.25 MiB)'; GOAL_MARK after a missed goal."""
    unit = g.get("unit", "x")
    value = f"{g['value']:.2f}{unit}" if unit == "x" else f"{g['value']:.1f}{unit}"
    text = f"{value}{GOAL_MARK if missed(g) else ''} {g['what']}"
    if g.get("goal") is not None:
        text += f" (goal {'>=' if g.get('higher') else '<='} {g['goal']}{unit})"
    return text


def _cells(r: dict) -> list[str]:
    if r["status"] != "ok":
        return [r["status"]] + [""] * (len(HEADER) - 5) + [r["message"].splitlines()[0][:70]]
    t = r.get("timing") or {}
    mark = NOISY_MARK if r.get("noisy") else ""
    value = r["throughput"]
    spread = f"{t['min_ms']:.3g}-{t['max_ms']:.3g}" if t else ""
    iqr = f"{100 * t['iqr_rel']:.0f}%" if t else ""
    return [_fmt(r["ms"], ".3f") + mark, spread, iqr,
            _fmt(value, ".0f" if value and value >= 100 else ".3g") + (mark if value else ""),
            _ceiling_cell(r["ceiling_fraction"]),
            "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}",
            _fmt(r.get("fastattn_x"), ".2f"), str(t.get("n", "")),
            "; ".join(([ratio_text(r)] if r.get("ratio") else [])
                      + [goal_text(g) for g in r.get("goals", ())] + _flags(r))]


HEADER = ["shape", "mode", "implementation", "ms", "min-max ms", "IQR", "{unit}", "% ceiling",
          "peak MiB", "fastattn x", "n", "note"]
LEGEND = (f"ms = median of n samples; IQR = interquartile range / median; "
          f"{NOISY_MARK} = noisy (IQR > {NOISY_IQR:.0%}); {CEILING_MARK} = above the ceiling "
          "(not a valid fraction, see the notes); fastattn x = this time / fastattn's best time")


def _sections(rows: list[dict]):
    sections = defaultdict(list)
    for r in rows:
        sections[(r["op"], r["dtype"], r["unit"])].append(r)
    return sections.items()


GOAL_TITLES = {"uneven": "uneven padding: time / work-proportional time (the unpadded "
                         "call's time x the valid fraction of the scores)",
               "percall": "per call: microseconds, and fastattn's time / torch's",
               "variants": "attention variants: window speedup, variant overhead, T5 "
                           "step time and peak memory"}
GOAL_HEADER = {"uneven": ["shape", "mode", "implementation", "ms", "work-prop. ms", "ratio",
                          "goal"],
               "percall": ["shape", "mode", "implementation", "us", "torch us", "ratio", "goal"],
               "variants": ["shape", "mode", "implementation", "ms", "what", "value", "goal"]}


def goal_tables(rows: list[dict]) -> list[tuple[str, list[list[str]]]]:
    """(title, table with a header row) per part and dtype whose rows carry a
    ratio to a goal (uneven, percall); GOAL_MARK after a ratio above its goal."""
    out = []
    for (op, dtype, _unit), section in _sections(rows):
        ratios = [r for r in section if r.get("ratio") or r.get("goals")]
        if op not in GOAL_TITLES or not ratios:
            continue
        table = [GOAL_HEADER[op]]
        for r in ratios:
            if op == "variants":
                for g in r["goals"]:
                    unit = g.get("unit", "x")
                    value = (f"{g['value']:.2f}{unit}" if unit == "x"
                             else f"{g['value']:.1f}{unit}")
                    goal = ("" if g.get("goal") is None else
                            f"{'>=' if g.get('higher') else '<='} {g['goal']}{unit}")
                    table.append([r["label"], r["mode"], r["impl"], f"{r['ms']:.3f}", g["what"],
                                  value + (GOAL_MARK if missed(g) else ""), goal])
                continue
            q = r["ratio"]
            mark = GOAL_MARK if q["value"] > q["goal"] else ""
            if op == "uneven":
                times = [f"{r['ms']:.3f}", f"{q['expected_ms']:.3f}"]
            else:
                times = [f"{r['ms'] * 1e3:.2f}", f"{q['peer_us']:.2f}"]
            table.append([r["label"], r["mode"], r["impl"]] + times
                         + [f"{q['value']:.2f}x{mark}", f"<= {q['goal']}x"])
        mark = "on the wrong side of" if op == "variants" else "above"
        what = f"{dtype}, {_unit}" if op == "variants" else dtype
        out.append((f"{GOAL_TITLES[op]} ({what}); {GOAL_MARK} = {mark} the goal", table))
    return out


def _ceiling_text(unit: str, dtype: str, ceilings: dict) -> str:
    if unit == "tokens/s":
        return "none (whole models)"
    if unit == "calls/s":
        return "none (per-call cost)"
    if unit == "GB/s":
        return f"copy {ceilings['copy_GBps']:.3g} GB/s"
    table = ceilings["matmul_TFLOPs"]
    name = dtype if dtype in table else next(iter(table))
    return f"{name} matmul {table[name]:.3g} TFLOP/s"


def terminal_table(rows: list[dict], ceilings: dict) -> str:
    out = [f"\n{LEGEND}"]
    for (op, dtype, unit), section in _sections(rows):
        out.append(f"\n== {op} ({dtype}): {unit}; ceiling = {_ceiling_text(unit, dtype, ceilings)} ==")
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
    for title, table in goal_tables(rows):
        out.append(f"\n== {title} ==")
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for row in table:
            out.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return "\n".join(out)


def _load_text(env: dict) -> str:
    load = env.get("load") or {}
    parts = []
    for when in ("start", "end"):
        if when in load:
            s = load[when]
            parts.append(f"{when} {s['loadavg'][0]:.2f} ({s['others_per_core']:.2f} per core "
                         f"from other processes{', BUSY' if s['busy'] else ''})")
    if not parts:
        return ""
    return (f"Load average (1 min) on {load.get('cores', '?')} cores: " + "; ".join(parts)
            + f"; warning threshold {load.get('threshold_per_core', '?')} per core.")


def _version_text(env: dict) -> str:
    text = f"fastattn {env.get('fastattn_version', '?')}"
    if env.get("commit"):
        text += f", commit {env['commit']}"
        if env.get("git_dirty"):
            text += " with uncommitted changes"
    return text + f" (from {env.get('revision_source', '?')})"


def markdown(rows: list[dict], env: dict, ceilings: dict, notes: list[str],
             settings: dict | None = None) -> str:
    m = ceilings.get("measurements", {})

    def spread(name):
        s = m.get(name)
        if not s:
            return ""
        threads = f", {s['threads']} thread(s)" if s.get("threads") and name != "copy" else ""
        return (f" (fastest of {s['n']} samples{threads}; their IQR {s['iqr_rel']:.0%}"
                f"{', noisy' if s.get('noisy') else ''})")
    copy_how = m.get("copy", {}).get("pattern", "")
    budget = (settings or {}).get("budget", {})
    cache = env.get("cache", {})
    lines = ["# fastattn benchmark", "",
             f"{env.get('gpu') or env.get('cpu')}, torch {env['torch']}, triton {env['triton']}, "
             f"{_version_text(env)}, {env['date']}", ""]
    load = _load_text(env)
    if load:
        lines += [load, ""]
    lines += [f"Ceilings measured in this run: copy {ceilings['copy_GBps']:.3g} GB/s "
              f"({copy_how}){spread('copy')}; "
              + ", ".join(f"{k} matmul {v:.3g} TFLOP/s{spread('matmul ' + k)}"
                          for k, v in ceilings["matmul_TFLOPs"].items()), ""]
    if budget:
        calls = budget["warmup_calls"]
        lines += [f"Timing: warm-up of at least {calls} call{'s' if calls > 1 else ''} and "
                  f"{budget['warmup_s']} s, then samples until they add up to "
                  f"{budget['min_time_s']} s and number at least {budget['min_reps']}; "
                  f"inputs rotated (or the cache scrubbed) past the {cache.get('what', 'cache')} "
                  "so every sample reads cold data (docs/BENCHMARKS.md).", ""]
    lines += [LEGEND + ".", ""]
    for (op, dtype, unit), section in _sections(rows):
        lines += [f"## {op} ({dtype}, {unit}; ceiling {_ceiling_text(unit, dtype, ceilings)})", "",
                  "| " + " | ".join(h.format(unit=unit) for h in HEADER) + " |",
                  "|" + "---|" * len(HEADER)]
        for r in section:
            cells = [r["label"], r["mode"], r["impl"]] + _cells(r)
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
        lines.append("")
    for title, table in goal_tables(rows):
        lines += [f"## {title}", "", "| " + " | ".join(table[0]) + " |",
                  "|" + "---|" * len(table[0])]
        lines += ["| " + " | ".join(row) + " |" for row in table[1:]]
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

# One colour per implementation, the same in every plot. " add+norm"
# variants share their peer's colour (with an x marker); unknown names get
# a stable one from FALLBACK_COLOURS (by a hash of the name).
COLOURS = {
    "fastattn[cuda]": "#1f77b4", "fastattn[triton]": "#9467bd", "fastattn[cpu]": "#17becf",
    "fastattn[reference]": "#7f7f7f", "fastattn": "#0b3d91", "fastattn unpad": "#6baed6",
    "torch eager": "#ff7f0e", "torch": "#ff7f0e", "torch.compile": "#d62728",
    "liger": "#2ca02c", "apex": "#8c564b",
    "sdpa-flash": "#e377c2", "sdpa-efficient": "#bcbd22", "sdpa-cudnn": "#98df8a",
    "sdpa-math": "#c49c94", "flex": "#ff9896", "eager": "#7b4173",
    "flash_attn": "#000000", "xformers": "#c5b0d5",
    "hf sdpa": "#dd1c77", "hf eager": "#637939",
}
FALLBACK_COLOURS = ("#393b79", "#e6550d", "#31a354", "#756bb1", "#636363", "#843c39",
                    "#3182bd", "#d6616b", "#8ca252", "#bd9e39")
ORDER = {name: n for n, name in enumerate(COLOURS)}


def colour(impl: str) -> str:
    key = impl.removesuffix(" add+norm")
    if key in COLOURS:
        return COLOURS[key]
    return FALLBACK_COLOURS[zlib.crc32(key.encode()) % len(FALLBACK_COLOURS)]


def _impl_order(impl: str):
    return (ORDER.get(impl.removesuffix(" add+norm"), len(ORDER)), impl)


TITLES = {"attention": "self-attention", "cross": "cross-attention",
          "decode": "decoding (one query over a KV cache)", "layernorm": "norms",
          "memory": "peak memory of attention and cross-attention",
          "model": "whole encoder-decoders"}
# file stem -> (ops, value key, y label)
LINE_PLOTS = {"attention": (("attention",), "throughput", "TFLOP/s"),
              "cross": (("cross",), "throughput", "TFLOP/s"),
              "decode": (("decode",), "throughput", "GB/s"),
              "layernorm": (("layernorm",), "throughput", "GB/s"),
              "memory": (("attention", "cross"), "peak_mib", "peak memory (MiB)")}
MODE_ORDER = ["fwd", "bwd", "fwd+bwd", "train", "infer", "generate"]


def _interval(r: dict, key: str):
    """(low, high) of a row's value over its samples' interquartile range."""
    t = r.get("timing") or {}
    if key != "throughput" or not t or not r["ms"]:
        return r[key], r[key]
    return r[key] * r["ms"] / t["q3_ms"], r[key] * r["ms"] / max(t["q1_ms"], 1e-12)


def _families(rows: list[dict], ops: tuple[str, ...], key: str):
    """{family: {mode: {impl: [(x, value, low, high)]}}}."""
    data = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in rows:
        if r["op"] in ops and r["status"] == "ok" and r.get(key) is not None:
            low, high = _interval(r, key)
            data[r["family"]][r["mode"]][r["impl"]].append((r["x"], r[key], low, high))
    return data


XLABELS = {"attention": "sequence length", "cross": "keys Lk", "decode": "keys Lk (KV cache)",
           "layernorm": "hidden size", "memory": "keys Lk (= L for self-attention)"}


LEGEND_IN = 2.0   # inches on the right for the legend


def _figure(plt, rows: int, cols: int, panel_w: float, panel_h: float):
    """A grid of panels plus room for the legend and a title of ~90 characters."""
    width = max(cols * panel_w, 6.5) + LEGEND_IN
    return plt.subplots(rows, cols, squeeze=False, figsize=(width, rows * panel_h + 0.7))


def _finish(fig, plt, path: str, handles: dict, title: str) -> None:
    fig.suptitle(title, fontsize=10)
    width, height = fig.get_size_inches()
    right = 1 - LEGEND_IN / width
    if handles:
        names = sorted(handles, key=_impl_order)
        fig.legend([handles[n] for n in names], names, loc="center left",
                   bbox_to_anchor=(right + 0.01, 0.5), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0, right, 1 - 0.5 / height))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _line_plot(path: str, families: dict, key: str, ylabel: str, xlabel: str, title: str,
               tag: str, memory: bool = False) -> bool:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if memory:  # one panel per family: fwd+bwd where timed, else fwd
        families = {f: {m: impls for m, impls in modes.items()
                        if m == "fwd+bwd" or ("fwd+bwd" not in modes and m == "fwd")}
                    for f, modes in families.items()}
    if not families:
        return False
    all_modes = sorted({m for f in families.values() for m in f}, key=MODE_ORDER.index)
    fig, axes = _figure(plt, len(families), len(all_modes), 4.2, 3.2)
    handles = {}
    for row, (family, by_mode) in enumerate(families.items()):
        for col, mode in enumerate(all_modes):
            ax = axes[row][col]
            for impl, points in sorted(by_mode.get(mode, {}).items(),
                                       key=lambda kv: _impl_order(kv[0])):
                points.sort()
                xs, ys = [p[0] for p in points], [p[1] for p in points]
                fast = impl.startswith("fastattn")
                style = "-o" if fast else ("--x" if impl.endswith(" add+norm") else "--.")
                line, = ax.plot(xs, ys, style, color=colour(impl),
                                linewidth=2 if fast else 1, markersize=5 if fast else 6)
                if not memory:
                    ax.errorbar(xs, ys, yerr=[[y - p[2] for y, p in zip(ys, points)],
                                              [p[3] - y for y, p in zip(ys, points)]],
                                fmt="none", ecolor=colour(impl), elinewidth=1, capsize=2)
                handles.setdefault(impl, line)
            ax.set_xscale("log", base=2)
            ax.set_title(f"{family}, {mode} ({tag})", fontsize=8)
            ax.set_xlabel(xlabel, fontsize=8)
            ax.set_ylabel(ylabel, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    _finish(fig, plt, path, handles, title)
    return True


def _model_plot(path: str, rows: list[dict], title: str, tag: str) -> bool:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in rows if r["op"] == "model" and r["status"] == "ok" and r["throughput"]]
    if not rows:
        return False
    modes = sorted({r["mode"] for r in rows}, key=MODE_ORDER.index)
    models = list(dict.fromkeys(r["shape"]["model"] for r in rows))
    impls = sorted({r["impl"] for r in rows}, key=_impl_order)
    fig, axes = _figure(plt, 1, len(modes), 1.2 + 1.6 * len(models), 3.6)
    handles = {}
    for col, mode in enumerate(modes):
        ax = axes[0][col]
        for n, model in enumerate(models):
            # bars of the implementations this model ran, side by side around n
            present = [(impl, r) for impl in impls for r in rows
                       if r["mode"] == mode and r["impl"] == impl and r["shape"]["model"] == model]
            width = 0.8 / max(len(present), 1)
            for k, (impl, r) in enumerate(present):
                low, high = _interval(r, "throughput")
                bars = ax.bar([n - 0.4 + width * (k + 0.5)], [r["throughput"]], width,
                              color=colour(impl),
                              yerr=[[r["throughput"] - low], [high - r["throughput"]]],
                              capsize=2, error_kw={"elinewidth": 1})
                handles.setdefault(impl, bars)
        ax.set_xticks(range(len(models)), models, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("tokens/s", fontsize=8)
        ax.set_title(f"{mode} ({tag})", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, axis="y")
    _finish(fig, plt, path, handles, title)
    return True


def plots(rows: list[dict], out_dir: str, notes: list[str], device: str,
          device_type: str) -> list[str]:
    """The PNG files written (none, with a note, without matplotlib). One
    file per plot and dtype (the dtype in its name when the run has several)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        notes.append("plots skipped: matplotlib is not installed (pip install 'fastattn[bench]')")
        return []
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    written = []
    for dtype in dtypes:
        mine = [r for r in rows if r["dtype"] == dtype]
        suffix = f"_{dtype}" if len(dtypes) > 1 else ""
        tag = f"{dtype}, {device_type}"
        for stem, (ops, key, ylabel) in LINE_PLOTS.items():
            name = f"{stem}{suffix}.png"
            title = f"fastattn benchmark: {TITLES[stem]}, {dtype} on {device}"
            if _line_plot(os.path.join(out_dir, name), _families(mine, ops, key), key, ylabel,
                          XLABELS[stem], title, tag, memory=stem == "memory"):
                written.append(name)
        name = f"model{suffix}.png"
        title = f"fastattn benchmark: {TITLES['model']}, {dtype} on {device}"
        if _model_plot(os.path.join(out_dir, name), mine, title, tag):
            written.append(name)
    return written


def print_notes(notes: list[str], stream=sys.stdout) -> None:
    if notes:
        print("\nNotes:", file=stream)
        for n in notes:
            print(f"  - {n}", file=stream)
