"""Benchmark: the end of a Gemma-4 decoder layer with the next layer's input_layernorm folded in.

A layer ends by writing its new hidden stream ``h``; the next layer starts with
``rmsnorm(h, w_next)``. Per layer kind (sglang_gemma4.kernels.end_of_layer_norm)::

    dense (31B):    h = round((rmsnorm(x, w_post_ff) + residual) * s)
    MoE (26B-A4B):  h = round((rmsnorm(rmsnorm(h1, w1) + rmsnorm(h2, w2), w3) + residual) * s)
    PLE (E2B/E4B):  h = round(round(round(rmsnorm(x, w_post_ple)) + residual) * s)
    next_in = round(rmsnorm(h, w_next))

Implementations (``impl`` in the JSON rows):

* ``fused``: our one launch writing ``h`` and ``next_in``.
* ``sglang``: what SGLang 0.5.23 launches: its fused end-of-layer Triton kernel
  (dense/MoE; the PLE layer's three eager ops) and then the next layer's
  ``sgl_kernel.rmsnorm``. Neither sglang nor sgl_kernel is on the benchmark
  machine: each launch is a single-op stand-in (benchmarks/sglang_ops.py).
* ``torch_compile``: Inductor on the fp32 reference of the whole pattern
  (``torch.compile(dynamic=False)``, one compilation per shape).
* ``eager``: the reference as plain PyTorch ops.
* ``floor``: minimal bytes / measured copy bandwidth.

Target (issue 6): ``fused`` at >= 85% of copy bandwidth from 4096 tokens on,
and never slower than ``torch_compile``.

Run on the GPU machine (torch + triton + CUDA, no sglang)::

    PYTHONPATH=python python3 benchmarks/benchmark_end_of_layer_norm.py

The kernel's launch configurations are swept by
benchmarks/sweep_end_of_layer_norm.py (which reuses this file's implementations).
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import sglang_ops as so  # noqa: E402

from sglang_gemma4.kernels import end_of_layer_norm as eol  # noqa: E402

# name -> (layer kind, hidden)
MODELS = {"26B-A4B": ("moe", 2816), "31B": ("dense", 5376), "E2B": ("ple", 1536), "E4B": ("ple", 2560)}
DEFAULT_MODELS = ("26B-A4B", "31B")
# 384 and 768 tokens: where a launch fits in one wave or not changes between the powers of two, and
# torch.compile beat earlier launch tables there (benchmarks/notes_issue6.md, session 8).
TOKENS = [1, 2, 8, 32, 128, 256, 384, 512, 768, 1024, 2048, 4096, 8192, 16384]
DTYPE = torch.bfloat16
EPS = 1e-6
DEVICE = "cuda"  # a module constant so a CPU dry run (Triton interpreter) can swap it
IMPLS = ("fused", "sglang", "torch_compile", "eager")

COPY_FRACTION_MIN, LARGE_TOKENS_MIN = 0.85, 4096


class EndInputs:
    """One input set for one layer kind: ``args`` in the order of the kind's kernel."""

    def __init__(self, kind: str, tokens: int, hidden: int, seed: int) -> None:
        gen = torch.Generator(device=DEVICE).manual_seed(seed)

        def act() -> torch.Tensor:
            return torch.randn(tokens, hidden, device=DEVICE, generator=gen).to(DTYPE)

        def weight() -> torch.Tensor:
            return (1 + 0.1 * torch.randn(hidden, device=DEVICE, generator=gen)).to(DTYPE)

        scalar = torch.tensor([0.7], device=DEVICE, dtype=DTYPE)
        self.kind = kind
        if kind == "moe":
            self.args = (act(), weight(), act(), weight(), weight(), act(), scalar, weight())
        else:
            self.args = (act(), weight(), act(), scalar, weight())


FUSED = {"dense": eol.dense_end_of_layer_norm, "moe": eol.moe_end_of_layer_norm, "ple": eol.ple_end_of_layer_norm}
REFERENCE = {
    "dense": eol.dense_end_of_layer_norm_reference,
    "moe": eol.moe_end_of_layer_norm_reference,
    "ple": eol.ple_end_of_layer_norm_reference,
}


def sglang_sequence(t: EndInputs) -> tuple[torch.Tensor, torch.Tensor]:
    a = t.args
    if t.kind == "dense":
        x, w, residual, scalar, w_next = a
        h = so.rmsnorm_residual_scalar(x, w, residual, scalar, EPS)
    elif t.kind == "moe":
        h1, w1, h2, w2, w3, residual, scalar, w_next = a
        h = so.dual_rmsnorm_residual_scalar(h1, w1, h2, w2, w3, residual, scalar, EPS)
    else:
        x, w, residual, scalar, w_next = a
        h = (so.rmsnorm(x, w, EPS) + residual) * scalar
    return h, so.rmsnorm(h, w_next, EPS)


def minimal_bytes(kind: str, tokens: int, hidden: int) -> int:
    """Activations read once, ``h`` and ``next_in`` written once, weights once."""
    e = DTYPE.itemsize
    reads, weights = (3, 4) if kind == "moe" else (2, 2)
    return (reads + 2) * tokens * hidden * e + weights * hidden * e + e


def check_outputs_agree(t: EndInputs, impls: dict[str, Callable]) -> None:
    """Every implementation computes the same two tensors (to a few bf16 roundings) before it is timed."""
    want = [o.float() for o in REFERENCE[t.kind](*t.args, EPS)]
    for name, fn in impls.items():
        for got, ref in zip(fn(t), want):
            torch.testing.assert_close(got.float(), ref, rtol=2**-6, atol=2**-5, msg=lambda m: f"{name}: {m}")


def measure(model: str, kind: str, hidden: int, tokens: int, copy_bw: float) -> list[dict]:
    nbytes = minimal_bytes(kind, tokens, hidden)
    def make_sets() -> list[EndInputs]:
        return [EndInputs(kind, tokens, hidden, seed=i) for i in range(harness.input_sets(nbytes))]

    reference = REFERENCE[kind]
    compiled = torch.compile(reference, dynamic=False)
    impls = {
        "fused": lambda t: FUSED[kind](*t.args, EPS),
        "sglang": sglang_sequence,
        "torch_compile": lambda t: compiled(*t.args, EPS),
        "eager": lambda t: reference(*t.args, EPS),
    }
    check_outputs_agree(EndInputs(kind, tokens, hidden, seed=0), impls)
    base = {"op": "end_of_layer_norm", "model": model, "layer": kind, "hidden": hidden, "tokens": tokens}
    return harness.timed_rows(impls, IMPLS, make_sets, base, nbytes, copy_bw)


def summarize(rows: list[dict]) -> list[dict]:
    table = []
    for (model, tokens), impls in harness.impls_by_size(rows, "model", "tokens"):
        line = {"model": model, "tokens": tokens, **harness.against_baselines(impls)}
        verdicts = [] if line["x_compile"] >= 1.0 else ["SLOWER_THAN_COMPILE"]
        if tokens >= LARGE_TOKENS_MIN and line["copy_pct"] < 100 * COPY_FRACTION_MIN:
            verdicts.append("BELOW_85PCT_COPY")
        line["verdict"] = ",".join(verdicts) or "ok"
        table.append(line)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="*", default=TOKENS)
    parser.add_argument("--models", nargs="*", default=list(DEFAULT_MODELS), choices=list(MODELS))
    args = parser.parse_args()

    harness.allow_one_compile_per_shape()
    started = time.perf_counter()
    copy_bw = harness.copy_bandwidth_TBps()
    print(f"copy bandwidth {copy_bw:.2f} TB/s")
    rows: list[dict] = []
    for model in args.models:
        kind, hidden = MODELS[model]
        for tokens in args.tokens:
            rows += measure(model, kind, hidden, tokens, copy_bw)
            print(f"[{time.perf_counter() - started:6.1f}s] {model} tokens={tokens} done", flush=True)

    path = harness.write_results(
        "end_of_layer_norm",
        rows,
        copy_bw=copy_bw,
        plot=partial(harness.plot_vs_tokens, title="end of layer + next input norm (bf16)"),
        extra={
            "dtype": "bfloat16",
            "notes": {
                "scope": "the layer's last fused op and the next layer's input_layernorm; dense: "
                "(rmsnorm(x)+residual)*scalar, MoE: dual-branch combine, PLE: post-PLE norm+add+scalar",
                "sglang": "SGLang 0.5.23's launches (its Triton end-of-layer kernel or the PLE layer's eager "
                "ops, then sgl_kernel.rmsnorm), each emulated by a single-op stand-in (benchmarks/sglang_ops.py)",
                "torch_compile": "torch.compile(dynamic=False) of the fp32 reference of the whole pattern, "
                "one compilation per shape",
                "bytes": "minimal: activations read once, h and next_in written once, weights once",
            },
            "targets": {
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
