"""Inputs, calls and comparisons shared by the CPU and GPU triple-RMSNorm tests."""

from __future__ import annotations

import torch

from sglang_gemma4.kernels.triple_rmsnorm import (
    TripleNormLaunch,
    post_attn_norm_add,
    post_attn_norm_add_reference,
    post_attn_triple_rmsnorm,
    triple_rmsnorm_reference,
)

EPS = 1e-6
OUTPUT_NAMES = ("r", "dense_in", "router_in", "moe_in")

# Input magnitudes: O(1); large (squares still far from fp16's range once
# accumulated in fp32); tiny, where eps outweighs mean(x**2).
SCALES = {"random": 1.0, "large": 300.0, "tiny": 1e-4}


def triple_norm_inputs(
    tokens: int,
    hidden: int,
    dtype: torch.dtype,
    *,
    scale: float = 1.0,
    seed: int = 0,
    zero_row: bool = False,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """``(attn_out, residual, [w_post_attn, w_pre_ff, w_router, w_pre_ff_2])``.

    Weights near 1 in the activation dtype, except the router's, which is a
    folded ``scale * hidden**-0.5`` as in SGLang. ``zero_row`` zeroes the middle
    row of both activations.
    """
    gen = torch.Generator().manual_seed(seed)
    attn_out = scale * torch.randn(tokens, hidden, generator=gen)
    residual = scale * torch.randn(tokens, hidden, generator=gen)
    if zero_row and tokens:
        attn_out[tokens // 2] = 0
        residual[tokens // 2] = 0
    weights = [1.0 + 0.3 * torch.randn(hidden, generator=gen) for _ in range(4)]
    weights[2] = weights[2] * hidden**-0.5
    return (
        attn_out.to(device, dtype),
        residual.to(device, dtype),
        [w.to(device, dtype) for w in weights],
    )


def assert_within_one_rounding(
    actual: torch.Tensor, expected: torch.Tensor, name: str, *, max_share: float = 1e-3
) -> None:
    """``actual`` equals ``expected`` up to how fp32 sums and rsqrt are computed.

    bf16/fp16: few elements differ (``max_share``), each by at most two units of
    the last place at the row's scale: a final rounding fell on the other side
    of a boundary. A misplaced rounding point changes ~20% of elements, so the
    share separates the two cases by orders of magnitude. fp32: every element
    may differ in its last bits; each stays within 16 ulps of the row's scale.
    """
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, name
    if actual.numel() == 0:
        return
    a, e = actual.float(), expected.float()
    assert torch.isfinite(a).all(), f"{name}: non-finite output"
    ulp = torch.finfo(actual.dtype).eps
    ulps = 16 if actual.dtype == torch.float32 else 2
    row_rms = e.pow(2).mean(dim=-1, keepdim=True).sqrt()
    bound = ulps * ulp * (e.abs() + row_rms) + torch.finfo(actual.dtype).tiny
    excess = (a - e).abs() - bound
    assert excess.max().item() <= 0, (
        f"{name}: max |diff| {(a - e).abs().max().item():.3g} beyond {ulps} ulps of the row scale"
    )
    if actual.dtype == torch.float32:
        return
    differing = (actual != expected).sum().item()
    # A few elements whatever the size: tiny CPU shapes have only hundreds.
    allowed = max(4, max_share * actual.numel())
    assert differing <= allowed, (
        f"{name}: {differing} of {actual.numel()} elements differ (allowed {allowed:.0f})"
    )


def check_post_attn(
    tokens: int,
    hidden: int,
    dtype: torch.dtype,
    launch: TripleNormLaunch | None = None,
    *,
    outputs: int = 4,
    in_place: bool = False,
    device: str | torch.device = "cpu",
    **input_kwargs,
) -> tuple[torch.Tensor, ...]:
    """Run the kernel's 4-output mode (:func:`post_attn_triple_rmsnorm`) or its
    2-output mode (:func:`post_attn_norm_add`) on :func:`triple_norm_inputs` and
    assert every output within one rounding of its fp32 reference; with
    ``in_place`` ``r`` goes into the residual's own memory. Returns the outputs."""
    attn_out, residual, weights = triple_norm_inputs(tokens, hidden, dtype, device=device, **input_kwargs)
    if outputs == 4:
        kernel, reference = post_attn_triple_rmsnorm, triple_rmsnorm_reference
    else:
        kernel, reference, weights = post_attn_norm_add, post_attn_norm_add_reference, weights[:2]
    expected = reference(attn_out, residual, *weights, EPS)
    actual = kernel(attn_out, residual, *weights, EPS, residual_out=residual if in_place else None, launch=launch)
    assert len(actual) == outputs
    if in_place:
        assert actual[0].data_ptr() == residual.data_ptr()
    for name, a, e in zip(OUTPUT_NAMES, actual, expected):
        assert_within_one_rounding(a, e, name)
    return actual
