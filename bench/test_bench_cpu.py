"""CPU regression benchmarks with pytest-benchmark (not part of the test suite).

    pytest bench/test_bench_cpu.py --benchmark-autosave        # record a run
    pytest bench/test_bench_cpu.py --benchmark-compare         # against the last one

Times fastattn's compiled `cpu` backend (norms; attention once that backend
implements it) on fixed shapes, so a slowdown between commits shows up in
the comparison. Each benchmarked result is also checked against the fp64
reference, so a fast wrong kernel fails here too. Skipped, with the reason,
where the cpu backend is not built. The default `pytest` run (testpaths =
tests) does not collect this file.

The last tests are plain ones (a few seconds, no pytest-benchmark needed):
the benchmark's uneven-padding and per-call parts run end to end at tiny
sizes, and the model part's list of models and implementations is checked.

    pytest bench/test_bench_cpu.py -k "uneven or percall or model or pack"
"""

from __future__ import annotations

import pytest
import torch

import fastattn
from fastattn import _backends, reference
from fastattn.testing import assert_close

CPU = torch.device("cpu")
NORM_SHAPES = [(4096, 768), (1024, 4096), (257, 1000)]
ATTENTION_SHAPES = [(4, 12, 128, 64), (2, 12, 512, 64), (1, 8, 1000, 80)]


def _skip_unless_cpu(family: str):
    why = (_backends.unavailable_reason("cpu", family, CPU)
           if family in _backends.OP_BACKENDS else f"fastattn has no {family} op")
    return pytest.mark.skipif(bool(why), reason=why or "available")


def _norm_call(norm: str, x, residual, weight, bias):
    if norm == "layer_norm":
        return lambda m: m.layer_norm(x, x.shape[-1:], weight, bias, **_cpu(m))
    if norm == "rms_norm":
        return lambda m: m.rms_norm(x, x.shape[-1:], weight, 1e-6, **_cpu(m))
    if norm == "add_layer_norm":
        return lambda m: m.add_layer_norm(x, residual, weight, bias, **_cpu(m))
    return lambda m: m.add_rms_norm(x, residual, weight, 1e-6, **_cpu(m))


def _cpu(module) -> dict:
    return {"backend": "cpu"} if module is fastattn else {}


@_skip_unless_cpu("norm")
@pytest.mark.parametrize("rows,hidden", NORM_SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("norm", ["layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm"])
def test_norm_forward(benchmark, norm, rows, hidden):
    x = torch.randn(rows, hidden)
    residual = torch.randn(rows, hidden)
    weight = 1 + 0.1 * torch.randn(hidden)
    bias = 0.1 * torch.randn(hidden)
    call = _norm_call(norm, x, residual, weight, bias)
    out = benchmark(call, fastattn)
    truth = _norm_call(norm, x.double(), residual.double(), weight.double(), bias.double())(
        reference)
    baseline = _norm_call(norm, x, residual, weight, bias)(reference)
    assert_close(out, truth, baseline)


@_skip_unless_cpu("norm")
@pytest.mark.parametrize("rows,hidden", NORM_SHAPES[:2], ids=lambda v: str(v))
def test_layer_norm_forward_backward(benchmark, rows, hidden):
    x = torch.randn(rows, hidden, requires_grad=True)
    weight = (1 + 0.1 * torch.randn(hidden)).requires_grad_()
    bias = (0.1 * torch.randn(hidden)).requires_grad_()
    dy = torch.randn(rows, hidden)

    def step():
        y = fastattn.layer_norm(x, (hidden,), weight, bias, backend="cpu")
        return torch.autograd.grad(y, (x, weight, bias), dy)
    dx, _, _ = benchmark(step)
    x64 = x.detach().double().requires_grad_()
    y64 = reference.layer_norm(x64, (hidden,), weight.detach().double(), bias.detach().double())
    (truth,) = torch.autograd.grad(y64, x64, dy.double())
    x32 = x.detach().requires_grad_()
    (baseline,) = torch.autograd.grad(
        torch.nn.functional.layer_norm(x32, (hidden,), weight.detach(), bias.detach()), x32, dy)
    assert_close(dx, truth, baseline, "dx")


@_skip_unless_cpu("attention")
@pytest.mark.parametrize("B,H,L,D", ATTENTION_SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("causal", [False, True])
def test_attention_forward(benchmark, B, H, L, D, causal):
    q, k, v = (torch.randn(B, H, L, D) for _ in range(3))
    out = benchmark(lambda: fastattn.attention(q, k, v, causal=causal, backend="cpu"))
    truth = reference.attention(q.double(), k.double(), v.double(), causal=causal)
    baseline = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    assert_close(out, truth, baseline)


# ------------------------------------------- the benchmark's own parts, tiny

# Not pytest-benchmark: these run the uneven-padding and per-call parts of
# `fastattn-bench` end to end (gate, timing, ratios, report) at tiny sizes
# with a tiny timing budget, in a few seconds.

import io  # noqa: E402

from fastattn.bench import (ops_model, ops_percall, ops_uneven, report, runner,  # noqa: E402
                            shapes, timing)

TINY_BUDGET = timing.Budget(warmup_s=0.0, warmup_calls=1, min_time_s=0.0, min_reps=3,
                            max_reps=3, max_wall_s=0.5)
CEILINGS = {"copy_GBps": 10.0, "matmul_TFLOPs": {"float32": 0.1}, "measurements": {}}


@pytest.fixture
def ctx(monkeypatch):
    """A Context on the CPU, with a 1 MiB 'cache' (small arena, no big scrub)."""
    monkeypatch.setattr(timing, "cache_bytes", lambda device: 1 << 20)
    monkeypatch.setattr(timing, "_ARENAS", {})
    monkeypatch.setattr(timing, "_SCRUBS", {})
    return runner.Context(device=CPU, dtype=torch.float32, budget=TINY_BUDGET,
                          ceilings=CEILINGS, progress=report.Progress(stream=io.StringIO()),
                          modes=("fwd", "bwd", "fwd+bwd"))


def _uneven_shapes(L=32):
    return [shapes.normalize({"op": "uneven", "B": 4, "Hq": 2, "L": L, "D": 16,
                              "lengths": lengths, "api": api})
            for api in ("padded", "varlen") for lengths in ([L] * 4, [L, 8, 8, 8], [8, L, 4, L])]


def test_uneven_shapes_and_fractions():
    grid = shapes.grid("uneven", True, "cpu")
    assert [s["api"] for s in grid].count("varlen") == len(grid) // 2
    assert all(ops_uneven.is_unpadded(s) for s in grid[::len(grid) // 2])
    full = shapes.grid("uneven", False, "cpu")
    assert {tuple(s["lengths"]) for s in full} >= {(512, 512, 256, 256), (512, 128, 128, 128),
                                                   (128, 128, 128, 512), (256, 512, 256, 512)}
    s = _uneven_shapes()[1]
    assert ops_uneven.valid_fraction(s) == (32 * 32 + 3 * 64) / (4 * 32 * 32)
    with pytest.raises(ValueError, match="lengths"):
        shapes.normalize({"op": "uneven", "B": 2, "Hq": 2, "L": 8, "D": 8, "lengths": [9, 1]})
    with pytest.raises(ValueError, match="kind"):
        shapes.normalize({"op": "percall", "kind": "softmax"})


def test_pack_unpack_round_trip():
    lengths, L = [3, 1, 4], 5
    pos = ops_uneven.positions(lengths, L, CPU)
    t = torch.randn(3, 2, L, 4)
    packed = ops_uneven.pack(t, pos)
    assert packed.shape == (8, 2, 4)
    back = ops_uneven.unpack(packed, pos, 3, L)
    for b, n in enumerate(lengths):
        assert torch.equal(back[b, :, :n], t[b, :, :n])
        assert not back[b, :, n:].any()
    assert ops_uneven.cu_seqlens(lengths, CPU).tolist() == [0, 3, 4, 8]


@_skip_unless_cpu("attention")
def test_uneven_part_gates_times_and_relates_to_work(ctx):
    part = ops_uneven.plan(_uneven_shapes(), ("cpu",), ctx)
    assert part.steps == 6 * 2                              # 6 shapes, fwd and fwd+bwd
    rows = part.run()
    assert len(rows) == part.steps
    assert all(r["status"] == "ok" for r in rows), [r["message"] for r in rows]
    assert {r["mode"] for r in rows} == {"fwd", "fwd+bwd"}
    for r in rows:
        ratio = r["ratio"]
        assert ratio["goal"] == ops_uneven.GOAL
        assert ratio["value"] == pytest.approx(r["ms"] / ratio["expected_ms"])
        if ops_uneven.is_unpadded(r["shape"]):
            assert ratio["value"] == pytest.approx(1.0)
    text = report.terminal_table(rows, CEILINGS)
    assert "work-proportional" in text and "goal <= 1.1x" in text


@_skip_unless_cpu("norm")
@_skip_unless_cpu("attention")
def test_percall_part_against_torch(ctx):
    part = ops_percall.plan(shapes.grid("percall", True, "cpu"), ("cpu",), ctx)
    assert part.steps == 4 * 2 * 2                          # 4 families, 2 impls, 2 modes
    threads = torch.get_num_threads()
    rows = part.run()
    assert torch.get_num_threads() == threads               # one thread only while timing
    assert all(r["status"] == "ok" for r in rows), [r["message"] for r in rows]
    assert {r["impl"] for r in rows} == {"fastattn[cpu]", "torch sdpa", "torch eager",
                                         "torch eager add+norm"}
    fast = [r for r in rows if r["fastattn"]]
    assert len(fast) == 8 and all(r["ratio"]["goal"] == ops_percall.GOAL for r in fast)
    assert all(not r["timing"]["cold"] and r["timing"]["n_sets"] == 1 for r in rows)
    md = report.markdown(rows, {"torch": "x", "triton": "y", "date": "d"}, CEILINGS, [])
    assert "## per call: microseconds" in md and "vs torch sdpa" in md


def test_model_part_lists_bert_t5_bart_against_hf():
    pytest.importorskip("transformers")
    peers = ("eager",)
    assert ops_model.variant_names("bart", peers) == ["fastattn", "fastattn unpad", "hf sdpa",
                                                       "hf eager"]
    assert ops_model.variant_names("t5", peers) == ["fastattn", "hf sdpa", "hf eager"]
    assert "fastattn unpad" in ops_model.variant_names("bert", peers)
    assert ops_model.modes_of("bart") == ("train", "infer", "generate")
    assert ops_model.sizes("bart", True, "cpu").d == 64            # tiny in quick mode
    assert ops_model.sizes("bart", False, "cpu").d == 768          # full: real widths
    assert ops_model.BASE["bart"] == (768, 6, 12, 3072)            # BART-base
    assert ops_model.BASE["t5"] == (512, 6, 8, 2048)               # T5-small


# ------------------------------------------------ the variants part, tiny

from fastattn.bench import ops_variants  # noqa: E402


def _tiny_variant_groups(with_t5=True):
    v = shapes._variant
    win = [v("window L=64", "window", 1, 2, 64, 16, True, "full", ("fwd",), True),
           v("window L=64", "window", 1, 2, 64, 16, True, "window", ("fwd",), window=[15, -1])]
    scan = [v("window scan", "scan", 1, 2, L, 16, True, "window", ("fwd",), window=[15, -1])
            for L in (32, 64)]
    m = ("fwd", "fwd+bwd")
    over = [v("overhead L=32", "overhead", 1, 2, 32, 16, False, "plain", m, True),
            v("overhead L=32", "overhead", 1, 2, 32, 16, False, "softcap", m, softcap=30.0),
            v("overhead L=32", "overhead", 1, 2, 32, 16, False, "alibi", m),
            v("overhead L=32", "overhead", 1, 2, 32, 16, False, "rel_bias", m, buckets=8),
            v("overhead L=32", "overhead", 1, 2, 32, 16, False, "window", m, window=[32, 32])]
    t5 = [shapes._t5("t5-tiny", 32, 8, True)] if with_t5 else []
    return {"kernels": [win, scan, over], "t5": t5}


def test_variants_grid_and_pairs():
    full = shapes.variants_grid(False, "cpu")
    window = full["kernels"][0]
    assert [s["variant"] for s in window] == ["full", "window"] and window[0]["Lq"] == 8192
    assert window[1]["window"] == [127, -1] and window[0]["baseline"]
    assert full["kernels"][1][0]["modes"] == ["fwd+bwd"] and full["kernels"][1][0]["Lq"] == 4096
    assert [s["Lq"] for s in full["kernels"][2]] == [1024, 2048, 4096, 8192]
    over = full["kernels"][3]
    assert [s["variant"] for s in over] == ["plain", "softcap", "alibi", "rel_bias", "window"]
    assert over[-1]["window"] == [1024, 1024] and over[0]["B"] == 2
    assert [(s["model"], s["src_len"]) for s in full["t5"]] == [
        ("t5-small", 512), ("t5-small", 1024), ("t5-small", 2048)]
    assert {s["model"] for s in shapes.variants_grid(False, "cuda")["t5"]} == {"t5-small",
                                                                               "t5-base"}
    quick = shapes.variants_grid(True, "cpu")
    assert quick["kernels"][0][0]["Lq"] == 2048 and quick["t5"][0]["model"] == "t5-tiny"
    # a causal window of 128 keys: min(i + 1, 128) pairs per query
    s = dict(window[1], Lq=300, Lk=300)
    assert ops_variants.pairs(s) == sum(min(i + 1, 128) for i in range(300))
    assert ops_variants.pairs(dict(window[0], Lq=300, Lk=300)) == 300 * 301 // 2
    assert ops_variants.pairs(dict(full["kernels"][4][-1], Lq=64, Lk=64)) == 2 * 64 * 64
    b = ops_variants.t5_bias_bytes(full["t5"][2])
    assert b == {"encoder": 2 * 8 * 2048 * 2048 * 4, "decoder": 2 * 8 * 64 * 64 * 4}
    assert "window=(127,-1)" in shapes.label(window[1])


def test_variants_interleaved_timing_alternates():
    order = []
    calls = [lambda i, n=n: order.append(n) for n in range(3)]
    stats = ops_variants.measure_interleaved(calls, timing.warm_rotation(1), CPU, TINY_BUDGET)
    assert len(stats) == 3 and all(s["n"] == 3 for s in stats)
    assert order[3:] == [0, 1, 2, 2, 1, 0, 0, 1, 2]       # warm-up, then alternating rounds


def test_variants_cpu_peak_memory_counts_tensors():
    def make():
        x = torch.empty(1 << 18)                           # 1 MiB
        y = torch.empty(1 << 19)                           # 2 MiB
        del x, y
    peak = ops_variants.cpu_peak_mib(make)
    assert peak is None or peak == pytest.approx(3.0, abs=0.01)


def test_variants_part_times_cuda_on_what_it_serves():
    # the cuda kernels run window, ALiBi and softcap, not rel_bias: their
    # rel_bias rows are skipped with the reason, the others timed
    over = _tiny_variant_groups(with_t5=False)["kernels"][2]
    why = {s["variant"]: ops_variants._unserved(s, "cuda", CPU) for s in over}
    assert why.pop("rel_bias") == "the cuda kernels do not implement rel_bias"
    assert set(why.values()) == {""}
    assert all(ops_variants._unserved(s, "cpu", CPU) == "" for s in over)


@_skip_unless_cpu("attention")
def test_variants_part_gates_times_and_sets_goals(ctx, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setattr(ops_variants, "T5_QUICK_CPU_BUDGET", TINY_BUDGET)
    part = ops_variants.plan(True, ("cpu",), ("eager",), ctx, groups=_tiny_variant_groups())
    assert part.steps == 2 + 2 + 5 * 2 + 3                # kernel rows and 3 T5 models
    rows = part.run()
    assert len(rows) == part.steps
    assert all(r["status"] == "ok" for r in rows), [r["message"] for r in rows]
    by = {(r["shape"]["group"], r["label"], r["mode"]): r for r in rows
          if r["shape"].get("kind") != "t5"}
    win = by[("window L=64", "B=1 H=2 L=64 D=16 causal window=(15,-1)", "fwd")]
    (g,) = win["goals"]
    assert g["goal"] == ops_variants.WINDOW_GOAL and g["higher"]
    assert g["value"] == pytest.approx(g["baseline_ms"] / win["ms"])
    assert win["timing"]["interleaved_with"] == 2
    rel = by[("overhead L=32", "B=1 H=2 L=32 D=16 rel_bias 8 buckets", "fwd+bwd")]
    assert rel["goals"][0]["goal"] == ops_variants.OVERHEAD_GOAL
    assert not by[("overhead L=32", "B=1 H=2 L=32 D=16 plain", "fwd")].get("goals")
    scan = [r for r in rows if r["shape"].get("role") == "scan"]
    assert [r["goals"][0]["goal"] for r in scan] == [None, None]
    t5 = {r["impl"]: r for r in rows if r["shape"].get("kind") == "t5"}
    assert set(t5) == {"fastattn", "hf sdpa", "hf eager"}
    assert all(r["peak_mib"] is None or r["peak_mib"] > 0 for r in t5.values())
    whats = [g["what"] for g in t5["fastattn"]["goals"]]
    assert "speedup vs hf sdpa" in whats and "speedup vs hf eager" in whats
    text = report.terminal_table(rows, CEILINGS)
    assert "speedup vs full causal (goal >= 10.0x)" in text and "vs plain (goal <= 1.1x)" in text
    md = report.markdown(rows, {"torch": "x", "triton": "y", "date": "d"}, CEILINGS, [])
    assert "## attention variants" in md
