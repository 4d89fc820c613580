"""Benchmark: the bandwidth ceiling of a kernel's read/write mix, without its arithmetic.

The copy bandwidth the targets are stated in moves one byte written per byte
read. Our kernels move other mixes: the triple norm reads 2 rows and writes 4,
the end-of-layer kernel of a MoE layer reads 3 and writes 2. A kernel that only
moves that mix (each output row = the sum of the input rows, one row per
program, 8 elements per thread) bounds what any implementation of the same
traffic reaches. Rows: ``mix`` (e.g. "2r4w"), hidden, tokens, us, the bytes moved,
and the fraction of the measured copy bandwidth.

Run on the GPU machine (torch + triton + CUDA, no sglang)::

    PYTHONPATH=python python3 benchmarks/benchmark_traffic_mix.py
"""

from __future__ import annotations

import sys
import time
from functools import partial
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

# (reads, writes) -> the kernel that moves it: name in the JSON
MIXES = {(1, 1): "copy", (2, 4): "triple_rmsnorm", (2, 2): "post_attn_norm_add / end_of_layer (dense, PLE)",
         (3, 2): "end_of_layer (MoE)", (3, 1): "ple_tail norms"}
WIDTHS = (2816, 5376)
TOKENS = (4096, 8192, 16384)


@triton.jit
def _mix_kernel(in0, in1, in2, out0, out1, out2, out3, hidden,
                READS: tl.constexpr, WRITES: tl.constexpr, BLOCK: tl.constexpr):
    base = tl.program_id(0).to(tl.int64) * hidden
    cols = tl.arange(0, BLOCK)
    ok = cols < hidden
    acc = tl.load(in0 + base + cols, mask=ok, other=0.0, eviction_policy="evict_first").to(tl.float32)
    if READS > 1:
        acc += tl.load(in1 + base + cols, mask=ok, other=0.0, eviction_policy="evict_first").to(tl.float32)
    if READS > 2:
        acc += tl.load(in2 + base + cols, mask=ok, other=0.0, eviction_policy="evict_first").to(tl.float32)
    val = acc.to(out0.dtype.element_ty)
    tl.store(out0 + base + cols, val, mask=ok)
    if WRITES > 1:
        tl.store(out1 + base + cols, val, mask=ok)
    if WRITES > 2:
        tl.store(out2 + base + cols, val, mask=ok)
    if WRITES > 3:
        tl.store(out3 + base + cols, val, mask=ok)


def move(ins: list[torch.Tensor], outs: list[torch.Tensor], reads: int, writes: int) -> None:
    tokens, hidden = ins[0].shape
    block = triton.next_power_of_2(hidden)
    _mix_kernel[(tokens,)](*ins, *outs, hidden, READS=reads, WRITES=writes, BLOCK=block, num_warps=max(1, block // 256))


plot = partial(
    harness.plot_vs_tokens,
    title="read/write mix alone (bf16), hidden",
    group_key="hidden",
    line_key="mix",
    y_key="copy_fraction",
    y_label="fraction of measured copy bandwidth",
    log_y=False,
)


def main() -> None:
    started = time.perf_counter()
    copy_bw = harness.copy_bandwidth_TBps()
    rows = []
    for (reads, writes), what in MIXES.items():
        for hidden in WIDTHS:
            for tokens in TOKENS:
                nbytes = (reads + writes) * tokens * hidden * 2
                sets = []
                for _ in range(harness.input_sets(nbytes)):
                    ins = [torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
                    outs = [torch.empty(tokens, hidden, device="cuda", dtype=torch.bfloat16) for _ in range(4)]
                    sets.append((ins, outs))
                move(*sets[0], reads, writes)
                want = sum(t.float() for t in sets[0][0][:reads])
                for out in sets[0][1][:writes]:
                    torch.testing.assert_close(out.float(), want, rtol=2**-7, atol=2**-7)
                us = harness.graph_us([partial(move, i, o, reads, writes) for i, o in sets])
                rows.append({"mix": f"{reads}r{writes}w", "moved_by": what, "hidden": hidden, "tokens": tokens,
                             "us": round(us, 3), "bytes": nbytes,
                             "copy_fraction": round(nbytes / (us * 1e-6) / (copy_bw * 1e12), 4)})
                print(rows[-1], f"[{time.perf_counter() - started:.0f}s]", flush=True)
    print(f"wrote {harness.write_results('traffic_mix', rows, copy_bw=copy_bw, plot=plot)}")


if __name__ == "__main__":
    main()
