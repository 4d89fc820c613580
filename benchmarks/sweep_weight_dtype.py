"""Sweep: the post-attention norm kernels with their weights in fp32 instead of bf16.

The kernels read every weight as fp32; in bf16 each element of each weight is
converted per row (a shift per element per weight, four weights in the
4-output mode), and Nsight Compute found the kernels issuing an instruction
in about 64% of a scheduler's cycles at 2816 x 4096 (benchmarks/results/
ncu_prefill_norms.txt). Weights kept as fp32 copies (the same values: bf16 ->
fp32 is exact) trade those conversions for twice the weight bytes from L1/L2.
Both timed by harness.timed_rows (memory layouts, input sets rotated), the
launch of ``launch_config``, both modes at the widths of the models.

Run on the GPU machine (torch + triton + CUDA, no sglang)::

    PYTHONPATH=python python3 benchmarks/sweep_weight_dtype.py

writes ``$OUT/sweep_weight_dtype.json`` and prints a table.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark_triple_rmsnorm as bench  # noqa: E402
import harness  # noqa: E402

CASES = [("triple", 2816), ("triple", 5376), ("norm_add", 2560), ("norm_add", 5376), ("norm_add", 1536)]
TOKENS = [1, 32, 128, 512, 4096, 16384]


def with_fp32_weights(t: bench.NormInputs) -> bench.NormInputs:
    other = copy.copy(t)
    for name in ("w_post_attn", "w_pre_ff", "w_router", "w_pre_ff_2"):
        setattr(other, name, getattr(t, name).float())
    return other


def main() -> None:
    copy_bw = harness.copy_bandwidth_TBps()
    rows: list[dict] = []
    for mode, hidden in CASES:
        m = bench.MODES[mode]
        for tokens in TOKENS:
            nbytes = bench.minimal_bytes(tokens, hidden, m.outputs)
            n_sets = harness.input_sets(nbytes)
            # Each set with both weight dtypes, converted before any graph is captured.
            impls = {
                "bf16_weights": lambda pair, fused=m.fused: fused(pair[0]),
                "fp32_weights": lambda pair, fused=m.fused: fused(pair[1]),
            }

            def make_sets(tokens: int = tokens, hidden: int = hidden, n_sets: int = n_sets) -> list:
                sets = [bench.NormInputs(tokens, hidden, seed=i) for i in range(n_sets)]
                return [(t, with_fp32_weights(t)) for t in sets]

            t0 = bench.NormInputs(min(tokens, 64), hidden, seed=99)
            a, b = m.fused(t0.fresh()), m.fused(with_fp32_weights(t0.fresh()))
            assert all(torch.equal(x, y) for x, y in zip(a, b)), f"{mode} {hidden}: fp32 weights changed an output"
            base = {"mode": mode, "hidden": hidden, "tokens": tokens}
            rows += harness.timed_rows(impls, list(impls), make_sets, base, nbytes, copy_bw)
            by = {r["impl"]: r["us"] for r in rows[-3:]}
            print(f"{mode} {hidden} {tokens}: bf16 {by['bf16_weights']:.2f} fp32 {by['fp32_weights']:.2f} us", flush=True)
    harness.write_results("sweep_weight_dtype", rows, copy_bw=copy_bw)


if __name__ == "__main__":
    main()
