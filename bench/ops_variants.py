"""The variants part: what attention's variants cost, and what they save in T5.

Three groups of kernel calls, each group's members timed interleaved (one
sample of each member in turn, the order reversed every round, so a load
change on a shared machine falls on all of them alike), over one rotation
of input sets that leaves every sample's inputs cold (timing.input_pool):

  window     causal, B=1, H=8, D=64, L=8192 (a quick run: 2048):
             window_size=(127, -1) against full causal attention, forward
             (fwd+bwd at L=4096 on a CPU, 8192 on a GPU; not in a quick
             run): `speedup` = full time / window time, goal >= WINDOW_GOAL
             (10x). Tiles outside the window are skipped, so the window's
             cost follows the window, not L.
  scan       the same window at L = 1024..8192 (quick: 512..2048): time
             per query token against the shortest L's (no goal: flat means
             the cost per token does not grow with L).
  overhead   B=2, H=8, L=1024 (quick CPU: 512), D=64, causal and not: plain
             attention against each variant alone (softcap=30, ALiBi slopes,
             T5's rel_bias with 32 buckets, a window (L, L) that covers every
             key so the work is the same), forward and fwd+bwd (the ALiBi
             slopes are constants; the rel_bias table gets its gradient):
             time / plain time, goal <= OVERHEAD_GOAL (1.10x).

Then T5 (transformers' T5ForConditionalGeneration from a T5Config, random
weights, nothing downloaded): T5-small (d_model 512, 6+6 layers, 8 heads,
d_kv 64) and, on a GPU, T5-base (768, 12+12, 12 heads; left out on a CPU,
where one of its steps at L=2048 takes minutes) at encoder length L in
{512, 1024, 2048}, decoder length 64, B=1 (a quick run: a tiny config,
d_model 64, 1+1 layers, 4 heads, L=128, decoder 16; a quick GPU run
T5-small at L=1024). One training step (forward, loss, backward, SGD
update) of the model swapped by fastattn.swap_modules ("fastattn": T5's
relative bias computed inside the kernels) against the unswapped model
with transformers' "sdpa" and "eager" attention (a materialized
(1, H, Lq, Lk) bias, and its gradient, per attention group), the three
interleaved. Goals: the sdpa step's time / fastattn's >= T5_SPEEDUP_GOAL
(1.3x) at L >= 1024, and fastattn's peak memory below each unswapped
model's by at least the bias and its gradient, 2 * H * Lq * Lk * 4 bytes
for each group with a learned bias (the encoder's self-attention, L x L,
and the decoder's, 64 x 64; T5's cross-attention has none).

Peak memory: on a GPU torch.cuda.max_memory_allocated during one step
minus what was allocated before it; on a CPU the same quantity for torch's
CPU allocator, read from torch.profiler(profile_memory=True): the
allocation and free events of one step in time order, the highest running
total (tensors only: not the interpreter, libraries or the allocator's own
caching, so not the process's RSS).

Gate: every variant against fastattn.reference in fp64 (PyTorch's error in
the same dtype as the yardstick) twice: the timed call's output for the
last GATE_QUERIES queries of the first batch row and head (causal and the
variants align queries to the end of the keys, so those rows are a call of
their own), and the whole call, outputs and every gradient, at L=256
(B=1, H=2). The T5 gate is the model part's: the swapped model's logits
against the unswapped model in fp64.
"""

from __future__ import annotations

import contextlib
import time

import torch

from . import backends, ops_model, shapes, timing
from .peers import Impl
from .runner import Case, Context, Part, _first_line, _row

WINDOW_GOAL = 10.0            # full causal time / window time, at least
OVERHEAD_GOAL = 1.10          # variant time / plain time, at most
T5_SPEEDUP_GOAL = 1.3         # sdpa step time / fastattn step time, at least (L >= 1024)
T5_GOAL_FROM_L = 1024
GATE_QUERIES = 256            # queries of the timed call checked against the reference
GATE_L = 256                  # length of the whole-call check (outputs and gradients)
# T5 steps: fewer, longer samples; the memory-profiled step before them is
# every model's warm-up on a CPU (nothing compiles there).
T5_CPU_BUDGET = timing.Budget(warmup_s=0.0, warmup_calls=0, min_time_s=0.0, min_reps=3,
                              max_reps=20, max_wall_s=10.0)
T5_QUICK_CPU_BUDGET = timing.Budget(warmup_s=0.0, warmup_calls=0, min_time_s=0.1, min_reps=3,
                                    max_reps=200, max_wall_s=1.0)
T5_GPU_BUDGET = timing.Budget(warmup_s=0.0, warmup_calls=2, min_time_s=1.0, min_reps=5,
                              max_reps=50, max_wall_s=10.0)


# ------------------------------------------------------------------ variants


def alibi_slopes(heads: int, device) -> torch.Tensor:
    """ALiBi's geometric slopes 2^(-8 (h + 1) / H)."""
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / heads) for h in range(heads)],
                        dtype=torch.float32, device=device)


def variant_kwargs(s: dict, device, table: torch.Tensor | None = None) -> dict:
    """The fastattn.attention keyword arguments of a member shape's variant."""
    import fastattn
    v = s["variant"]
    if v in ("plain", "full"):
        return {}
    if v == "window":
        return {"window_size": tuple(s["window"])}
    if v == "softcap":
        return {"softcap": float(s["softcap"])}
    if v == "alibi":
        return {"alibi_slopes": alibi_slopes(s["Hq"], device)}
    if v == "rel_bias":
        return {"rel_bias": fastattn.RelativePositionBias(
            table, bidirectional=not s["causal"], max_distance=128)}
    raise ValueError(f"unknown variant {v!r}")


def _table(s: dict, device, seed: int) -> torch.Tensor | None:
    if s["variant"] != "rel_bias":
        return None
    g = torch.Generator(device=device).manual_seed(7000 + seed)
    return torch.randn(s["buckets"], s["Hq"], generator=g, device=device).requires_grad_()


def pairs(s: dict) -> int:
    """(query, key) pairs the call attends, per batch row and head: causal
    bottom-right aligned and the window (i + off - left <= j <= i + off + right)."""
    lq, lk = s["Lq"], s["Lk"]
    off = lk - lq
    i = torch.arange(lq, dtype=torch.int64)
    lo = torch.zeros_like(i)
    hi = torch.full_like(i, lk - 1)
    if s["variant"] == "window":
        left, right = s["window"]
        if left >= 0:
            lo = (i + off - left).clamp(min=0)
        if right >= 0:
            hi = (i + off + right).clamp(max=lk - 1)
    if s["causal"]:
        hi = torch.minimum(hi, i + off)
    return int((hi - lo + 1).clamp(min=0).sum()) * s["B"]


def _work(s: dict) -> dict[str, float]:
    fwd = 4.0 * s["D"] * s["Hq"] * pairs(s)
    return {"fwd": fwd, "fwd+bwd": 3.5 * fwd}


def _size_key(s: dict) -> str:
    return f"{s['B']}x{s['Hq']}x{s['Lq']}x{s['D']}"


# ---------------------------------------------------------- interleaved timing


def measure_interleaved(calls: list, rotation: timing.Rotation, device: torch.device,
                        budget: timing.Budget) -> list[dict]:
    """timing.measure for several calls at once: the warm-up of each, then
    rounds of one sample per call (the order reversed every other round),
    each sample on the next input set of the shared rotation, until every
    call has its minimum count and time (or max_wall_s per call has passed,
    after the minimum count). One summary per call, in order."""
    one = timing._gpu_time_one if device.type == "cuda" else timing._cpu_time_one
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    warm = [[] for _ in calls]
    for n, call in enumerate(calls):
        while (len(warm[n]) < budget.warmup_calls
               or (budget.warmup_s and sum(warm[n]) / 1e3 < budget.warmup_s
                   and len(warm[n]) < timing.MAX_WARMUP_CALLS)):
            (i,) = rotation.take(1)
            warm[n].append(one(call, i))
    warmup_s = time.perf_counter() - start
    samples: list[list[float]] = [[] for _ in calls]
    scrubs_before = rotation.scrubs
    start = time.perf_counter()
    rounds = 0

    def done(s):
        return len(s) >= budget.min_reps and (sum(s) / 1e3 >= budget.min_time_s
                                              or len(s) >= budget.max_reps)
    while not all(done(s) for s in samples):
        if (all(len(s) >= budget.min_reps for s in samples)
                and time.perf_counter() - start >= budget.max_wall_s * len(calls)):
            break
        order = range(len(calls)) if rounds % 2 == 0 else reversed(range(len(calls)))
        for n in order:
            (i,) = rotation.take(1)
            samples[n].append(one(calls[n], i))
        rounds += 1
    wall = time.perf_counter() - start
    out = []
    for n, s in enumerate(samples):
        stats = timing.summarize(s)
        stats.update(noisy=timing.is_noisy(stats),
                     min_time_reached=stats["total_s"] >= budget.min_time_s,
                     warmup_calls=len(warm[n]), warmup_s=warmup_s, sampling_wall_s=wall,
                     interleaved_with=len(calls), **rotation.describe())
        stats["scrubs"] = rotation.scrubs - scrubs_before
        out.append(stats)
    return out


def cpu_peak_mib(call) -> float | None:
    """Peak of torch's CPU allocator during call(), above what was allocated
    before it, in MiB: the running total of torch.profiler's allocation and
    free events in time order (None if this torch's profiler gives none)."""
    from torch.profiler import ProfilerActivity, profile
    try:
        from torch._C._profiler import _EventType
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            call()
        events = []

        def walk(nodes):
            for node in nodes:
                if node.tag == _EventType.Allocation:
                    events.append(node)
                walk(node.children)
        walk(prof.profiler.kineto_results.experimental_event_tree())
    except Exception:  # a private interface: no figure rather than a wrong one
        return None
    if not events:
        return None
    events.sort(key=lambda e: e.start_time_ns)
    total = peak = 0
    for e in events:
        total += e.extra_fields.alloc_size
        peak = max(peak, total)
    return peak / (1 << 20)


def peak_mib(call, device: torch.device) -> float | None:
    if device.type == "cuda":
        return timing.peak_memory_mib(lambda i: call(), device)
    return cpu_peak_mib(call)


# -------------------------------------------------------------- kernel groups


def _goal(what: str, value: float, goal: float | None, higher: bool, unit: str = "x",
          **extra) -> dict:
    return {"what": what, "value": value, "goal": goal, "higher": higher, "unit": unit,
            **extra}


def _make_base(members: list[dict], device, dtype, seed: int) -> dict:
    """One input set holding every size the group's members use: q, k, v and
    the output gradient per size (key '<size>:q', ...)."""
    g = torch.Generator(device=device).manual_seed(6000 + seed)
    base = {}
    for s in members:
        key = _size_key(s)
        if f"{key}:q" in base:
            continue
        for name in ("q", "k", "v", "dy"):
            t = torch.randn(s["B"], s["Hq"], s["Lq"], s["D"], generator=g, device=device,
                            dtype=torch.float32).to(dtype)
            base[f"{key}:{name}"] = t.requires_grad_(name != "dy")
    return base


def _attend(s: dict, q, k, v, backend: str, kwargs: dict):
    import fastattn
    return fastattn.attention(q, k, v, causal=s["causal"], scale=s["D"] ** -0.5,
                              backend=backend, **kwargs)


def _member_call(s: dict, mode: str, sets: list[dict], backend: str, extra: dict,
                 table: torch.Tensor | None):
    key = _size_key(s)
    if mode == "fwd":
        def call(i):
            inp = sets[i]
            with torch.no_grad():
                return _attend(s, inp[f"{key}:q"], inp[f"{key}:k"], inp[f"{key}:v"], backend,
                               extra)
        return call

    def call(i):
        inp = sets[i]
        leaves = [inp[f"{key}:{n}"] for n in ("q", "k", "v")] + (
            [table] if table is not None else [])
        out = _attend(s, *leaves[:3], backend, extra)
        return torch.autograd.grad(out, leaves, inp[f"{key}:dy"])
    return call


def _reference_check(s: dict, q, k, v, out, kwargs: dict, grads=None, dout=None,
                     table=None) -> tuple[bool, str]:
    """out (and grads of q, k, v[, table]) against fastattn.reference in fp64,
    with the reference in the input dtype as PyTorch's yardstick."""
    import fastattn
    from fastattn import reference
    from fastattn.testing import check_close
    results = {}
    for kind, dtype in (("truth", torch.float64), ("baseline", q.dtype)):
        leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
        kw = dict(kwargs)
        tab = None
        if table is not None:
            tab = table.detach().to(torch.float64 if kind == "truth" else table.dtype)
            tab.requires_grad_()
            kw["rel_bias"] = fastattn.RelativePositionBias(
                tab, bidirectional=kwargs["rel_bias"].bidirectional,
                max_distance=kwargs["rel_bias"].max_distance)
        y = reference.attention(*leaves, causal=s["causal"], scale=s["D"] ** -0.5, **kw)
        g = ()
        if grads is not None:
            g = torch.autograd.grad(y, leaves + ([tab] if tab is not None else []),
                                    dout.to(dtype))
        results[kind] = (y.detach(), g)
    checks = [("out", out.detach(), results["truth"][0], results["baseline"][0])]
    for n, name in enumerate(("dq", "dk", "dv", "dtable")[:len(grads or ())]):
        checks.append((name, grads[n], results["truth"][1][n], results["baseline"][1][n]))
    for name, actual, truth, base in checks:
        ok, message = check_close(actual, truth, base, name)
        if not ok:
            return False, message
    return True, f"{len(checks)} checks passed"


def _gate(s: dict, backend: str, device, dtype, with_grad: bool) -> tuple[bool, str]:
    """The timed call's last GATE_QUERIES queries of batch row 0, head 0, and
    the whole call (outputs and gradients) at L=GATE_L."""
    g = torch.Generator(device=device).manual_seed(99)

    def randn(*size):
        return torch.randn(*size, generator=g, device=device, dtype=torch.float32).to(dtype)
    table = _table(s, device, 0)
    kwargs = variant_kwargs(s, device, table)
    B, H, L, D = s["B"], s["Hq"], s["Lq"], s["D"]
    q, k, v = (randn(B, H, L, D) for _ in range(3))
    with torch.no_grad():
        out = _attend(s, q, k, v, backend, kwargs)
    n = min(GATE_QUERIES, L)
    head0 = dict(kwargs)
    if "alibi_slopes" in head0:
        head0["alibi_slopes"] = head0["alibi_slopes"][:1]
    ok, message = _reference_check(
        s, q[:1, :1, L - n:], k[:1, :1], v[:1, :1], out[:1, :1, L - n:], head0,
        table=table[:, :1] if table is not None else None)
    if not ok or not with_grad:
        return ok, message
    small = dict(s, B=1, Hq=2, Lq=min(L, GATE_L), Lk=min(L, GATE_L))
    if s["variant"] == "window" and s["window"][0] >= s["Lq"]:  # a window over every key
        small["window"] = [small["Lq"], small["Lq"]]
    table = _table(small, device, 1)
    kwargs = variant_kwargs(small, device, table)
    leaves = [randn(1, 2, small["Lq"], D).requires_grad_() for _ in range(3)]
    out = _attend(small, *leaves, backend, kwargs)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves + ([table] if table is not None else []), dout)
    ok2, message2 = _reference_check(small, *leaves, out, kwargs, grads, dout, table)
    return ok2, f"{message}; L={small['Lq']} fwd+bwd: {message2}"


def _serves_variants(backend: str, device, dtype) -> str:
    """Empty if `backend` runs the variants here, else why not: window,
    ALiBi and softcap at least (each member's own variant, rel_bias among
    them, is checked by _unserved)."""
    import fastattn
    q = torch.randn(1, 2, 16, 16, device=device).to(dtype)
    try:
        fastattn.attention(q, q, q, backend=backend, window_size=(4, 4), softcap=5.0,
                           alibi_slopes=alibi_slopes(2, device))
    except Exception as exc:
        return _first_line(exc)
    return ""


def _unserved(s: dict, backend: str, device) -> str:
    """Why `backend` does not implement member `s`'s variant ("" if it
    does): the frontend's own rule, without running anything."""
    from fastattn.ops.attention import cuda_variant_limits
    from fastattn.ops.variants import check_variants
    if backend != "cuda":
        return ""
    q = torch.empty(1, s["Hq"], 1, 8, device=device)
    kwargs = variant_kwargs(s, device, _table(s, device, 0))
    variants = check_variants(q, 1, kwargs.get("window_size", (-1, -1)),
                              kwargs.get("alibi_slopes"), kwargs.get("softcap", 0.0),
                              kwargs.get("rel_bias"))
    return cuda_variant_limits(variants, has_mask=False)


def _case(s: dict) -> Case:
    return Case(shape=s, make_inputs=None, grad_names=("q", "k", "v"), work=_work(s),
                unit="TFLOP/s", set_bytes=0, gate=None, modes=tuple(s["modes"]))


def add_goals(rows: list[dict]) -> None:
    """Each member row against its group's baseline row (same mode, backend):
    window speedup, overhead ratio; the scan's time per token against its
    shortest length's."""
    timed = [r for r in rows if r["op"] == "variants" and r["ms"] and "group" in r["shape"]]
    by_group = {}
    for r in timed:
        by_group.setdefault((r["shape"]["group"], r["mode"], r["impl"], r["dtype"]), []).append(r)
    for members in by_group.values():
        role = members[0]["shape"]["role"]
        if role == "scan":
            first = min(members, key=lambda r: r["shape"]["Lq"])
            per = first["ms"] / first["shape"]["Lq"]
            for r in members:
                r["goals"] = [_goal(f"time per token vs L={first['shape']['Lq']}",
                                    r["ms"] / r["shape"]["Lq"] / per, None, False,
                                    us_per_token=1e3 * r["ms"] / r["shape"]["Lq"])]
            continue
        base = next((r for r in members if r["shape"]["baseline"]), None)
        if base is None:
            continue
        for r in members:
            if r is base:
                continue
            if role == "window":
                r["goals"] = [_goal("speedup vs full causal", base["ms"] / r["ms"],
                                    WINDOW_GOAL, True, baseline_ms=base["ms"])]
            else:
                r["goals"] = [_goal("vs plain", r["ms"] / base["ms"], OVERHEAD_GOAL, False,
                                    baseline_ms=base["ms"])]


def _run_group(members: list[dict], mode: str, backend: str, ctx: Context,
               gates: dict) -> list[dict]:
    """One group in one mode: gate each member (once per part: `gates` keeps
    the results, the gradients checked when any of its modes has them), then
    time the members that passed, interleaved."""
    impl = Impl(f"fastattn[{backend}]", run=None, fastattn=True)
    cases = [_case(s) for s in members]
    rows = []
    ok_members = []
    for s, case in zip(members, cases):
        why = _unserved(s, backend, ctx.device)
        if why:
            rows.append(_row(case, impl, mode, ctx, "skipped", why))
            ctx.progress.advance(1)
            continue
        key = (s["group"], shapes.label(s), backend)
        if key not in gates:
            ctx.progress.step(f"{impl.name} {shapes.label(s)} check")
            try:
                ok, message = _gate(s, backend, ctx.device, ctx.dtype,
                                    any(m != "fwd" and m in ctx.modes for m in s["modes"]))
                gates[key] = ("ok" if ok else "FAIL", message)
            except Exception as exc:
                gates[key] = ("error", _first_line(exc))
        status, message = gates[key]
        if status != "ok":
            rows.append(_row(case, impl, mode, ctx, status, message))
            ctx.progress.advance(1)
        else:
            ok_members.append((s, case))
    if not ok_members:
        return rows
    base = _make_base([s for s, _ in ok_members], ctx.device, ctx.dtype, 1)
    sets, rotation = timing.input_pool(base, ctx.device)
    tables = {id(s): _table(s, ctx.device, 2) for s, _ in ok_members}
    calls = [_member_call(s, mode, sets, backend, variant_kwargs(s, ctx.device, tables[id(s)]),
                          tables[id(s)] if mode != "fwd" else None) for s, _ in ok_members]
    ctx.progress.step(f"{impl.name} {members[0]['group']} {mode} ({len(calls)} interleaved)")
    try:
        stats = measure_interleaved(calls, rotation, ctx.device, ctx.budget)
        for (s, case), st, call in zip(ok_members, stats, calls):
            peak = timing.peak_memory_mib(call, ctx.device, rotation)
            rows.append(_row(case, impl, mode, ctx, "ok", stats=st, peak=peak))
    except Exception as exc:
        rows += [_row(case, impl, mode, ctx, "error", _first_line(exc)) for _, case in ok_members]
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
    ctx.progress.advance(len(ok_members))
    del sets, base
    return rows


# ------------------------------------------------------------------------ T5


def t5_bias_bytes(s: dict) -> dict[str, int]:
    """Bytes of T5's materialized relative bias and its gradient, fp32, per
    attention group with a learned bias: 2 * H * Lq * Lk * 4."""
    H = s["heads"]
    return {"encoder": 2 * H * s["src_len"] * s["src_len"] * 4,
            "decoder": 2 * H * s["tgt_len"] * s["tgt_len"] * 4}


def _t5_sizes(s: dict) -> ops_model.Sizes:
    return ops_model.Sizes(s["d"], s["layers"], s["heads"], s["ffn"], s["vocab"], 1,
                           s["src_len"], s["tgt_len"], 0, 0)


def _t5_batch(s: dict, device) -> dict:
    g = torch.Generator().manual_seed(3100 + s["src_len"])
    src = torch.randint(2, s["vocab"], (1, s["src_len"]), generator=g)
    tgt = torch.randint(2, s["vocab"], (1, s["tgt_len"]), generator=g)
    return {"src": src.to(device), "src_pad": torch.zeros_like(src, dtype=torch.bool).to(device),
            "tgt": tgt.to(device), "tgt_pad": torch.zeros_like(tgt, dtype=torch.bool).to(device),
            "tokens": s["src_len"] + s["tgt_len"]}


def t5_impl_names(wanted_peers) -> list[str]:
    return ops_model.variant_names("t5", wanted_peers)


def add_t5_goals(rows: list[dict]) -> None:
    """On fastattn's T5 rows: the sdpa (eager) step time / fastattn's, and
    the peak memory each unswapped model needs above fastattn's against the
    bias and its gradient."""
    t5 = [r for r in rows if r["op"] == "variants" and r["shape"].get("kind") == "t5"]
    by_label = {}
    for r in t5:
        by_label.setdefault((r["label"], r["dtype"]), {})[r["impl"]] = r
    for impls in by_label.values():
        fast = impls.get("fastattn")
        if not fast or not fast["ms"]:
            continue
        s = fast["shape"]
        need = sum(t5_bias_bytes(s).values()) / (1 << 20)
        goals = []
        for peer in ("hf sdpa", "hf eager"):
            p = impls.get(peer)
            if not p or not p["ms"]:
                continue
            time_goal = (T5_SPEEDUP_GOAL if peer == "hf sdpa" and s["src_len"] >= T5_GOAL_FROM_L
                         else None)
            goals.append(_goal(f"speedup vs {peer}", p["ms"] / fast["ms"], time_goal, True))
            if fast["peak_mib"] is not None and p["peak_mib"] is not None:
                goals.append(_goal(f"peak saved vs {peer}", p["peak_mib"] - fast["peak_mib"],
                                   round(need, 2), True, unit=" MiB"))
        fast["goals"] = goals


def _run_t5(s: dict, wanted_peers, ctx: Context) -> list[dict]:
    dev = ctx.device
    if dev.type == "cuda" and ctx.dtype != torch.float32:
        def autocast():
            return torch.autocast("cuda", dtype=ctx.dtype)
    else:
        autocast = contextlib.nullcontext
    names = t5_impl_names(wanted_peers)
    case = Case(shape=s, make_inputs=None, grad_names=(), unit="tokens/s",
                work={"train": s["src_len"] + s["tgt_len"]}, set_bytes=0, gate=None,
                modes=("train",))
    try:
        variants, base = ops_model._variants("t5", _t5_sizes(s), dev, wanted_peers, ctx.notes)
    except Exception as exc:
        ctx.notes.add(f"variants {s['model']}: could not be built ({_first_line(exc)})")
        ctx.progress.advance(len(names))
        return []
    batch = _t5_batch(s, dev)
    gate = ops_model._gate("t5", base, autocast, variants)
    rows, timed = [], []
    for name in names:
        model = variants[name]
        impl = Impl(name, run=None, fastattn=name == "fastattn")
        if impl.fastattn:
            ctx.progress.step(f"{shapes.label(s)} fastattn check")
            try:
                ok, message = gate(impl, batch, False)
                status = "ok" if ok else "FAIL"
            except Exception as exc:
                status, message = "error", _first_line(exc)
            if status != "ok":
                rows.append(_row(case, impl, "train", ctx, status, message))
                ctx.progress.advance(1)
                continue
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)

        def step(i=0, model=model, optimizer=optimizer):
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                loss = ops_model._loss("t5", model, batch)
            loss.backward()
            optimizer.step()
        ctx.progress.step(f"{shapes.label(s)} {name} peak memory")
        try:
            peak = peak_mib(step, dev)
            timed.append((impl, step, peak))
        except Exception as exc:
            rows.append(_row(case, impl, "train", ctx, "error", _first_line(exc)))
            ctx.progress.advance(1)
    del base
    if timed:
        ctx.progress.step(f"{shapes.label(s)} train ({len(timed)} interleaved)")
        budget = (T5_GPU_BUDGET if dev.type == "cuda"
                  else T5_QUICK_CPU_BUDGET if s["quick"] else T5_CPU_BUDGET)
        try:
            stats = measure_interleaved([t[1] for t in timed], timing.warm_rotation(1), dev,
                                        budget)
            rows += [_row(case, impl, "train", ctx, "ok", stats=st, peak=peak)
                     for (impl, _, peak), st in zip(timed, stats)]
        except Exception as exc:
            rows += [_row(case, impl, "train", ctx, "error", _first_line(exc))
                     for impl, _, _ in timed]
        ctx.progress.advance(len(timed))
    del variants
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------------- plan


def plan(quick: bool, wanted_backends, wanted_peers, ctx: Context,
         groups: dict | None = None) -> Part | None:
    """The variants part (None, with a note, if nothing can be timed);
    `groups` replaces shapes.variants_grid (tests)."""
    import fastattn
    if not hasattr(fastattn, "RelativePositionBias"):
        ctx.notes.add("variants: this build of fastattn has no attention variants; part skipped")
        return None
    chosen = []
    for b in backends.timeable("attention", wanted_backends, ctx.device, ctx.dtype, ctx.notes):
        why = _serves_variants(b, ctx.device, ctx.dtype)
        if why:
            ctx.notes.add(f"variants: fastattn[{b}] left out, it serves no variants ({why})")
        else:
            chosen.append(b)
    groups = groups or shapes.variants_grid(quick, ctx.device.type)
    kernel = [(g, m) for g in groups["kernels"] for m in g[0]["modes"] if m in ctx.modes]
    if not chosen:
        ctx.notes.add(f"variants: no fastattn backend serves the variants on {ctx.device.type}; "
                      "kernel groups skipped")
        kernel = []
    t5 = []
    try:
        import transformers  # noqa: F401
        t5 = groups["t5"]
    except ImportError:
        ctx.notes.add("variants: transformers is not installed; T5 left out")
    if ctx.device.type == "cpu" and not quick and t5:
        ctx.notes.add("variants: T5-base left out on a CPU (one training step at L=2048 takes "
                      "minutes on a few cores); a GPU run includes it")
    n_t5 = len(t5_impl_names(wanted_peers))
    steps = sum(len(g) for g, _ in kernel) * len(chosen) + n_t5 * len(t5)
    if not steps:
        return None

    def run():
        rows, gates = [], {}
        for n, (members, mode) in enumerate(kernel):
            if time.monotonic() > ctx.deadline:
                ctx.notes.add(f"variants: {len(kernel) - n} of {len(kernel)} kernel groups not "
                              "run (time budget, --max-minutes)")
                ctx.progress.advance(sum(len(g) for g, _ in kernel[n:]) * len(chosen))
                break
            for backend in chosen:
                rows += _run_group(members, mode, backend, ctx, gates)
        for n, s in enumerate(t5):
            if time.monotonic() > ctx.deadline:
                ctx.notes.add(f"variants: {len(t5) - n} of {len(t5)} T5 configurations not run "
                              "(time budget, --max-minutes)")
                ctx.progress.advance(n_t5 * (len(t5) - n))
                break
            rows += _run_t5(s, wanted_peers, ctx)
        if t5:
            ctx.notes.add("variants: T5 peak memory is "
                          + ("torch.cuda.max_memory_allocated during one training step, above "
                             "what was allocated before it" if ctx.device.type == "cuda" else
                             "the peak of torch's CPU allocator during one training step, above "
                             "what was allocated before it (torch.profiler profile_memory "
                             "events; tensors only, not the process's RSS)"))
            for s in t5:
                b = t5_bias_bytes(s)
                ctx.notes.add(
                    f"variants {shapes.label(s)}: bias + its gradient 2*H*Lq*Lk*4 = "
                    f"{b['encoder'] / 2**20:.2f} MiB (encoder, {s['src_len']}x{s['src_len']}) "
                    f"+ {b['decoder'] / 2**20:.2f} MiB (decoder, {s['tgt_len']}x{s['tgt_len']}) "
                    f"= {sum(b.values()) / 2**20:.2f} MiB: the peak saving goal")
        ctx.notes.add("variants: each group's calls (and the T5 models) timed interleaved, "
                      "one sample of each in turn")
        add_goals(rows)
        add_t5_goals(rows)
        return rows
    return Part("variants", ctx, steps, run)
