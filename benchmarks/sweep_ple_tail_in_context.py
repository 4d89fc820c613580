"""Sweep: launch shapes of the PLE tail's kernels at 384-768 rows (E2B), timed as the whole tail.

The tail as benchmark_ple_tail.py times it, with the norm kernels' launch
(``table`` = :func:`~sglang_gemma4.kernels.ple_tail.norm_launch`'s, or one of
``NORM_VARIANTS`` for both norm kernels) or the gelu kernel's launch
(``GELU_VARIANTS``) replaced, against torch.compile of the references; each
size in harness.LAYOUTS memory layouts (harness.timed_rows). Writes
sweep_ple_tail_in_context.json (rows in the benchmark format, floor rows at a nominal 4.2
TB/s, not measured; ``us_layouts``
per layout).

Run on the GPU machine (torch + triton + CUDA, no sglang)::

    PYTHONPATH=python python3 benchmarks/sweep_ple_tail_in_context.py
"""

from __future__ import annotations

import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark_ple_tail as bpt  # noqa: E402
import harness  # noqa: E402

from sglang_gemma4.kernels import ple_tail as pt  # noqa: E402

TOKENS = (384, 512, 640, 768)
NORM_VARIANTS = {
    "table": None,
    "exact_r1w4": pt.NormLaunch("exact", 1536, 1, 4),
    "exact_r2w4": pt.NormLaunch("exact", 1536, 2, 4),
    "row_r1w8": pt.NormLaunch("row", 2048, 1, 8),
    "row_r2w4": pt.NormLaunch("row", 2048, 2, 4),
    "exact_r2w8_hints": pt.NormLaunch("exact", 1536, 2, 8, stream_hints=True),
    "exact_r4w8": pt.NormLaunch("exact", 1536, 4, 8),
}
GELU_VARIANTS = {
    "g2x256w2": pt.TileLaunch(2, 256, 2),
    "g8x256w8": pt.TileLaunch(8, 256, 8),
    "g4x256w4h": pt.TileLaunch(4, 256, 4, True),
}
COPY_BW_TBPS = 4.2  # only for the floor rows


def main() -> None:
    harness.allow_one_compile_per_shape()
    hidden, num_layers = bpt.MODELS["E2B"]
    rows: list[dict] = []
    started = time.perf_counter()
    for tokens in TOKENS:
        nbytes = bpt.minimal_bytes(tokens, hidden)
        impls = {name: partial(bpt.fused, norm_launch=launch) for name, launch in NORM_VARIANTS.items()}
        impls.update({name: partial(bpt.fused, gelu_launch=launch) for name, launch in GELU_VARIANTS.items()})
        impls["torch_compile"] = bpt.compiled_reference()

        def make_sets(tokens=tokens, nbytes=nbytes):
            return [bpt.TailInputs(tokens, hidden, num_layers, seed=i) for i in range(harness.input_sets(nbytes))]

        rows += harness.timed_rows(impls, list(impls), make_sets, {"tokens": tokens}, nbytes, COPY_BW_TBPS)
        print(f"[{time.perf_counter() - started:6.1f}s] E2B {tokens} done", flush=True)
    print(f"wrote {harness.write_results('sweep_ple_tail_in_context', rows, copy_bw=None)}")


if __name__ == "__main__":
    main()
