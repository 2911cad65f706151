"""fastattn's benchmark: `fastattn-bench` / `python -m fastattn.bench` (see docs/BENCHMARKS.md).

cli            arguments, environment (version, load), the run over the parts, output folder
shapes         the shape grids per op (full, quick, CPU-sized) and --shapes files
backends       which fastattn backends are timed here (never the Triton interpreter)
peers          the implementations fastattn is compared with, where they run
runner         the shared loop: correctness gate, then timing, per implementation
timing         warm-up, samples, statistics, noise flag; cold caches (rotation past
               the L2 / the CPU's last-level cache, or a scrub); CUDA events / perf_counter
ceilings       copy bandwidth and matmul throughput measured in the same run
ops_layernorm  the norm part: inputs, byte counts, gate
ops_attention  the attention, cross and decode parts: inputs, FLOP/byte counts, gate
ops_uneven     uneven padding (lengths, packed varlen) against work-proportional time
ops_percall    per-call cost of tiny calls of each op family against torch
ops_model      whole encoder-decoders, swapped to fastattn or not
ops_variants   attention variants: window vs full causal, each variant's overhead, T5's
               in-kernel bias (step time, peak memory); compared calls interleaved
report         progress bar, terminal table, JSON, markdown, plots (fixed colours), flags
gpu_check.sh   build + GPU tests + full benchmark on a GPU machine, in one call
test_bench_cpu pytest-benchmark regression suite for the cpu backend (not in CI)
test_timing    unit tests of timing, statistics, flags, LLC, CLI logic (not in CI)
"""
