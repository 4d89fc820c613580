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

``--mode norm_add``: the 2-output mode of dense and PLE layers (31B, E2B,
E4B), ``(r, dense_in)`` of :func:`post_attn_norm_add`, against SGLang's two
launches (rmsnorm; fused_add_rmsnorm) and Inductor on its reference; written
to ``triple_rmsnorm_norm_add.json`` (same format).

Run on the GPU machine (torch + triton + CUDA, no sglang)::

    PYTHONPATH=python python3 benchmarks/benchmark_triple_rmsnorm.py [--mode norm_add]

The fused kernel's launch configurations are swept by
benchmarks/sweep_triple_rmsnorm.py (which reuses this file's implementations).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from sglang_gemma4.kernels import triple_rmsnorm as tr  # noqa: E402

MODELS = {"26B-A4B": 2816, "31B-width": 5376}  # the 31B is dense; its row width tests the wide case
NORM_ADD_MODELS = {"E2B": 1536, "E4B": 2560, "31B": 5376}  # dense and PLE layers: (r, dense_in)
# 384 and 768 tokens: where a launch fits in one wave or not changes between the powers of two, and
# torch.compile beat earlier launch tables there (benchmarks/notes_issue6.md, session 8).
TOKENS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 384, 512, 768, 1024, 4096, 8192, 16384]
DTYPE = torch.bfloat16
EPS = 1e-6
# CPU only for the sweep's dry run under TRITON_INTERPRET=1.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
IMPLS = ("fused", "sglang", "plain_rmsnorm", "torch_compile", "eager")

# Issue 8's targets.
PLAIN_RATIO_MAX, PLAIN_TOKENS_MAX = 1.3, 32
SPEEDUP_SMALL_MIN, SMALL_TOKENS_MAX = 2.5, 128
SPEEDUP_ALL_MIN = 1.5
COPY_FRACTION_MIN, LARGE_TOKENS_MIN = 0.90, 4096


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


def stand_in_warps(block: int) -> int:
    """Warps of the single-op stand-ins: 8 elements per thread (a 16-byte bf16
    vector), 4 to 32 warps. Fixed, so that the yardsticks do not move when the
    fused kernel's launch table does (it is the fused row kernel's first rule)."""
    return max(4, min(32, block // (32 * 8)))


def sglang_rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Stand-in for sgl_kernel.rmsnorm: ``round(x * rsqrt(mean(x^2) + eps) * w)``, one launch."""
    out = torch.empty_like(x)
    block = triton.next_power_of_2(x.shape[1])
    _rmsnorm_kernel[(x.shape[0],)](x, weight, out, x.shape[1], eps, BLOCK=block, num_warps=stand_in_warps(block))
    return out


def sglang_fused_add_rmsnorm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> None:
    """Stand-in for sgl_kernel.fused_add_rmsnorm: ``s = x + residual`` in fp32,
    ``residual = round(s)``, ``x = round(rmsnorm(s, w))``, in place, one launch."""
    block = triton.next_power_of_2(x.shape[1])
    _fused_add_rmsnorm_kernel[(x.shape[0],)](
        x, residual, weight, x.shape[1], eps, BLOCK=block, num_warps=stand_in_warps(block)
    )


class NormInputs:
    """One input set: attention output, residual and the four weights (bf16)."""

    def __init__(self, tokens: int, hidden: int, seed: int) -> None:
        gen = torch.Generator(device=DEVICE).manual_seed(seed)

        def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
            return (scale * torch.randn(*shape, device=DEVICE, generator=gen)).to(DTYPE)

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


def minimal_bytes(tokens: int, hidden: int, outputs: int = 4) -> int:
    """attn_out and residual read once, ``outputs`` rows written once (r and the
    normalized rows), one weight per output."""
    return ((2 + outputs) * tokens * hidden + outputs * hidden) * DTYPE.itemsize


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


def fused_norm_add(t: NormInputs, launch: tr.TripleNormLaunch | None = None) -> tuple[torch.Tensor, ...]:
    return tr.post_attn_norm_add(t.attn_out, t.residual, t.w_post_attn, t.w_pre_ff, EPS, residual_out=t.residual, launch=launch)


def sglang_norm_add_sequence(t: NormInputs) -> tuple[torch.Tensor, ...]:
    hidden = sglang_rmsnorm(t.attn_out, t.w_post_attn, EPS)  # post_attention_layernorm
    sglang_fused_add_rmsnorm(hidden, t.residual, t.w_pre_ff, EPS)  # pre_feedforward_layernorm
    return t.residual, hidden


def eager_norm_add_reference(t: NormInputs) -> tuple[torch.Tensor, ...]:
    return tr.post_attn_norm_add_reference(t.attn_out, t.residual, t.w_post_attn, t.w_pre_ff, EPS)


def compiled_norm_add_reference() -> Callable[[NormInputs], tuple[torch.Tensor, ...]]:
    """A fresh static-shape Inductor compilation of the 2-output reference."""
    compiled = torch.compile(tr.post_attn_norm_add_reference, dynamic=False)
    return lambda t: compiled(t.attn_out, t.residual, t.w_post_attn, t.w_pre_ff, EPS)


def plain_rmsnorm(t: NormInputs) -> torch.Tensor:
    return sglang_rmsnorm(t.attn_out, t.w_post_attn, EPS)


def eager_reference(t: NormInputs) -> tuple[torch.Tensor, ...]:
    return tr.triple_rmsnorm_reference(t.attn_out, t.residual, *t.weights, EPS)


def compiled_reference() -> Callable[[NormInputs], tuple[torch.Tensor, ...]]:
    """A fresh static-shape Inductor compilation of the reference."""
    compiled = torch.compile(tr.triple_rmsnorm_reference, dynamic=False)
    return lambda t: compiled(t.attn_out, t.residual, *t.weights, EPS)


class Mode(NamedTuple):
    """One of the kernel's two modes: its op name, outputs, and implementations."""

    op: str
    outputs: int
    models: dict[str, int]
    fused: Callable[..., tuple[torch.Tensor, ...]]
    sglang: Callable[[NormInputs], tuple[torch.Tensor, ...]]
    eager: Callable[[NormInputs], tuple[torch.Tensor, ...]]
    compiled: Callable[[], Callable[[NormInputs], tuple[torch.Tensor, ...]]]


MODES = {
    "triple": Mode(
        "triple_rmsnorm", 4, MODELS, fused, sglang_sequence, eager_reference, compiled_reference
    ),
    "norm_add": Mode(
        "post_attn_norm_add", 2, NORM_ADD_MODELS, fused_norm_add, sglang_norm_add_sequence,
        eager_norm_add_reference, compiled_norm_add_reference,
    ),
}


def check_outputs_agree(t: NormInputs, impls: dict[str, Callable], reference: Callable) -> None:
    """Every implementation computes ``reference``'s outputs (to two bf16
    roundings: Inductor sums the squares in another order, which moves a handful
    of elements per million by one ulp, sometimes a second rounding later) before
    it is timed; in-place ones on a copy of the residual."""
    want = reference(t)
    for name, fn in impls.items():
        got = fn(t.fresh())
        for label, g, w in zip(("r", "dense_in", "router_in", "moe_in"), got, want):
            torch.testing.assert_close(
                g.float(), w.float(), rtol=2**-6, atol=2**-6, msg=lambda m: f"{name} {label}: {m}"
            )


def measure(
    model: str, hidden: int, tokens: int, compiled: Callable, copy_bw: float, mode: Mode = MODES["triple"]
) -> list[dict]:
    nbytes = minimal_bytes(tokens, hidden, mode.outputs)
    def make_sets() -> list[NormInputs]:
        return [NormInputs(tokens, hidden, seed=i) for i in range(harness.input_sets(nbytes))]

    impls = {"fused": mode.fused, "sglang": mode.sglang, "torch_compile": compiled, "eager": mode.eager}
    check_outputs_agree(NormInputs(tokens, hidden, seed=0), impls, mode.eager)
    impls["plain_rmsnorm"] = plain_rmsnorm
    base = {"op": mode.op, "model": model, "hidden": hidden, "tokens": tokens}
    plain_bytes = {"plain_rmsnorm": plain_rmsnorm_bytes(tokens, hidden)}
    return harness.timed_rows(impls, IMPLS, make_sets, base, nbytes, copy_bw, bytes_of=plain_bytes)


def summarize(rows: list[dict]) -> list[dict]:
    """Per (model, tokens): the fused kernel against each of issue 8's targets."""
    table = []
    for (hidden, tokens), impls in harness.impls_by_size(rows, "hidden", "tokens"):
        line = {"hidden": hidden, "tokens": tokens, **harness.against_baselines(impls)}
        line["plain_us"] = impls["plain_rmsnorm"]["us"]
        line["x_plain"] = line["fused_us"] / impls["plain_rmsnorm"]["us"]
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


def _extra(mode: Mode, models: list[str]) -> dict:
    extra = {
        "dtype": "bfloat16",
        "notes": {
            "scope": "post_attention_layernorm, the residual add, pre_feedforward_layernorm, the router's norm "
            "(scale folded into its weight) and pre_feedforward_layernorm_2 of a Gemma-4 MoE layer"
            if mode.outputs == 4
            else "post_attention_layernorm, the residual add and pre_feedforward_layernorm of a Gemma-4 dense "
            "or PLE layer (r, dense_in)",
            "sglang_emulation": "SGLang 0.5.23's launches (sgl_kernel/FlashInfer rmsnorm, fused_add_rmsnorm "
            "in place, then for the MoE layer rmsnorm, rmsnorm; not installed here) emulated by single-op "
            "Triton kernels of this benchmark, one launch each, 8 elements per thread (4-32 warps)",
            "plain_rmsnorm": "one emulated rmsnorm launch of the same [tokens, hidden]; bytes = its own traffic",
            "torch_compile": "torch.compile(dynamic=False) of the fp32 reference with SGLang's rounding points, "
            "one compilation per shape",
            "fused": "r written into the residual in place, as fused_add_rmsnorm does",
            "bytes": f"minimal: attn_out and residual read once, {mode.outputs} rows written once, "
            f"{mode.outputs} weights",
            "31B-width": "hidden 5376 is the 31B's width; the 31B is dense and has no such block",
            "layouts": "each size timed in harness.LAYOUTS memory layouts (a seeded pad, fresh input sets); us is "
            "the median over layouts, us_layouts the per-layout medians",
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
            f"{mode.models[m]}x{t}": tr.launch_config(mode.models[m], t, mode.outputs == 4)._asdict()
            for m in models
            for t in (1, max(TOKENS))
        },
    }
    return extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", default="triple", choices=list(MODES))
    parser.add_argument("--tokens", type=int, nargs="*", default=TOKENS)
    parser.add_argument("--models", nargs="*", help=f"default: all of the mode's ({MODELS} or {NORM_ADD_MODELS})")
    args = parser.parse_args()
    mode = MODES[args.mode]
    models = args.models or list(mode.models)
    if not set(models) <= set(mode.models):
        parser.error(f"--mode {args.mode} takes --models from {list(mode.models)}")

    harness.allow_one_compile_per_shape()
    started = time.perf_counter()
    copy_bw = harness.copy_bandwidth_TBps()
    print(f"copy bandwidth {copy_bw:.2f} TB/s")
    rows: list[dict] = []
    name, title = (
        ("triple_rmsnorm", "Gemma-4 MoE post-attention triple RMSNorm (bf16)")
        if mode.outputs == 4
        else ("triple_rmsnorm_norm_add", "Gemma-4 dense/PLE post-attention norm + add + norm (bf16)")
    )
    write = partial(harness.write_results, name, copy_bw=copy_bw, plot=partial(harness.plot_vs_tokens, title=title))
    for model in models:
        hidden = mode.models[model]
        for tokens in args.tokens:
            # One compiled function per shape: Inductor specializes on it, as a
            # static-shape torch.compile per captured batch size does.
            rows += measure(model, hidden, tokens, mode.compiled(), copy_bw, mode)
            print(f"[{time.perf_counter() - started:6.1f}s] {model} tokens={tokens} done", flush=True)
        # Written after each width, so that a run cut short keeps what it measured.
        path = write(rows, extra=_extra(mode, models))
    print(f"wrote {path} ({time.perf_counter() - started:.0f}s)")
    table = summarize(rows)
    harness.print_table(
        table,
        ["hidden", "tokens", "fused_us", "plain_us", "sglang_us", "compile_us", "floor_us",
         "copy_pct", "x_plain", "x_sglang", "x_compile", "x_compile_worst", "verdict"],
    )
    misses = [line for line in table if line["verdict"] != "ok"]
    print(f"\n{len(table) - len(misses)}/{len(table)} sizes meet every target")


if __name__ == "__main__":
    main()
