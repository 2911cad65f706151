"""fastattn's benchmark: `fastattn-bench` / `python -m bench` (see docs/BENCHMARKS.md).

cli        arguments, the run loop, output folder
shapes     the shape grids per op (full, quick, CPU-sized)
timing     GPU (CUDA events, rotating inputs) and CPU (perf_counter) timers
ceilings   copy bandwidth and matmul throughput measured in the same run
peers      the implementations fastattn is compared with, where runnable
ops_*      one benchmark part per op family: inputs, counts, gate, timings
report     progress bar, terminal table, JSON, markdown, plots
"""
