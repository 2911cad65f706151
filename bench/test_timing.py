"""Unit tests of the benchmark's timing, statistics, flags, cache and CLI logic.

    pytest bench/test_timing.py

Fast, and free of timing assertions on real kernels: statistics come from
synthetic sample lists, the timer runs with a fake clock, the LLC from a
fake sysfs folder. Not collected by the default test run (testpaths = tests).
"""

from __future__ import annotations

import io
import math
import os

import pytest
import torch

from fastattn.bench import cli, report, timing

CPU = torch.device("cpu")


# ------------------------------------------------------------- statistics


def test_summarize_odd_count():
    s = timing.summarize([5.0, 1.0, 4.0, 2.0, 3.0])
    assert s["n"] == 5
    assert s["median_ms"] == 3.0
    assert (s["q1_ms"], s["q3_ms"]) == (2.0, 4.0)          # numpy's linear quartiles
    assert (s["min_ms"], s["max_ms"]) == (1.0, 5.0)
    assert s["iqr_ms"] == 2.0
    assert s["iqr_rel"] == pytest.approx(2 / 3)
    assert s["range_rel"] == pytest.approx(4 / 3)
    assert s["mean_ms"] == 3.0
    assert s["total_s"] == pytest.approx(0.015)


def test_quartiles_interpolate_like_numpy():
    data = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    q1, med, q3 = timing.quartiles(data)
    # numpy.percentile(data, [25, 50, 75]) == [2.5, 6.0, 14.0]
    assert (q1, med, q3) == pytest.approx((2.5, 6.0, 14.0))


def test_single_sample():
    s = timing.summarize([7.0])
    assert s["median_ms"] == s["q1_ms"] == s["q3_ms"] == 7.0
    assert s["iqr_rel"] == 0.0 and not timing.is_noisy(s)


def test_noisy_flag_uses_iqr_over_median():
    steady = timing.summarize([10.0, 10.1, 9.9, 10.0, 10.2, 9.8])
    assert not timing.is_noisy(steady)
    # one outlier (a context switch) widens the range, not the IQR
    outlier = timing.summarize([10.0, 10.0, 10.0, 10.0, 100.0])
    assert outlier["range_rel"] == pytest.approx(9.0)
    assert not timing.is_noisy(outlier)
    spread = timing.summarize([8.0, 9.0, 10.0, 11.0, 12.0])   # IQR 2 / median 10 = 20%
    assert spread["iqr_rel"] == pytest.approx(0.2)
    assert timing.is_noisy(spread)
    just_under = timing.summarize([9.5, 9.75, 10.0, 10.25, 10.5])  # 5%
    assert not timing.is_noisy(just_under)
    assert timing.is_noisy(just_under, threshold=0.04)


def test_samples_needed():
    b = timing.Budget(min_time_s=0.2, min_reps=5, max_reps=100)
    assert timing.samples_needed(b, 0, 0.0, 1.0) == 100         # 200 wanted, capped
    assert timing.samples_needed(b, 0, 0.0, 100.0) == 5          # min_reps dominate
    assert timing.samples_needed(b, 5, 0.1, 50.0) == 2           # 0.1 s left at 50 ms
    assert timing.samples_needed(b, 5, 0.2, 50.0) == 0           # both met
    assert timing.samples_needed(b, 3, 0.5, 50.0) == 2           # time met, reps not
    assert timing.samples_needed(b, 100, 0.01, 0.1) == 0         # max_reps reached
    tight = timing.Budget(min_time_s=1.0, min_reps=5, max_reps=3)
    assert timing.samples_needed(tight, 0, 0.0, 1.0) == 5        # never below min_reps


def test_measure_warms_up_then_samples_until_min_time(monkeypatch):
    seen = []
    fake_ms = iter([50.0, 12.0] + [10.0] * 1000)  # a slow first call (compilation)
    monkeypatch.setattr(timing, "_cpu_time_one", lambda call, i: (call(i), next(fake_ms))[1])
    rotation = timing.Rotation(n_sets=3, set_bytes=0, cache_bytes=0)
    budget = timing.Budget(warmup_s=0.0, warmup_calls=2, min_time_s=0.2, min_reps=5,
                           max_reps=1000, max_wall_s=60)
    stats = timing.measure(seen.append, rotation, CPU, budget)
    assert stats["warmup_calls"] == 2
    assert stats["n"] == 20                      # 20 x 10 ms = 0.2 s, warm-up excluded
    assert stats["median_ms"] == 10.0 and stats["max_ms"] == 10.0
    assert stats["min_time_reached"] and not stats["noisy"]
    assert seen[:6] == [0, 1, 2, 0, 1, 2]        # round-robin over the sets
    assert len(seen) == 22


def test_measure_respects_min_reps_for_slow_calls(monkeypatch):
    monkeypatch.setattr(timing, "_cpu_time_one", lambda call, i: 1000.0)
    budget = timing.Budget(warmup_s=0.0, warmup_calls=1, min_time_s=0.2, min_reps=5,
                           max_reps=10, max_wall_s=0.0)
    stats = timing.measure(lambda i: None, timing.warm_rotation(), CPU, budget)
    assert stats["n"] == 5


def test_measure_backward_setup_runs_before_its_calls(monkeypatch):
    log = []
    monkeypatch.setattr(timing, "_cpu_time_one", lambda call, i: (call(i), 1.0)[1])
    scrubs = []
    rotation = timing.Rotation(n_sets=4, set_bytes=10, cache_bytes=1000,
                               scrub=lambda: scrubs.append(1))
    budget = timing.Budget(warmup_s=0.0, warmup_calls=1, min_time_s=0.0, min_reps=3,
                           max_reps=3, max_wall_s=60)
    timing.measure(lambda i: log.append(("call", i)),
                   rotation, CPU, budget, setup=lambda idx: log.append(("setup", tuple(idx))))
    assert log[0] == ("setup", (0,)) and log[1] == ("call", 0)       # warm-up
    assert log[2] == ("setup", (1, 2, 3)) and log[3:] == [("call", 1), ("call", 2), ("call", 3)]
    assert scrubs == [1]   # 3 sets x 10 B < 2 x 1000 B: one scrub after the timed setup only


def test_measure_setup_touching_nothing_needs_no_scrub(monkeypatch):
    monkeypatch.setattr(timing, "_cpu_time_one", lambda call, i: (call(i), 1.0)[1])
    scrubs = []
    rotation = timing.Rotation(n_sets=30, set_bytes=10, cache_bytes=100,
                               scrub=lambda: scrubs.append(1))
    done = set()

    def setup(idx):  # like the backward's: forwards only for sets that have none yet
        new = [i for i in idx if i not in done]
        done.update(new)
        return len(new)
    budget = timing.Budget(warmup_s=0.0, warmup_calls=1, min_time_s=0.0, min_reps=60,
                           max_reps=60, max_wall_s=60)
    timing.measure(lambda i: None, rotation, CPU, budget, setup=setup)
    # the first timed cycle computes 29 sets (>= 20 cover the cache): no scrub;
    # later cycles reuse them, touching nothing
    assert done == set(range(30)) and scrubs == []


# ---------------------------------------------------------------- rotation


def test_rotation_covering_pool_never_scrubs():
    scrubs = []
    r = timing.Rotation(n_sets=30, set_bytes=10, cache_bytes=100, scrub=lambda: scrubs.append(1))
    assert r.covers() and r.cold
    got = [r.take(1)[0] for _ in range(65)]
    assert got[:31] == list(range(30)) + [0]
    assert scrubs == []


def test_rotation_small_pool_scrubs_before_reuse():
    scrubs = []
    r = timing.Rotation(n_sets=4, set_bytes=10, cache_bytes=100, scrub=lambda: scrubs.append(1))
    assert not r.covers() and r.cold
    for _ in range(4):
        r.take(1)
    assert scrubs == []
    assert r.take(1) == [0]
    assert len(scrubs) == 1            # set 0 would have been reused warm
    assert r.take(3) == [1, 2, 3]
    assert len(scrubs) == 1
    assert r.take(2) == [0, 1]
    assert len(scrubs) == 2
    r.after_setup(2)                   # the backward's forwards just touched 2 small sets
    assert len(scrubs) == 3 and r.scrubs == 3


def test_rotation_after_setup_skips_scrub_when_sets_cover():
    scrubs = []
    r = timing.Rotation(n_sets=50, set_bytes=10, cache_bytes=100, scrub=lambda: scrubs.append(1))
    r.take(20)
    r.after_setup(20)                  # 200 B >= 2 x 100 B
    assert scrubs == []
    r.take(5)
    r.after_setup(5)
    assert scrubs == [1]


def test_setup_cycle_prefers_the_cheaper_of_more_setups_and_a_scrub():
    r = timing.Rotation(n_sets=100, set_bytes=10, cache_bytes=100, scrub=lambda: None,
                        scrub_ms=50.0)
    assert r.covering_sets() == 20
    assert r.setup_cycle(5, setup_ms=1.0) == 20      # 15 more setups (15 ms) < a scrub (50 ms)
    assert r.setup_cycle(5, setup_ms=10.0) == 5      # 150 ms > 50 ms: scrub instead
    assert r.setup_cycle(30, setup_ms=10.0) == 30    # already covers
    capped = timing.Rotation(n_sets=4, set_bytes=10, cache_bytes=100, scrub=lambda: None,
                             scrub_ms=50.0)
    assert capped.setup_cycle(2, setup_ms=0.001) == 2  # the pool cannot cover: scrub anyway


def test_warm_rotation_is_not_cold():
    assert not timing.warm_rotation(2).cold


def test_warm_rotation_takes_whole_cycles():
    r = timing.warm_rotation(2)
    assert r.take(5) == [0, 1, 0, 1, 0]
    assert r.take(1) == [1]
    assert r.scrubs == 0


# ------------------------------------------------------------------ caches


def _fake_cache(root, entries):
    for n, (level, kind, size) in enumerate(entries):
        d = root / f"index{n}"
        d.mkdir(parents=True)
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    return str(root)


def test_parse_size():
    assert timing.parse_size("48K") == 48 << 10
    assert timing.parse_size("491520K\n") == 491520 << 10
    assert timing.parse_size("32M") == 32 << 20
    assert timing.parse_size("1G") == 1 << 30
    assert timing.parse_size("65536") == 65536
    with pytest.raises(ValueError):
        timing.parse_size("lots")


def test_llc_is_level_3(tmp_path):
    root = _fake_cache(tmp_path / "cache", [(1, "Data", "48K"), (1, "Instruction", "64K"),
                                            (2, "Unified", "2048K"), (3, "Unified", "491520K")])
    size, where = timing.llc_bytes(root)
    assert size == 491520 << 10
    assert where.startswith("L3")


def test_llc_falls_back_to_level_2(tmp_path):
    root = _fake_cache(tmp_path / "cache", [(1, "Data", "32K"), (1, "Instruction", "32K"),
                                            (2, "Unified", "1024K")])
    assert timing.llc_bytes(root)[0] == 1 << 20


def test_llc_ignores_instruction_caches_and_bad_entries(tmp_path):
    root = _fake_cache(tmp_path / "cache", [(2, "Unified", "1024K"), (3, "Instruction", "8M"),
                                            (3, "Unified", "garbage")])
    assert timing.llc_bytes(root)[0] == 1 << 20


def test_llc_default_without_sysfs(tmp_path):
    size, where = timing.llc_bytes(str(tmp_path / "missing"))
    assert size == timing.DEFAULT_LLC == 64 << 20
    assert "default" in where


def test_input_pool_spans_twice_the_cache(monkeypatch):
    monkeypatch.setattr(timing, "cache_bytes", lambda device: 1 << 20)
    monkeypatch.setattr(timing, "_ARENAS", {})
    monkeypatch.setattr(timing, "_SCRUBS", {})
    base = {"x": torch.randn(64, 256).requires_grad_(), "w": torch.randn(256),
            "n": torch.tensor([3, 1], dtype=torch.int32), "eps": 1e-5, "none": None}
    size = timing.set_bytes(base)
    sets, rotation = timing.input_pool(base, CPU)
    assert len(sets) == rotation.n_sets == math.ceil(2 * (1 << 20) / size)
    assert rotation.covers() and rotation.cold
    spans = []
    for s in sets:
        assert torch.equal(s["x"], base["x"]) and torch.equal(s["w"], base["w"])
        assert torch.equal(s["n"], base["n"]) and s["n"].dtype == torch.int32
        assert s["x"].requires_grad and s["x"].is_leaf and not s["w"].requires_grad
        assert s["eps"] == 1e-5 and s["none"] is None
        for t in (s["x"], s["w"], s["n"]):
            assert t.data_ptr() % timing.ALIGN == 0
            spans.append((t.data_ptr(), t.data_ptr() + timing.tensor_bytes(t)))
    spans.sort()
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))   # no two tensors overlap
    (g,) = torch.autograd.grad((sets[-1]["x"] * 2).sum(), [sets[-1]["x"]])
    assert torch.equal(g, torch.full_like(g, 2))


def test_input_pool_big_set_is_not_copied(monkeypatch):
    monkeypatch.setattr(timing, "cache_bytes", lambda device: 1 << 10)
    base = {"x": torch.randn(1024)}
    sets, rotation = timing.input_pool(base, CPU)
    assert sets == [base] and rotation.n_sets == 1 and rotation.covers()


# ------------------------------------------------------------ flags, tables


def _row(**kw):
    stats = timing.summarize(kw.pop("samples", [1.0, 1.0, 1.0, 1.0, 1.0]))
    stats.update(noisy=timing.is_noisy(stats), min_time_reached=True, cold=True)
    row = {"op": "layernorm", "label": "layer_norm 8x8", "family": "f", "x": 8, "mode": "fwd",
           "dtype": "float32", "impl": "fastattn[cpu]", "fastattn": True, "status": "ok",
           "message": "", "ms": stats["median_ms"], "timing": stats, "noisy": stats["noisy"],
           "work": 1e9, "unit": "GB/s", "throughput": 1000 / stats["median_ms"],
           "ceiling_fraction": 0.5, "above_ceiling": False, "peak_mib": None, "shape": {}}
    row.update(kw)
    return row


CEILINGS = {"copy_GBps": 10.0, "matmul_TFLOPs": {"float32": 1.0}, "measurements": {}}


def test_above_ceiling_is_never_a_plain_number():
    row = _row(ceiling_fraction=1.53, above_ceiling=True)
    cells = report._cells(row)
    assert "153%" + report.CEILING_MARK in cells
    assert "153%" not in cells
    assert "above ceiling" in cells[-1]
    table = report.terminal_table([row], CEILINGS)
    md = report.markdown([row], {"torch": "t", "triton": "t", "date": "d", "cpu": "c"},
                         CEILINGS, [])
    for text in (table, md):
        assert "153%" + report.CEILING_MARK in text
        assert "153% " not in text and "153% |" not in text
    notes = set()
    report.flag_notes([row], CEILINGS, notes)
    assert any("above 100% of their ceiling" in n for n in notes)


def test_noisy_rows_are_marked():
    quiet = _row()
    noisy = _row(samples=[8.0, 9.0, 10.0, 11.0, 12.0])
    assert noisy["noisy"] and not quiet["noisy"]
    assert report._cells(noisy)[0].endswith(report.NOISY_MARK)
    assert not report._cells(quiet)[0].endswith(report.NOISY_MARK)
    assert "IQR 20%" in report._cells(noisy)[-1]
    notes = set()
    report.flag_notes([quiet, noisy], CEILINGS, notes)
    assert any(n.startswith("1 of 2 timed rows are noisy") for n in notes)
    report.flag_notes([quiet], CEILINGS, notes := set())
    assert not any("noisy" in n for n in notes)


def test_failed_rows_have_no_timing_cells():
    row = _row(status="FAIL", message="out: 3 mismatches", ms=None, timing=None)
    cells = report._cells(row)
    assert cells[0] == "FAIL" and cells[-1] == "out: 3 mismatches"
    assert len(cells) == len(report.HEADER) - 3


def test_colours_are_fixed_per_implementation():
    assert report.colour("torch eager") == report.colour("torch eager add+norm")
    assert report.colour("fastattn[cpu]") == report.COLOURS["fastattn[cpu]"]
    assert report.colour("fastattn[cuda]") != report.colour("fastattn[triton]")
    assert report.colour("some new peer") == report.colour("some new peer")
    assert report.colour("some new peer") in report.FALLBACK_COLOURS
    named = [report.colour(n) for n in report.COLOURS if n not in ("torch",)]
    assert len(set(named)) == len(named)


def test_plots_titles_and_files(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [_row(op="cross", family="cross Lq=64", x=x, impl=impl, unit="TFLOP/s")
            for x in (128, 512) for impl in ("fastattn[cpu]", "eager")]
    rows += [_row(op="model", family="model bart", x=32, impl=impl, mode=mode, unit="tokens/s",
                  shape={"model": "bart"}, ceiling_fraction=None)
             for impl in ("fastattn", "hf sdpa") for mode in ("train", "generate")]
    written = report.plots(rows, str(tmp_path), [], "Some CPU", "cpu")
    assert written == ["cross.png", "model.png"]
    assert all(os.path.getsize(tmp_path / f) > 0 for f in written)


def test_progress_total_is_known_up_front():
    out = io.StringIO()
    p = report.Progress(stream=out)
    p.set_total(10)
    p.advance(3)
    assert "3/10" in p.line() and "eta" in p.line()
    p.advance(20)
    assert "10/10" in p.line()


# --------------------------------------------------------------------- cli


def test_parse_ops():
    assert cli.parse_ops("layernorm,cross") == ("layernorm", "cross")
    assert cli.parse_ops("cross, layernorm ,cross") == ("cross", "layernorm")
    assert cli.parse_ops("all") == cli.OPS
    assert cli.parse_ops("decode") == ("decode",)
    with pytest.raises(ValueError, match="bogus"):
        cli.parse_ops("layernorm,bogus")
    assert cli.parse_args(["--op", "layernorm,cross"]).ops == ("layernorm", "cross")
    with pytest.raises(SystemExit):
        cli.parse_args(["--op", "nope"])


def test_load_state():
    busy = cli.load_state(loadavg=(3.0, 2.0, 1.0), cores=2)
    assert busy["others_per_core"] == 1.5 and busy["busy"]
    idle = cli.load_state(loadavg=(0.2, 0.1, 0.1), cores=2)
    assert not idle["busy"]
    # our own two busy threads over 10 minutes make the whole load of 2.0
    own = cli.load_state(own_cpu_rate=2.0, own_seconds=600, loadavg=(2.0, 2.0, 2.0), cores=2)
    assert own["others_per_core"] < 0.01 and not own["busy"]
    # ...but after 30 s they have added only 2 * (1 - exp(-0.5)) = 0.79
    early = cli.load_state(own_cpu_rate=2.0, own_seconds=30, loadavg=(2.0, 2.0, 2.0), cores=2)
    assert early["others_per_core"] == pytest.approx((2.0 - 2 * (1 - math.exp(-0.5))) / 2,
                                                     abs=0.01)


def test_revision_sources(monkeypatch):
    monkeypatch.setenv("FASTATTN_COMMIT", "abc1234")
    assert cli.revision()["revision"] == "abc1234"
    monkeypatch.delenv("FASTATTN_COMMIT")
    monkeypatch.setattr(cli, "source_checkout", lambda: None)     # an installed package
    info = cli.revision()
    assert info["revision_source"] == "package metadata"
    assert info["revision"] == f"v{cli.package_version()}" and "unknown" not in info["revision"]
    assert info["commit"] is None


def test_revision_from_this_checkout():
    if cli.source_checkout() is None:
        pytest.skip("not running from a git checkout")
    info = cli.revision()
    assert info["revision_source"] == "git checkout" and info["commit"]


def test_default_out_dir_is_under_the_current_directory(tmp_path):
    env = {"gpu": None, "revision": "v0.1.0"}
    first = cli.default_out_dir(env, cwd=str(tmp_path))
    assert first.startswith(str(tmp_path / cli.OUT_FOLDER))
    assert first.endswith("_v0.1.0")
    os.makedirs(first)
    assert cli.default_out_dir(env, cwd=str(tmp_path)) == first     # empty: reused
    open(os.path.join(first, "bench.json"), "w").close()
    assert cli.default_out_dir(env, cwd=str(tmp_path)) == first + "-2"
