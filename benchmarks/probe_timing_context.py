"""Probe: does a launch's measured time depend on what it is timed next to?

The in-context sweep (sweep_in_context.py) and the benchmark
(benchmark_triple_rmsnorm.py) time the same launch the same way
(harness.timed_rows: 5 memory layouts, CUDA-graph replays in turns), yet
disagreed by up to ~7% on it (2816 x 4096: 35.96 us in a sweep, 38.36 in the
benchmark; session 9). The two differ only in the implementations interleaved
with it. Here the table's launch is timed in several such companies, each with
a device-to-device copy of the same bytes as one more entry: a control whose
time should not move with the company. (Captured in a graph, torch's copy
ran at ~2.7 TB/s on the H200, against ~4.2 for the 2 GiB copy timed with
events at start, so it is no bandwidth yardstick.)

Result (H200, 2026-11-30, results/probe_timing_context.json): the company
made no difference (2816 x 4096: 38.40-38.47 us in all five; the copy
51.76-51.83). The next device loan timed the same code at 35.97 us, with
torch.compile at 40.7 on both: the spread is between machines, not
companies (harness.gpu_identity now records which GPU ran a result).

Writes ``$OUT/probe_timing_context.json``: rows as timed_rows writes them,
plus ``context`` and the wall-clock ``t_start``/``t_end`` of each context
(to line up with a clock log, e.g. ``nvidia-smi --query-gpu=... -lms 200``).

Run on the GPU machine::

    PYTHONPATH=python python3 benchmarks/probe_timing_context.py [--tokens 4096 8192]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark_triple_rmsnorm as btr  # noqa: E402
import harness  # noqa: E402

from sglang_gemma4.kernels import triple_rmsnorm as tr  # noqa: E402

HIDDEN = 2816
# Fused launches other than the table's, as the in-context sweep interleaves them.
SWEEP_COMPANIONS = (
    tr.TripleNormLaunch("row", 2816, 1, 8, stream_hints=True, paired_sums=True),
    tr.TripleNormLaunch("chunked", 1024, 1, 4, stream_hints=True, rolled=True, paired_sums=True),
    tr.TripleNormLaunch("segmented", 1024, 1, 8, stream_hints=True, paired_sums=True),
    tr.TripleNormLaunch("segmented", 2048, 1, 8, paired_sums=True),
    tr.TripleNormLaunch("segmented", 1024, 1, 4, paired_sums=True),
)


def copy_of(nbytes: int) -> Callable[[btr.NormInputs], None]:
    """A device-to-device copy moving ``nbytes`` (read + written), one buffer
    pair per input set, allocated on the set's first (uncaptured) call."""
    buffers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def run(t: btr.NormInputs) -> None:
        if id(t) not in buffers:
            src = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda")
            buffers[id(t)] = (src, torch.empty_like(src))
        src, dst = buffers[id(t)]
        dst.copy_(src)

    return run


def contexts(nbytes: int, compiled: Callable) -> dict[str, dict[str, Callable]]:
    m = btr.MODES["triple"]
    sweep = {"fused": m.fused}
    for launch in SWEEP_COMPANIONS:
        sweep[f"fused[{launch.kernel} {launch.block}x{launch.num_warps}]"] = lambda t, launch=launch: m.fused(t, launch=launch)
    bench = {"fused": m.fused, "sglang": m.sglang, "plain_rmsnorm": btr.plain_rmsnorm,
             "torch_compile": compiled, "eager": m.eager}
    no_eager = {k: v for k, v in bench.items() if k != "eager"}
    return {
        "alone": {"fused": m.fused, "copy": copy_of(nbytes)},
        "sweep": {**sweep, "torch_compile": compiled, "copy": copy_of(nbytes)},
        "benchmark": {**bench, "copy": copy_of(nbytes)},
        "benchmark_without_eager": {**no_eager, "copy": copy_of(nbytes)},
        "alone_again": {"fused": m.fused, "copy": copy_of(nbytes)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="*", default=[4096, 8192])
    args = parser.parse_args()
    harness.allow_one_compile_per_shape()
    copy_bw = harness.copy_bandwidth_TBps()
    print(f"copy bandwidth {copy_bw:.3f} TB/s", flush=True)
    rows: list[dict] = []
    for tokens in args.tokens:
        nbytes = btr.minimal_bytes(tokens, HIDDEN)
        compiled = btr.MODES["triple"].compiled()

        def make_sets(tokens: int = tokens, nbytes: int = nbytes) -> list[btr.NormInputs]:
            return [btr.NormInputs(tokens, HIDDEN, seed=i) for i in range(harness.input_sets(nbytes))]

        for name, impls in contexts(nbytes, compiled).items():
            base = {"hidden": HIDDEN, "tokens": tokens, "context": name}
            t_start = time.time()
            measured = harness.timed_rows(impls, list(impls), make_sets, base, nbytes, copy_bw)
            t_end = time.time()
            by_impl = {r["impl"]: r for r in measured}
            for r in measured:
                r.update(t_start=round(t_start, 2), t_end=round(t_end, 2))
            rows += measured
            fused, copy = by_impl["fused"]["us"], by_impl["copy"]["us"]
            print(f"{tokens:6d} {name:24s} fused {fused:8.2f} us  copy {copy:8.2f} us  "
                  f"% of the 2 GiB copy's bandwidth {100 * by_impl['floor']['us'] / fused:5.1f}  "
                  f"layouts {by_impl['fused']['us_layouts']}", flush=True)
            harness.write_results("probe_timing_context", rows, copy_bw=copy_bw, extra={"dtype": "bfloat16"})


if __name__ == "__main__":
    main()
