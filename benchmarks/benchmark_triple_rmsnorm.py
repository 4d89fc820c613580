"""Benchmark: the post-attention triple RMSNorm of Gemma-4's MoE layer (26B-A4B), and the 31B row width.

Per MoE decoder layer, between the attention's o_proj and the FFN GEMMs::

    r         = rmsnorm(attn_out, w_post_attn) + residual
    dense_in  = rmsnorm(r, w_pre_ff)
    router_in = rmsnorm(r, w_router)       # router scale folded into the weight
    moe_in    = rmsnorm(r, w_pre_ff_2)

rounded where SGLang 0.5.23 rounds (sglang_gemma4.kernels.triple_rmsnorm).

Implementations (``impl`` in the JSON rows):

* ``fused``: our kernel, one launch, ``r`` written into the residual in place.
* ``sglang``: SGLang's four launches (rmsnorm; fused_add_rmsnorm, in place;
  rmsnorm; rmsnorm). Those are sgl_kernel/FlashInfer kernels, not installed on
  the benchmark machine, so each is emulated by a single-op Triton kernel of
  this file that does what that op does, one launch each.
* ``plain_rmsnorm``: one plain RMSNorm of the same shape (the emulated
  rmsnorm above): the yardstick of the decode-size latency target.
* ``torch_compile``: Inductor on the fp32 reference (same rounding points),
  one static-shape compilation per shape, default mode.
* ``eager``: the reference as plain PyTorch ops.
* ``floor``: minimal bytes / measured copy bandwidth.

Run on the GPU machine (torch + triton + CUDA, no sglang)::

    PYTHONPATH=python python3 benchmarks/benchmark_triple_rmsnorm.py

``--no-sweep`` skips the launch-configuration sweep of the fused kernel (row
kernel x warps, chunked kernel x chunk width, at a few token counts), recorded
under ``launch_sweep`` in the JSON.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from sglang_gemma4.kernels import triple_rmsnorm as tr  # noqa: E402

MODELS = {"26B-A4B": 2816, "31B-width": 5376}  # the 31B is dense; its row width tests the wide case
TOKENS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 8192, 16384]
DTYPE = torch.bfloat16
EPS = 1e-6
IMPLS = ("fused", "sglang", "plain_rmsnorm", "torch_compile", "eager")

# Issue 8's targets.
PLAIN_RATIO_MAX, PLAIN_TOKENS_MAX = 1.3, 32
SPEEDUP_SMALL_MIN, SMALL_TOKENS_MAX = 2.5, 128
SPEEDUP_ALL_MIN = 1.5
COPY_FRACTION_MIN, LARGE_TOKENS_MIN = 0.90, 4096

SWEEP_TOKENS = [1, 4, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384]
SWEEP_ROW_WARPS = [4, 8, 16, 32]
SWEEP_CHUNKS = [(512, 2), (512, 4), (1024, 4), (1024, 8), (2048, 8), (2048, 16)]  # (columns per chunk, warps)


@triton.jit
def _rmsnorm_kernel(x_ptr, w_ptr, out_ptr, n_cols, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    inv_rms = tl.rsqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    tl.store(out_ptr + row * n_cols + cols, (x * inv_rms * w).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _fused_add_rmsnorm_kernel(x_ptr, res_ptr, w_ptr, n_cols, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    offs = row * n_cols + cols
    s = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s += tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(res_ptr + offs, s.to(res_ptr.dtype.element_ty), mask=mask)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    inv_rms = tl.rsqrt(tl.sum(s * s, axis=0) / n_cols + eps)
    tl.store(x_ptr + offs, (s * inv_rms * w).to(x_ptr.dtype.element_ty), mask=mask)


def sglang_rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Stand-in for sgl_kernel.rmsnorm: ``round(x * rsqrt(mean(x^2) + eps) * w)``, one launch."""
    out = torch.empty_like(x)
    block = triton.next_power_of_2(x.shape[1])
    num_warps = tr.launch_config(x.shape[1], 1).num_warps  # the row kernel's warps
    _rmsnorm_kernel[(x.shape[0],)](x, weight, out, x.shape[1], eps, BLOCK=block, num_warps=num_warps)
    return out


def sglang_fused_add_rmsnorm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> None:
    """Stand-in for sgl_kernel.fused_add_rmsnorm: ``s = x + residual`` in fp32,
    ``residual = round(s)``, ``x = round(rmsnorm(s, w))``, in place, one launch."""
    block = triton.next_power_of_2(x.shape[1])
    num_warps = tr.launch_config(x.shape[1], 1).num_warps  # the row kernel's warps
    _fused_add_rmsnorm_kernel[(x.shape[0],)](x, residual, weight, x.shape[1], eps, BLOCK=block, num_warps=num_warps)


class NormInputs:
    """One input set: attention output, residual and the four weights (bf16)."""

    def __init__(self, tokens: int, hidden: int, seed: int) -> None:
        gen = torch.Generator(device="cuda").manual_seed(seed)

        def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
            return (scale * torch.randn(*shape, device="cuda", generator=gen)).to(DTYPE)

        self.attn_out = randn(tokens, hidden)
        self.residual = randn(tokens, hidden)
        self.w_post_attn = randn(hidden, scale=0.1) + 1
        self.w_pre_ff = randn(hidden, scale=0.1) + 1
        self.w_router = (randn(hidden, scale=0.1) + 1) * hidden**-0.5
        self.w_pre_ff_2 = randn(hidden, scale=0.1) + 1

    @property
    def weights(self) -> tuple[torch.Tensor, ...]:
        return self.w_post_attn, self.w_pre_ff, self.w_router, self.w_pre_ff_2

    def fresh(self) -> "NormInputs":
        """A copy whose residual an in-place implementation may overwrite."""
        other = copy.copy(self)
        other.residual = self.residual.clone()
        return other


def minimal_bytes(tokens: int, hidden: int) -> int:
    """attn_out and residual read once, r and the three normalized rows written once, four weights."""
    return (6 * tokens * hidden + 4 * hidden) * DTYPE.itemsize


def plain_rmsnorm_bytes(tokens: int, hidden: int) -> int:
    return (2 * tokens * hidden + hidden) * DTYPE.itemsize


def fused(t: NormInputs, launch: tr.TripleNormLaunch | None = None) -> tuple[torch.Tensor, ...]:
    return tr.post_attn_triple_rmsnorm(t.attn_out, t.residual, *t.weights, EPS, residual_out=t.residual, launch=launch)


def sglang_sequence(t: NormInputs) -> tuple[torch.Tensor, ...]:
    hidden = sglang_rmsnorm(t.attn_out, t.w_post_attn, EPS)  # post_attention_layernorm
    sglang_fused_add_rmsnorm(hidden, t.residual, t.w_pre_ff, EPS)  # pre_feedforward_layernorm
    router_in = sglang_rmsnorm(t.residual, t.w_router, EPS)  # router.norm
    moe_in = sglang_rmsnorm(t.residual, t.w_pre_ff_2, EPS)  # pre_feedforward_layernorm_2
    return t.residual, hidden, router_in, moe_in


def plain_rmsnorm(t: NormInputs) -> torch.Tensor:
    return sglang_rmsnorm(t.attn_out, t.w_post_attn, EPS)


def eager_reference(t: NormInputs) -> tuple[torch.Tensor, ...]:
    return tr.triple_rmsnorm_reference(t.attn_out, t.residual, *t.weights, EPS)


def compiled_reference() -> Callable[[NormInputs], tuple[torch.Tensor, ...]]:
    """A fresh static-shape Inductor compilation of the reference."""
    compiled = torch.compile(tr.triple_rmsnorm_reference, dynamic=False)
    return lambda t: compiled(t.attn_out, t.residual, *t.weights, EPS)


def allow_one_compile_per_shape() -> None:
    # 14 token counts x 2 widths recompile the reference; the default limit (8)
    # would silently fall back to eager after the eighth shape.
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 256)


def check_outputs_agree(t: NormInputs, impls: dict[str, Callable]) -> None:
    """Every implementation computes the reference's four outputs (to two bf16
    roundings: Inductor sums the squares in another order, which moves a handful
    of elements per million by one ulp, sometimes a second rounding later) before
    it is timed; in-place ones on a copy of the residual."""
    want = eager_reference(t)
    for name, fn in impls.items():
        got = fn(t.fresh())
        for label, g, w in zip(("r", "dense_in", "router_in", "moe_in"), got, want):
            torch.testing.assert_close(
                g.float(), w.float(), rtol=2**-6, atol=2**-6, msg=lambda m: f"{name} {label}: {m}"
            )


def measure(model: str, hidden: int, tokens: int, compiled: Callable, copy_bw: float) -> list[dict]:
    nbytes = minimal_bytes(tokens, hidden)
    sets = [NormInputs(tokens, hidden, seed=i) for i in range(harness.input_sets(nbytes))]
    impls = {"fused": fused, "sglang": sglang_sequence, "torch_compile": compiled, "eager": eager_reference}
    check_outputs_agree(sets[0], impls)
    impls["plain_rmsnorm"] = plain_rmsnorm
    base = {"op": "triple_rmsnorm", "model": model, "hidden": hidden, "tokens": tokens}
    rows = []
    for name in IMPLS:
        fn = impls[name]
        us = harness.graph_us([partial(fn, s) for s in sets])
        launches = harness.count_launches(partial(fn, sets[0]))
        row_bytes = plain_rmsnorm_bytes(tokens, hidden) if name == "plain_rmsnorm" else nbytes
        rows.append({**base, "impl": name, "us": round(us, 3), "launches": launches, "bytes": row_bytes})
    floor_us = nbytes / (copy_bw * 1e12) * 1e6
    rows.append({**base, "impl": "floor", "us": round(floor_us, 3), "launches": 0, "bytes": nbytes})
    return rows


def sweep(model: str, hidden: int, tokens: int, copy_bw: float) -> list[dict]:
    """The fused kernel under other launch configurations than launch_config's:
    the row kernel with more or fewer warps, the chunked kernel with other
    chunk widths; at every size, so that the crossover shows."""
    nbytes = minimal_bytes(tokens, hidden)
    sets = [NormInputs(tokens, hidden, seed=i) for i in range(harness.input_sets(nbytes))]
    default = tr.launch_config(hidden, tokens)
    row = tr.launch_config(hidden, 1)
    configs = {row._replace(num_warps=w) for w in SWEEP_ROW_WARPS}
    configs |= {tr.TripleNormLaunch("chunked", chunk, 1, w) for chunk, w in SWEEP_CHUNKS}
    configs.add(default)
    out = []
    for launch in sorted(configs):
        us = harness.graph_us([partial(fused, s, launch) for s in sets])
        out.append({
            "model": model, "hidden": hidden, "tokens": tokens, **launch._asdict(),
            "is_default": launch == default,
            "us": round(us, 3), "copy_pct": round(100 * nbytes / (copy_bw * 1e12) * 1e6 / us, 1),
        })
    return out


def best_launches(swept: list[dict]) -> list[dict]:
    """Per (hidden, tokens): the fastest configuration of the sweep and the default's time."""
    by_size: dict[tuple, list[dict]] = {}
    for r in swept:
        by_size.setdefault((r["hidden"], r["tokens"]), []).append(r)
    out = []
    for (hidden, tokens), runs in sorted(by_size.items()):
        best = min(runs, key=lambda r: r["us"])
        default = next(r for r in runs if r["is_default"])
        out.append({**best, "default_us": default["us"]})
    return out


def summarize(rows: list[dict]) -> list[dict]:
    """Per (model, tokens): the fused kernel against each of issue 8's targets."""
    table = []
    for (hidden, tokens), impls in harness.impls_by_size(rows, "hidden", "tokens"):
        fused_us = impls["fused"]["us"]
        line = {
            "hidden": hidden,
            "tokens": tokens,
            "fused_us": fused_us,
            "plain_us": impls["plain_rmsnorm"]["us"],
            "sglang_us": impls["sglang"]["us"],
            "compile_us": impls["torch_compile"]["us"],
            "floor_us": impls["floor"]["us"],
            "copy_pct": 100 * impls["floor"]["us"] / fused_us,
            "x_plain": fused_us / impls["plain_rmsnorm"]["us"],
            "x_sglang": impls["sglang"]["us"] / fused_us,
            "x_compile": impls["torch_compile"]["us"] / fused_us,
        }
        misses = []
        if line["x_compile"] < 1.0:
            misses.append("SLOWER_THAN_COMPILE")
        if line["x_sglang"] < (SPEEDUP_SMALL_MIN if tokens <= SMALL_TOKENS_MAX else SPEEDUP_ALL_MIN):
            misses.append("BELOW_SGLANG_SPEEDUP")
        if tokens <= PLAIN_TOKENS_MAX and line["x_plain"] > PLAIN_RATIO_MAX:
            misses.append("ABOVE_1.3X_PLAIN")
        if tokens >= LARGE_TOKENS_MIN and line["copy_pct"] < 100 * COPY_FRACTION_MIN:
            misses.append("BELOW_90PCT_COPY")
        line["verdict"] = ",".join(misses) or "ok"
        table.append(line)
    return table


def _extra(models: list[str], swept: list[dict]) -> dict:
    extra = {
        "dtype": "bfloat16",
        "notes": {
            "scope": "post_attention_layernorm, the residual add, pre_feedforward_layernorm, the router's norm "
            "(scale folded into its weight) and pre_feedforward_layernorm_2 of a Gemma-4 MoE layer",
            "sglang_emulation": "SGLang 0.5.23's 4 launches (sgl_kernel/FlashInfer rmsnorm, fused_add_rmsnorm "
            "in place, rmsnorm, rmsnorm; not installed here) emulated by single-op Triton kernels of this "
            "benchmark, one launch each, with the fused kernel's warps per row width",
            "plain_rmsnorm": "one emulated rmsnorm launch of the same [tokens, hidden]; bytes = its own traffic",
            "torch_compile": "torch.compile(dynamic=False) of the fp32 reference with SGLang's rounding points, "
            "one compilation per shape",
            "fused": "r written into the residual in place, as fused_add_rmsnorm does",
            "bytes": "minimal: attn_out and residual read once, 4 rows written once, 4 weights",
            "31B-width": "hidden 5376 is the 31B's width; the 31B is dense and has no such block",
        },
        "targets": {
            "fused_over_plain_rmsnorm_max": PLAIN_RATIO_MAX,
            "plain_tokens_max": PLAIN_TOKENS_MAX,
            "speedup_vs_sglang_small_min": SPEEDUP_SMALL_MIN,
            "small_tokens_max": SMALL_TOKENS_MAX,
            "speedup_vs_sglang_all_min": SPEEDUP_ALL_MIN,
            "copy_bandwidth_fraction_min": COPY_FRACTION_MIN,
            "copy_fraction_tokens_min": LARGE_TOKENS_MIN,
            "never_slower_than": "torch_compile",
        },
        "fused_launch_config": {
            f"{MODELS[m]}x{t}": tr.launch_config(MODELS[m], t)._asdict() for m in models for t in (1, max(TOKENS))
        },
    }
    if swept:
        extra["launch_sweep"] = swept
    return extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="*", default=TOKENS)
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--no-sweep", action="store_true", help="skip the fused kernel's launch-configuration sweep")
    args = parser.parse_args()

    allow_one_compile_per_shape()
    started = time.perf_counter()
    copy_bw = harness.copy_bandwidth_TBps()
    print(f"copy bandwidth {copy_bw:.2f} TB/s")
    rows: list[dict] = []
    swept: list[dict] = []
    write = partial(
        harness.write_results,
        "triple_rmsnorm",
        copy_bw=copy_bw,
        plot=partial(harness.plot_us_vs_tokens, title="Gemma-4 MoE post-attention triple RMSNorm (bf16)"),
    )
    for model in args.models:
        hidden = MODELS[model]
        for tokens in args.tokens:
            # One compiled function per shape: Inductor specializes on it, as a
            # static-shape torch.compile per captured batch size does.
            rows += measure(model, hidden, tokens, compiled_reference(), copy_bw)
            print(f"[{time.perf_counter() - started:6.1f}s] {model} tokens={tokens} done", flush=True)
        # Written after each width, so that a run cut short keeps what it measured.
        path = write(rows, extra=_extra(args.models, swept))
    if not args.no_sweep:
        for model in args.models:
            for tokens in SWEEP_TOKENS:
                swept += sweep(model, MODELS[model], tokens, copy_bw)
            print(f"[{time.perf_counter() - started:6.1f}s] {model} launch sweep done", flush=True)
        path = write(rows, extra=_extra(args.models, swept))
    print(f"wrote {path} ({time.perf_counter() - started:.0f}s)")
    table = summarize(rows)
    harness.print_table(
        table,
        ["hidden", "tokens", "fused_us", "plain_us", "sglang_us", "compile_us", "floor_us",
         "copy_pct", "x_plain", "x_sglang", "x_compile", "verdict"],
    )
    if swept:
        print("\nlaunch sweep (fused): kernel x block x warps")
        harness.print_table(
            swept, ["hidden", "tokens", "kernel", "block", "rows_per_program", "num_warps", "is_default", "us", "copy_pct"]
        )
        print("\nfastest launch per size vs launch_config's")
        harness.print_table(
            best_launches(swept), ["hidden", "tokens", "kernel", "block", "num_warps", "us", "default_us"]
        )
    misses = [line for line in table if line["verdict"] != "ok"]
    print(f"\n{len(table) - len(misses)}/{len(table)} sizes meet every target")


if __name__ == "__main__":
    main()
