"""The whole PLE tail, shared by the CPU and GPU PLE-tail tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sglang_gemma4.kernels import ple_tail as pt

EPS = 1e-6


def whole_tail(
    x: torch.Tensor,
    post_ff_weight: torch.Tensor,
    residual: torch.Tensor,
    *,
    per_layer_dim: int,
    num_layers: int,
    layer: int,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three kernels between the layer's two GEMMs (random GEMM weights, the
    per-layer input a strided slice of ``[T, num_layers, per_layer_dim]``) and
    :func:`pt.ple_tail_reference` on the same inputs: ``(out, ref, h, post_ple_weight)``."""
    tokens, hidden = x.shape
    dtype, device = x.dtype, x.device

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, generator=gen)

    ple = randn(tokens, num_layers, per_layer_dim).to(dtype)[:, layer, :]
    gate_w = (randn(per_layer_dim, hidden) / hidden**0.5).to(dtype)
    proj_w = (randn(hidden, per_layer_dim) / per_layer_dim**0.5).to(dtype)
    post_ple_weight = (1 + 0.1 * randn(hidden)).to(dtype)
    layer_scalar = torch.tensor([0.25], dtype=dtype, device=device)

    h = pt.rmsnorm_add(x, post_ff_weight, residual, EPS)
    g = pt.gelu_tanh_mul(F.linear(h, gate_w), ple)
    out = pt.rmsnorm_add_scale(F.linear(g, proj_w), post_ple_weight, h, layer_scalar, EPS)
    ref = pt.ple_tail_reference(
        x, residual, ple,
        post_ff_weight=post_ff_weight, post_ff_eps=EPS,
        gate_gemm=lambda t: F.linear(t, gate_w), projection_gemm=lambda t: F.linear(t, proj_w),
        post_ple_weight=post_ple_weight, post_ple_eps=EPS, layer_scalar=layer_scalar,
    )
    return out, ref, h, post_ple_weight
