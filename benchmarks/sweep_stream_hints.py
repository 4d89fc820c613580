"""Sweep: the launch tables' eviction hints flipped, timed in context.

For each measured width and batch size, the launch the table picks against the
same launch with ``stream_hints`` flipped, and torch.compile of the reference:

* the PLE tail (E2B, E4B) as benchmark_ple_tail.py times it, both norm kernels
  with the flipped launch;
* the 4-output triple norm (hidden 5376, 2816) as benchmark_triple_rmsnorm.py
  times it.

Each size in harness.LAYOUTS memory layouts (harness.timed_rows). The kernel
sweeps (sweep_ple_tail.py, sweep_triple_rmsnorm.py) time each kernel alone,
where its few rotated input sets stay in L2 across replays and evict_first only
throws hits away; here the inputs do not fit. Writes sweep_stream_hints.json
(rows in the benchmark format, ``launch`` = the table's launch; the floor rows at a nominal
4.2 TB/s, not measured).

Run on the GPU machine (torch + triton + CUDA, no sglang)::

    PYTHONPATH=python python3 benchmarks/sweep_stream_hints.py
"""

from __future__ import annotations

import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark_ple_tail as bpt  # noqa: E402
import benchmark_triple_rmsnorm as btr  # noqa: E402
import harness  # noqa: E402

from sglang_gemma4.kernels import ple_tail as pt  # noqa: E402
from sglang_gemma4.kernels import triple_rmsnorm as tr  # noqa: E402

PLE_TOKENS = {"E2B": (128, 256, 384, 1024, 2048), "E4B": (128, 256, 384, 512, 768, 1024)}
TRIPLE_TOKENS = {5376: (256, 512, 1024, 4096), 2816: (256, 512, 1024, 4096)}
COPY_BW_TBPS = 4.2  # only for the floor rows; the comparison is between the timed rows


def main() -> None:
    harness.allow_one_compile_per_shape()
    rows: list[dict] = []
    started = time.perf_counter()
    for model, tokens_list in PLE_TOKENS.items():
        hidden, num_layers = bpt.MODELS[model]
        for tokens in tokens_list:
            nbytes = bpt.minimal_bytes(tokens, hidden)
            launch = pt.norm_launch(hidden, tokens)
            flipped = launch._replace(stream_hints=not launch.stream_hints)
            impls = {
                "table": bpt.fused,
                "flip_hints": partial(bpt.fused, norm_launch=flipped),
                "torch_compile": bpt.compiled_reference(),
            }

            def make_sets(tokens=tokens, hidden=hidden, num_layers=num_layers, nbytes=nbytes):
                return [bpt.TailInputs(tokens, hidden, num_layers, seed=i) for i in range(harness.input_sets(nbytes))]

            base = {"op": "ple", "model": model, "tokens": tokens, "launch": str(launch)}
            rows += harness.timed_rows(impls, list(impls), make_sets, base, nbytes, COPY_BW_TBPS)
            print(f"[{time.perf_counter() - started:6.1f}s] {model} {tokens} done", flush=True)
    for hidden, tokens_list in TRIPLE_TOKENS.items():
        for tokens in tokens_list:
            nbytes = btr.minimal_bytes(tokens, hidden, 4)
            launch = tr.launch_config(hidden, tokens, True)
            flipped = launch._replace(stream_hints=not launch.stream_hints)
            impls = {
                "table": btr.fused,
                "flip_hints": partial(btr.fused, launch=flipped),
                "torch_compile": btr.compiled_reference(),
            }

            def make_sets(tokens=tokens, hidden=hidden, nbytes=nbytes):
                return [btr.NormInputs(tokens, hidden, seed=i) for i in range(harness.input_sets(nbytes))]

            base = {"op": "triple", "hidden": hidden, "tokens": tokens, "launch": str(launch)}
            rows += harness.timed_rows(impls, list(impls), make_sets, base, nbytes, COPY_BW_TBPS)
            print(f"[{time.perf_counter() - started:6.1f}s] triple {hidden} {tokens} done", flush=True)
    print(f"wrote {harness.write_results('sweep_stream_hints', rows, copy_bw=None)}")


if __name__ == "__main__":
    main()
