"""Benchmark: the non-GEMM part of Gemma-4's per-layer-embedding (PLE) tail, E2B and E4B.

Per decoder layer, between and around its two GEMMs, the tail computes::

    h   = rmsnorm(x, w_ff) + residual                    # before the gate GEMM
    g   = gelu_tanh(gate) * per_layer_input              # between the GEMMs
    out = (rmsnorm(c, w_ple) + h) * layer_scalar         # after the projection GEMM

The GEMMs are left out: ``gate`` and ``c`` are precomputed GEMM outputs, and
``per_layer_input`` is the strided view ``per_layer_inputs[:, layer, :]``.

Implementations (``impl`` in the JSON rows):

* ``fused``: our three kernels (sglang_gemma4.kernels.ple_tail).
* ``sglang``: the seven launches SGLang 0.5.23 issues, as separate ops. The two
  RMSNorms are sgl_kernel (FlashInfer) launches in SGLang; neither is installed
  on the benchmark machine, so each is emulated by the single-op Triton RMSNorm
  of benchmarks/sglang_ops.py (one launch, one read, one write, like the real one).
* ``torch_compile``: Inductor on the three fp32 references, compiled one per
  stretch between the GEMMs (where the real GEMMs would split a whole-tail graph),
  static shapes, default mode.
* ``eager``: the fp32 references as plain PyTorch ops.
* ``floor``: minimal bytes / measured copy bandwidth.

Run on the GPU machine (torch + triton + CUDA, no sglang)::

    PYTHONPATH=python python3 benchmarks/benchmark_ple_tail.py
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import sglang_ops  # noqa: E402

from sglang_gemma4.kernels import ple_tail as pt  # noqa: E402

MODELS = {"E2B": (1536, 35), "E4B": (2560, 42)}  # name -> (hidden, num_hidden_layers)
PER_LAYER_DIM = 256
LAYER = 7  # which layer's per_layer_input slice; only its row stride matters
# 384 and 768 tokens: where a launch fits in one wave or not changes between the powers of two, and
# torch.compile beat earlier launch tables there (benchmarks/notes_issue6.md, session 8).
TOKENS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 384, 512, 768, 1024, 4096, 8192, 16384]
DTYPE = torch.bfloat16
EPS = 1e-6
IMPLS = ("fused", "sglang", "torch_compile", "eager")

# Issue 3's targets.
SPEEDUP_VS_SGLANG_MIN, SMALL_TOKENS_MAX = 2.0, 256
COPY_FRACTION_MIN, LARGE_TOKENS_MIN = 0.85, 4096


class TailInputs:
    """One input set: the tail's activations for ``tokens`` tokens, plus its weights."""

    def __init__(self, tokens: int, hidden: int, num_layers: int, seed: int) -> None:
        gen = torch.Generator(device="cuda").manual_seed(seed)

        def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
            return (scale * torch.randn(*shape, device="cuda", generator=gen)).to(DTYPE)

        self.x = randn(tokens, hidden)
        self.residual = randn(tokens, hidden)
        self.gate = randn(tokens, PER_LAYER_DIM)
        self.per_layer_inputs = randn(tokens, num_layers, PER_LAYER_DIM)
        self.ple = self.per_layer_inputs[:, LAYER, :]
        self.projected = randn(tokens, hidden)
        self.post_ff_weight = randn(hidden, scale=0.1) + 1
        self.post_ple_weight = randn(hidden, scale=0.1) + 1
        self.layer_scalar = torch.tensor([0.3], dtype=DTYPE, device="cuda")


def minimal_bytes(tokens: int, hidden: int) -> int:
    """Each kernel's inputs read once and outputs written once, the two weights and the scalar once."""
    e = DTYPE.itemsize
    norm_add = 3 * tokens * hidden * e + hidden * e  # x, residual, h; w_ff
    gelu_mul = 3 * tokens * PER_LAYER_DIM * e  # gate, ple, g
    norm_add_scale = 3 * tokens * hidden * e + hidden * e + e  # c, h, out; w_ple; scalar
    return norm_add + gelu_mul + norm_add_scale


def fused(t: TailInputs, norm_launch: pt.NormLaunch | None = None, gelu_launch: pt.TileLaunch | None = None) -> torch.Tensor:
    """Our three kernels; the launches override the module's tables for both norms / the gelu (sweeps)."""
    h = pt.rmsnorm_add(t.x, t.post_ff_weight, t.residual, EPS, launch=norm_launch)
    pt.gelu_tanh_mul(t.gate, t.ple, launch=gelu_launch)
    return pt.rmsnorm_add_scale(t.projected, t.post_ple_weight, h, t.layer_scalar, EPS, launch=norm_launch)


def sglang_sequence(t: TailInputs) -> torch.Tensor:
    h = sglang_ops.rmsnorm(t.x, t.post_ff_weight, EPS) + t.residual
    F.gelu(t.gate, approximate="tanh") * t.ple
    return (h + sglang_ops.rmsnorm(t.projected, t.post_ple_weight, EPS)) * t.layer_scalar


def staged(norm_add: Callable, gelu_mul: Callable, norm_add_scale: Callable, t: TailInputs) -> torch.Tensor:
    h = norm_add(t.x, t.post_ff_weight, t.residual, EPS)
    gelu_mul(t.gate, t.ple)
    return norm_add_scale(t.projected, t.post_ple_weight, h, t.layer_scalar, EPS)


def eager_reference(t: TailInputs) -> torch.Tensor:
    return staged(pt.rmsnorm_add_reference, pt.gelu_tanh_mul_reference, pt.rmsnorm_add_scale_reference, t)


def compiled_reference() -> Callable[[TailInputs], torch.Tensor]:
    """Fresh Inductor compilations (static shapes) of the three per-stage references."""
    return partial(
        staged,
        torch.compile(pt.rmsnorm_add_reference, dynamic=False),
        torch.compile(pt.gelu_tanh_mul_reference, dynamic=False),
        torch.compile(pt.rmsnorm_add_scale_reference, dynamic=False),
    )


def check_outputs_agree(t: TailInputs, impls: dict[str, Callable]) -> None:
    """Every implementation computes the same tail (to bf16 rounding) before it is timed."""
    want = eager_reference(t).float()
    for name, fn in impls.items():
        got = fn(t).float()
        torch.testing.assert_close(got, want, rtol=2**-7, atol=2**-6, msg=lambda m: f"{name}: {m}")


def measure(model: str, hidden: int, num_layers: int, tokens: int, compiled: Callable, copy_bw: float) -> list[dict]:
    nbytes = minimal_bytes(tokens, hidden)
    def make_sets() -> list[TailInputs]:
        return [TailInputs(tokens, hidden, num_layers, seed=i) for i in range(harness.input_sets(nbytes))]

    impls = {"fused": fused, "sglang": sglang_sequence, "torch_compile": compiled, "eager": eager_reference}
    check_outputs_agree(TailInputs(tokens, hidden, num_layers, seed=0), impls)
    base = {"op": "ple_tail", "model": model, "hidden": hidden, "per_layer_dim": PER_LAYER_DIM, "tokens": tokens}
    return harness.timed_rows(impls, IMPLS, make_sets, base, nbytes, copy_bw)


def summarize(rows: list[dict]) -> list[dict]:
    """Per (model, tokens): fused vs each target of issue 3."""
    table = []
    for (model, tokens), impls in harness.impls_by_size(rows, "model", "tokens"):
        line = {"model": model, "tokens": tokens, **harness.against_baselines(impls)}
        verdicts = ["ok" if line["x_compile"] >= 1.0 else "SLOWER_THAN_COMPILE"]
        if tokens <= SMALL_TOKENS_MAX:
            verdicts.append("ok" if line["x_sglang"] >= SPEEDUP_VS_SGLANG_MIN else "BELOW_2X_SGLANG")
        if tokens >= LARGE_TOKENS_MIN:
            verdicts.append("ok" if line["copy_pct"] >= 100 * COPY_FRACTION_MIN else "BELOW_85PCT_COPY")
        line["verdict"] = ",".join(v for v in verdicts if v != "ok") or "ok"
        table.append(line)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="*", default=TOKENS)
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()

    harness.allow_one_compile_per_shape()
    started = time.perf_counter()
    copy_bw = harness.copy_bandwidth_TBps()
    print(f"copy bandwidth {copy_bw:.2f} TB/s")
    rows: list[dict] = []
    for model in args.models:
        hidden, num_layers = MODELS[model]
        for tokens in args.tokens:
            # One compiled function per shape: Inductor specializes on it, as SGLang's
            # torch.compile does per captured batch size.
            rows += measure(model, hidden, num_layers, tokens, compiled_reference(), copy_bw)
            print(f"[{time.perf_counter() - started:6.1f}s] {model} tokens={tokens} done", flush=True)

    path = harness.write_results(
        "ple_tail",
        rows,
        copy_bw=copy_bw,
        plot=partial(harness.plot_vs_tokens, title="PLE tail, non-GEMM part (bf16)"),
        extra={
            "dtype": "bfloat16",
            "notes": {
                "scope": "post_ff norm+add, gelu_tanh*mul, post_ple norm+add*layer_scalar; the two GEMMs excluded "
                "(their outputs are precomputed inputs); per_layer_input is the strided view "
                "per_layer_inputs[:, layer, :]",
                "sglang": "7 launches as SGLang 0.5.23 issues them; its two RMSNorm launches (sgl_kernel/FlashInfer "
                "rmsnorm, not installed here) are emulated by the single-op Triton RMSNorm of benchmarks/sglang_ops.py",
                "torch_compile": "torch.compile(dynamic=False) of the three fp32 per-stage references, "
                "one compilation per shape, compiled separately as the GEMMs would split them",
                "bytes": "minimal: each kernel's inputs read once and outputs written once, plus weights and scalar",
            "layouts": "each size timed in harness.LAYOUTS memory layouts (a seeded pad, fresh input sets); us is "
            "the median over layouts, us_layouts the per-layout medians",
            },
            "targets": {
                "speedup_vs_sglang_min": SPEEDUP_VS_SGLANG_MIN,
                "speedup_tokens_max": SMALL_TOKENS_MAX,
                "copy_bandwidth_fraction_min": COPY_FRACTION_MIN,
                "copy_fraction_tokens_min": LARGE_TOKENS_MIN,
                "never_slower_than": "torch_compile",
            },
        },
    )
    print(f"wrote {path} ({time.perf_counter() - started:.0f}s)")
    harness.print_table(
        summarize(rows),
        ["model", "tokens", "fused_us", "sglang_us", "compile_us", "floor_us", "copy_pct", "x_sglang", "x_compile", "x_compile_worst", "verdict"],
    )


if __name__ == "__main__":
    main()
