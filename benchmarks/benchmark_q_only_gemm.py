"""Benchmark: the qkv GEMM of a KV-shared layer, full (SGLang 0.5.23) vs Q rows only (patch attention_prologue).

A KV-shared layer of E2B/E4B discards the K and V its qkv GEMM computes. The
plugin multiplies by the first ``q_size`` rows of the same weight (a view, no
copy). This measures what that saves, per layer and per decode step.

Implementations (``impl`` in the JSON rows):

* ``sglang``: ``F.linear(x, W_qkv)``, ``W_qkv`` of ``[q + 2 kv, hidden]`` (what SGLang runs).
* ``fused``: ``F.linear(x, W_qkv[:q])`` on the view (what the patch runs).
* ``floor``: max(weight + activation bytes / copy bandwidth, FLOPs / measured
  bf16 GEMM rate) of the Q-only GEMM.

Shapes: sliding-attention layers (head_dim 256) and full-attention layers
(head_dim 512) of E2B (8 q heads, 1 kv head, hidden 1536) and E4B (8 q heads,
2 kv heads, hidden 2560); bf16; batch 1..512 tokens. ``F.linear`` is cuBLAS
here; on a server SGLang may route the same GEMM to another bf16 backend, and
the patch routes the Q-only GEMM through the same dispatch.

Run on the GPU machine (torch + CUDA, no sglang)::

    PYTHONPATH=python python3 benchmarks/benchmark_q_only_gemm.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

# model -> (hidden, q heads, kv heads, KV-shared layers of num_hidden_layers)
MODELS = {"E2B": (1536, 8, 1, 20, 35), "E4B": (2560, 8, 2, 18, 42)}
HEAD_DIMS = {"sliding": 256, "full": 512}
TOKENS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
DTYPE = torch.bfloat16
DEVICE = "cuda"  # a module constant so a CPU dry run can swap it


def gemm_tflops(n: int = 8192, iters: int = 20) -> float:
    """Measured bf16 GEMM rate (cuBLAS, square, random data)."""
    a = torch.randn(n, n, device=DEVICE, dtype=DTYPE)
    b = torch.randn(n, n, device=DEVICE, dtype=DTYPE)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(iters):
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3)
    return 2 * n**3 / statistics.median(times) / 1e12


class GemmInputs:
    def __init__(self, tokens: int, hidden: int, rows: int, seed: int) -> None:
        gen = torch.Generator(device=DEVICE).manual_seed(seed)
        self.x = torch.randn(tokens, hidden, device=DEVICE, generator=gen).to(DTYPE)
        self.w = (0.02 * torch.randn(rows, hidden, device=DEVICE, generator=gen)).to(DTYPE)


def measure(model: str, layer: str, tokens: int, copy_bw: float, tflops: float) -> list[dict]:
    hidden, q_heads, kv_heads, shared, _ = MODELS[model]
    head_dim = HEAD_DIMS[layer]
    q_size, kv_size = q_heads * head_dim, kv_heads * head_dim
    rows = q_size + 2 * kv_size
    e = DTYPE.itemsize
    full_bytes = (rows * hidden + tokens * (hidden + rows)) * e
    sets = [GemmInputs(tokens, hidden, rows, seed=i) for i in range(harness.input_sets(full_bytes))]

    def full(t: GemmInputs) -> torch.Tensor:
        return F.linear(t.x, t.w)

    def q_only(t: GemmInputs) -> torch.Tensor:
        return F.linear(t.x, t.w.narrow(0, 0, q_size))

    # Same Q columns either way (the view is the same memory as the full weight's first rows).
    torch.testing.assert_close(q_only(sets[0]), full(sets[0])[:, :q_size], rtol=2**-7, atol=2**-6)
    assert sets[0].w.narrow(0, 0, q_size).data_ptr() == sets[0].w.data_ptr()
    base = {
        "op": "qkv_gemm", "model": model, "layer": layer, "shape": f"{model} {layer}", "hidden": hidden,
        "tokens": tokens, "q_size": q_size, "kv_size": kv_size, "kv_shared_layers": shared,
    }
    out = []
    for impl, fn, n_out in (("sglang", full, rows), ("fused", q_only, q_size)):
        us = harness.graph_us([partial(fn, s) for s in sets])
        nbytes = (n_out * hidden + tokens * (hidden + n_out)) * e
        out.append({**base, "impl": impl, "us": round(us, 3), "launches": harness.count_launches(partial(fn, sets[0])),
                    "bytes": nbytes, "n_out": n_out})
    q_bytes = (q_size * hidden + tokens * (hidden + q_size)) * e
    floor_us = max(q_bytes / (copy_bw * 1e12), 2 * tokens * hidden * q_size / (tflops * 1e12)) * 1e6
    out.append({**base, "impl": "floor", "us": round(floor_us, 3), "launches": 0, "bytes": q_bytes, "n_out": q_size})
    return out


def summarize(rows: list[dict]) -> list[dict]:
    table = []
    for (model, layer, tokens), impls in harness.impls_by_size(rows, "model", "layer", "tokens"):
        full_us, q_us = impls["sglang"]["us"], impls["fused"]["us"]
        shared = impls["sglang"]["kv_shared_layers"]
        table.append({
            "model": model, "layer": layer, "tokens": tokens, "full_us": full_us, "q_only_us": q_us,
            "saved_us": full_us - q_us, "saved_pct": 100 * (full_us - q_us) / full_us,
            # If every KV-shared layer had this shape: the saving per decode step.
            "step_saved_us": shared * (full_us - q_us),
        })
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="*", default=TOKENS)
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()

    started = time.perf_counter()
    copy_bw = harness.copy_bandwidth_TBps()
    tflops = gemm_tflops()
    print(f"copy bandwidth {copy_bw:.2f} TB/s, bf16 GEMM {tflops:.0f} TFLOP/s")
    rows: list[dict] = []
    for model in args.models:
        for layer in HEAD_DIMS:
            for tokens in args.tokens:
                rows += measure(model, layer, tokens, copy_bw, tflops)
            print(f"[{time.perf_counter() - started:6.1f}s] {model} {layer} done", flush=True)
    path = harness.write_results(
        "q_only_gemm",
        rows,
        copy_bw=copy_bw,
        plot=partial(harness.plot_vs_tokens, title="KV-shared layer qkv GEMM (bf16)", group_key="shape"),
        extra={
            "dtype": "bfloat16",
            "gemm_tflops": round(tflops, 1),
            "summary": summarize(rows),
            "notes": {
                "sglang": "F.linear on the whole [q + 2 kv, hidden] qkv weight, as SGLang 0.5.23 runs on KV-shared layers",
                "fused": "F.linear on the view W[:q] (patch attention_prologue), no weight copy",
                "floor": "max(bytes / copy bandwidth, FLOPs / measured bf16 GEMM rate) of the Q-only GEMM",
                "step_saved_us": "saved_us x KV-shared layers (20 for E2B, 18 for E4B), as if all had this layer's shape",
            },
        },
    )
    print(f"wrote {path} ({time.perf_counter() - started:.0f}s)")
    harness.print_table(
        summarize(rows), ["model", "layer", "tokens", "full_us", "q_only_us", "saved_us", "saved_pct", "step_saved_us"]
    )


if __name__ == "__main__":
    main()
