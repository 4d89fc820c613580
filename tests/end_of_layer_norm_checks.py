"""Inputs, calls and comparisons shared by the CPU and GPU end-of-layer-norm tests (torch only)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from sglang_gemma4.kernels import end_of_layer_norm as eol

EPS = 1e-6
KINDS = ("dense", "moe", "ple")

# Input magnitudes: O(1); large; tiny, where eps outweighs mean(x**2).
SCALES = {"random": 1.0, "large": 300.0, "tiny": 1e-4}


@dataclasses.dataclass
class EndOfLayerCase:
    """One layer end's inputs: ``args`` in the order of the kind's kernel and reference."""

    kind: str
    args: tuple
    fused: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    reference: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    supports: Callable[..., bool]

    def run(self, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fused(*self.args, EPS, **kwargs)

    def expected(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.reference(*self.args, EPS)

    @property
    def residual(self) -> torch.Tensor:
        return self.args[-3]


def end_of_layer_case(
    kind: str,
    tokens: int,
    hidden: int,
    dtype: torch.dtype,
    *,
    scale: float = 1.0,
    seed: int = 0,
    zero_row: bool = False,
    scalar_dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    top_k: int = 8,
) -> EndOfLayerCase:
    """Random inputs of one layer kind ("moe_experts": the MoE end from ``top_k``
    expert rows per token). Weights near 1, ``layer_scalar`` in [0.5, 1.5)
    (in ``scalar_dtype``, default the activation dtype); ``zero_row`` zeroes the
    middle row of every activation."""
    gen = torch.Generator().manual_seed(seed)

    def act() -> torch.Tensor:
        t = scale * torch.randn(tokens, hidden, generator=gen)
        if zero_row and tokens:
            t[tokens // 2] = 0
        return t.to(device, dtype)

    def weight() -> torch.Tensor:
        return (1.0 + 0.3 * torch.randn(hidden, generator=gen)).to(device, dtype)

    scalar = (0.5 + torch.rand(1, generator=gen)).to(device, scalar_dtype or dtype)
    if kind == "dense":
        args = (act(), weight(), act(), scalar, weight())
        return EndOfLayerCase(kind, args, eol.dense_end_of_layer_norm, eol.dense_end_of_layer_norm_reference, eol.supports_dense)
    if kind == "moe":
        args = (act(), weight(), act(), weight(), weight(), act(), scalar, weight())
        return EndOfLayerCase(kind, args, eol.moe_end_of_layer_norm, eol.moe_end_of_layer_norm_reference, eol.supports_moe)
    if kind == "moe_experts":
        # Each token's top-k routed-weighted expert rows instead of their sum.
        rows = torch.stack([act() for _ in range(top_k)], dim=1) / top_k**0.5
        args = (act(), weight(), rows.contiguous(), weight(), weight(), act(), scalar, weight())
        return EndOfLayerCase(
            kind, args, eol.moe_expert_sum_end_of_layer_norm, eol.moe_expert_sum_end_of_layer_norm_reference,
            eol.supports_moe_expert_sum,
        )
    if kind == "ple":
        args = (act(), weight(), act(), scalar, weight())
        return EndOfLayerCase(kind, args, eol.ple_end_of_layer_norm, eol.ple_end_of_layer_norm_reference, eol.supports_ple)
    raise ValueError(kind)


def assert_within_one_rounding(
    actual: torch.Tensor,
    expected: torch.Tensor,
    name: str,
    *,
    max_share: float = 2e-3,
    ulps: float | None = None,
    carried: torch.Tensor | None = None,
) -> None:
    """``actual`` equals ``expected`` up to how fp32 sums and rsqrt are computed.

    bf16/fp16: few elements differ (``max_share``), each by at most two units in
    the last place at the row's scale: a final rounding fell the other way. A
    misplaced rounding point changes a large share of elements instead. fp32:
    every element may differ in its last bits, within ``ulps`` (default 32) of
    the row's scale (three chained norms in the MoE case). ``carried``: a
    per-element difference inherited from an input that was itself allowed to
    differ, added to the bound.
    """
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, name
    if actual.numel() == 0:
        return
    a, e = actual.float(), expected.float()
    assert torch.isfinite(a).all(), f"{name}: non-finite output"
    finfo = torch.finfo(actual.dtype)
    ulps = ulps if ulps is not None else (32 if actual.dtype == torch.float32 else 2)
    row_rms = e.pow(2).mean(dim=-1, keepdim=True).sqrt()
    bound = ulps * finfo.eps * (e.abs() + row_rms) + finfo.tiny
    if carried is not None:
        bound = bound + carried
    excess = (a - e).abs() - bound
    assert excess.max().item() <= 0, f"{name}: max |diff| {(a - e).abs().max().item():.3g} beyond {ulps} ulps"
    if actual.dtype == torch.float32:
        return
    share = (actual != expected).float().mean().item()
    assert share <= max_share, f"{name}: {share:.2%} of elements differ (allowed {max_share:.2%})"


def check_case(case: EndOfLayerCase, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the kernel and compare both outputs with the reference.

    ``next_in`` is also compared with the next layer's norm of the kernel's own
    ``h``, strictly: it must normalize the rounded stream it stored. Against the
    reference its bound also carries ``h``'s own allowed difference through that
    norm (``|dh| * rsqrt(mean(h**2) + eps) * |w_next|``): in the PLE end a last
    rounding of the normalized projection that falls the other way survives the
    residual add as a whole bf16 step of a smaller ``h``.
    """
    h, next_in = case.run(**kwargs)
    want_h, want_next = case.expected()
    assert_within_one_rounding(h, want_h, f"{case.kind} h")
    wh = want_h.float()
    carried = (h.float() - wh).abs() * torch.rsqrt(wh.pow(2).mean(-1, keepdim=True) + EPS) * case.args[-1].float().abs()
    assert_within_one_rounding(next_in, want_next, f"{case.kind} next_in", carried=carried)
    assert_within_one_rounding(next_in, eol.next_input_norm_reference(h, case.args[-1], EPS), f"{case.kind} next_in(h)")
    return h, next_in


def check_strided_over_residual(
    kind: str,
    tokens: int,
    hidden: int,
    launch: eol.EndOfLayerLaunch,
    *,
    scale: float = 1.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> None:
    """``out`` written over ``residual``, the first input's rows spaced 64
    elements wider than ``hidden``, the middle row zero: both outputs within one
    rounding of the reference, the zero row's outputs zero."""
    case = end_of_layer_case(kind, tokens, hidden, torch.bfloat16, scale=scale, zero_row=True, seed=seed, device=device)
    wide = torch.randn(tokens, hidden + 64, device=device).to(torch.bfloat16)
    wide[:, :hidden] = case.args[0]
    case = dataclasses.replace(case, args=(wide[:, :hidden], *case.args[1:]))
    want_h, want_next = case.expected()
    residual = case.residual
    h, next_in = case.run(out=residual, launch=launch)
    assert h.data_ptr() == residual.data_ptr()
    assert_within_one_rounding(h, want_h, "h")
    assert_within_one_rounding(next_in, want_next, "next_in")
    zero = tokens // 2
    assert torch.count_nonzero(h[zero]) == 0 and torch.count_nonzero(next_in[zero]) == 0
