"""Benchmark: the 26B-A4B MoE layer's top-k expert sum folded into the end-of-layer kernel.

From the experts' routed-weighted rows ``rows[T, top_k, H]`` (what SGLang's Triton
MoE runner holds before its sum) to the layer's new stream and the next layer's
normalized input::

    h2      = round(sum_k rows[:, k])                       (fp32 sum, routing order)
    h       = round((rmsnorm(rmsnorm(h1, w1) + rmsnorm(h2, w2), w3) + residual) * s)
    next_in = round(rmsnorm(h, w_next))

Implementations (``impl`` in the JSON rows):

* ``fused``: ``moe_expert_sum_end_of_layer_norm``, one launch (patch ``moe_sum_fold``).
* ``plugin_unfolded``: the top-k sum, then the plugin's ``moe_end_of_layer_norm``:
  two launches (the plugin without ``moe_sum_fold``).
* ``sglang``: SGLang 0.5.23's three launches: the top-k sum, its dual-norm
  end-of-layer kernel, the next layer's rmsnorm (single-op stand-ins,
  benchmarks/sglang_ops.py; no sglang on the benchmark machine).
* ``torch_compile``: Inductor on the fp32 reference of the whole pattern.
* ``floor``: minimal bytes / measured copy bandwidth.

Run on the GPU machine::

    PYTHONPATH=python python3 benchmarks/benchmark_moe_sum_fold.py
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import sglang_ops as so  # noqa: E402

from sglang_gemma4.kernels import end_of_layer_norm as eol  # noqa: E402

HIDDEN, TOP_K = 2816, 8
# Up to 256: the last row-kernel bucket at 2816, to find where the fold stops paying (the patch takes it to 32).
TOKENS = [1, 2, 4, 8, 16, 32, 64, 128, 192, 256]
DTYPE = torch.bfloat16
EPS = 1e-6
DEVICE = "cuda"
IMPLS = ("fused", "plugin_unfolded", "sglang", "torch_compile")


class FoldInputs:
    def __init__(self, tokens: int, seed: int) -> None:
        gen = torch.Generator(device=DEVICE).manual_seed(seed)

        def act(*shape: int, scale: float = 1.0) -> torch.Tensor:
            return (scale * torch.randn(*shape, device=DEVICE, generator=gen)).to(DTYPE)

        def weight() -> torch.Tensor:
            return (1 + 0.1 * torch.randn(HIDDEN, device=DEVICE, generator=gen)).to(DTYPE)

        scalar = torch.tensor([0.7], device=DEVICE, dtype=DTYPE)
        rows = act(tokens, TOP_K, HIDDEN, scale=TOP_K**-0.5)
        self.args = (act(tokens, HIDDEN), weight(), rows, weight(), weight(), act(tokens, HIDDEN), scalar, weight())


def plugin_unfolded(t: FoldInputs) -> tuple[torch.Tensor, torch.Tensor]:
    h1, w1, rows, w2, w3, residual, scalar, w_next = t.args
    return eol.moe_end_of_layer_norm(h1, w1, so.moe_sum_reduce(rows), w2, w3, residual, scalar, w_next, EPS)


def sglang_sequence(t: FoldInputs) -> tuple[torch.Tensor, torch.Tensor]:
    h1, w1, rows, w2, w3, residual, scalar, w_next = t.args
    h = so.dual_rmsnorm_residual_scalar(h1, w1, so.moe_sum_reduce(rows), w2, w3, residual, scalar, EPS)
    return h, so.rmsnorm(h, w_next, EPS)


def minimal_bytes(tokens: int) -> int:
    """The expert rows, h1 and residual read once; h and next_in written; 4 weights."""
    e = DTYPE.itemsize
    return (TOP_K + 2 + 2) * tokens * HIDDEN * e + 4 * HIDDEN * e + e


def measure(tokens: int, copy_bw: float) -> list[dict]:
    nbytes = minimal_bytes(tokens)

    def make_sets() -> list[FoldInputs]:
        return [FoldInputs(tokens, seed=i) for i in range(harness.input_sets(nbytes))]

    reference = eol.moe_expert_sum_end_of_layer_norm_reference
    compiled = torch.compile(reference, dynamic=False)
    impls = {
        "fused": lambda t: eol.moe_expert_sum_end_of_layer_norm(*t.args, EPS),
        "plugin_unfolded": plugin_unfolded,
        "sglang": sglang_sequence,
        "torch_compile": lambda t: compiled(*t.args, EPS),
    }
    check = FoldInputs(tokens, seed=0)
    want = reference(*check.args, EPS)
    for name, fn in impls.items():
        for got, ref in zip(fn(check), want):
            torch.testing.assert_close(got.float(), ref.float(), rtol=2**-6, atol=2**-5, msg=lambda m: f"{name}: {m}")
    base = {"op": "moe_sum_fold", "model": "26B-A4B", "hidden": HIDDEN, "top_k": TOP_K, "tokens": tokens}
    return harness.timed_rows(impls, IMPLS, make_sets, base, nbytes, copy_bw)


def summarize(rows: list[dict]) -> list[dict]:
    table = []
    for (tokens,), impls in harness.impls_by_size(rows, "tokens"):
        line = {"tokens": tokens, **harness.against_baselines(impls)}
        line["unfolded_us"] = impls["plugin_unfolded"]["us"]
        line["saved_us"] = line["unfolded_us"] - line["fused_us"]
        line["launches"] = f"{impls['fused']['launches']}/{impls['plugin_unfolded']['launches']}/{impls['sglang']['launches']}"
        table.append(line)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="*", default=TOKENS)
    args = parser.parse_args()

    harness.allow_one_compile_per_shape()
    started = time.perf_counter()
    copy_bw = harness.copy_bandwidth_TBps()
    print(f"copy bandwidth {copy_bw:.2f} TB/s")
    rows: list[dict] = []
    for tokens in args.tokens:
        rows += measure(tokens, copy_bw)
        print(f"[{time.perf_counter() - started:6.1f}s] tokens={tokens} done", flush=True)
    path = harness.write_results(
        "moe_sum_fold",
        rows,
        copy_bw=copy_bw,
        plot=partial(harness.plot_vs_tokens, title="26B-A4B top-k sum + end of layer + next input norm (bf16)"),
        extra={
            "dtype": "bfloat16",
            "notes": {
                "scope": "from the experts' [T, 8, 2816] routed-weighted rows to h and next_in",
                "plugin_unfolded": "the top-k sum (stand-in) then the plugin's moe_end_of_layer_norm",
                "sglang": "the top-k sum, gemma_dual_rmsnorm_residual_scalar, rmsnorm: single-op stand-ins",
                "torch_compile": "torch.compile(dynamic=False) of the fp32 reference, one compilation per shape",
                "bytes": "minimal: expert rows, h1, residual read once; h, next_in written once; weights once",
            },
        },
    )
    print(f"wrote {path} ({time.perf_counter() - started:.0f}s)")
    harness.print_table(
        summarize(rows),
        ["tokens", "fused_us", "unfolded_us", "saved_us", "sglang_us", "compile_us", "launches", "x_sglang", "x_compile", "x_compile_worst"],
    )


if __name__ == "__main__":
    main()
