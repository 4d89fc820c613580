"""Patch ``ple_tail``: the per-layer-embedding tail of E2B/E4B decoder layers in 3 launches, not 7.

Why: for a PLE layer (``has_ple``, no MoE block) SGLang 0.5.23's
``Gemma4DecoderLayer._next_stream`` runs, after the MLP::

    h   = post_feedforward_layernorm(mlp_out) + residual        # 2 launches
    g   = gelu_tanh(per_layer_input_gate(h)) * per_layer_input  # GEMM + 2 launches
    c   = per_layer_projection(g)                               # GEMM
    out = (post_per_layer_input_norm(c) + h) * layer_scalar     # 3 launches

How: the same MLP call and TP sum, the layer's own GEMMs (so quantized
projections keep working), and the pointwise/norm stretches between them as
the three kernels of :mod:`sglang_gemma4.kernels.ple_tail`, which round where
the eager ops do. ``per_layer_input`` (the view ``per_layer_inputs[:, layer, :]``)
is read in place; ``layer_scalar`` is read on the device, so CUDA graphs see
the loaded value.

Every other layer and input goes to SGLang's own ``_next_stream``: MoE layers
(with or without PLE), ``per_layer_input is None`` (e.g. a PP rank that did not
receive it), norms configured to round differently, and tensors the kernels do
not take (see ``supports_ple_tail``: not CUDA, unsupported dtype, empty batch,
a row too long, a ``layer_scalar`` whose dtype would make eager promote) and
activations outside ``patch_fused_dtypes()`` (bf16/fp16; fp32 only under
Triton's interpreter, for the CPU tests).

Delete when: SGLang fuses the PLE tail of ``Gemma4DecoderLayer`` itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from sglang_gemma4.kernels.ple_tail import gelu_tanh_mul, rmsnorm_add, rmsnorm_add_scale, supports_ple_tail
from sglang_gemma4.kernels.support import patch_fused_dtypes
from sglang_gemma4.registry import Hook, Patch

_LAYER = "sglang.srt.models.gemma4_causal.Gemma4DecoderLayer"
PATCH_NAME = "ple_tail"


def takes_fused_tail(layer: torch.nn.Module, residual: torch.Tensor, per_layer_input: torch.Tensor | None) -> bool:
    """Whether ``layer``'s tail may run fused for these inputs.

    ``residual`` stands for the MLP output, which the eager tail adds to it:
    same shape, and the same dtype, or eager would promote.
    """
    if not layer.has_ple or layer.enable_moe_block or per_layer_input is None:
        return False
    # bf16/fp16 on CUDA (what the GPU tests and benchmark cover); fp32 only under the interpreter.
    if residual.dtype not in patch_fused_dtypes():
        return False
    post_ff, post_ple = layer.post_feedforward_layernorm, layer.post_per_layer_input_norm
    # Other settings of these norms round or scale differently from the kernels.
    if post_ff.variance_size_override is not None or post_ff.cast_x_before_out_mul:
        return False
    if not post_ple.with_scale or post_ple.scale_shift != 0.0:
        return False
    return supports_ple_tail(
        residual, residual, per_layer_input, post_ff.weight, post_ple.weight, layer.layer_scalar
    )


def next_stream(
    original: Callable[..., torch.Tensor],
    self: torch.nn.Module,
    hidden_states: torch.Tensor,
    residual: torch.Tensor,
    per_layer_input: torch.Tensor | None,
    forward_batch: Any,
) -> torch.Tensor:
    """``_next_stream`` of a PLE layer with its tail fused; anything else goes to ``original``."""
    if not takes_fused_tail(self, residual, per_layer_input):
        return original(self, hidden_states, residual, per_layer_input, forward_batch)
    projected, h = ple_branch(self, hidden_states, residual, per_layer_input, forward_batch)
    return ple_end(self, projected, h)


def ple_branch(
    layer: torch.nn.Module,
    hidden_states: torch.Tensor,
    residual: torch.Tensor,
    per_layer_input: torch.Tensor,
    forward_batch: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c, h)`` of the module docstring, from the MLP input: the MLP (its TP sum
    completed), ``h`` by :func:`rmsnorm_add`, the two GEMMs around :func:`gelu_tanh_mul`."""
    from sglang.srt.layers.layer_boundary import SumGroup

    post_ff = layer.post_feedforward_layernorm
    mlp_out = layer.ffn_boundary.sum_part(layer.mlp(hidden_states), forward_batch, SumGroup.TP)
    h = rmsnorm_add(mlp_out, post_ff.weight, residual, post_ff.variance_epsilon)
    gate, _ = layer.per_layer_input_gate(h)
    projected, _ = layer.per_layer_projection(gelu_tanh_mul(gate, per_layer_input))
    return projected, h


def ple_end(layer: torch.nn.Module, projected: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``(post_per_layer_input_norm(c) + h) * layer_scalar`` by :func:`rmsnorm_add_scale`."""
    post_ple = layer.post_per_layer_input_norm
    # Gemma4RMSNorm keeps its epsilon in .eps (SGLang's RMSNorm: .variance_epsilon).
    return rmsnorm_add_scale(projected, post_ple.weight, h, layer.layer_scalar, post_ple.eps)


def _check() -> str | None:
    from sglang.srt.layers.layer_boundary import SumGroup
    from sglang.srt.layers.layernorm import Gemma4RMSNorm, RMSNorm

    if not hasattr(SumGroup, "TP"):
        return "SumGroup has no TP member"
    norm = RMSNorm(4)
    for attr in ("weight", "variance_epsilon", "variance_size_override", "cast_x_before_out_mul"):
        if not hasattr(norm, attr):
            return f"RMSNorm has no attribute {attr!r}"
    gemma4_norm = Gemma4RMSNorm(4)
    for attr in ("weight", "eps", "with_scale", "scale_shift"):
        if not hasattr(gemma4_norm, attr):
            return f"Gemma4RMSNorm has no attribute {attr!r}"
    return None


PATCHES = [
    Patch(
        name=PATCH_NAME,
        summary="E2B/E4B PLE tail: 7 pointwise/norm launches -> 3 fused Triton kernels",
        hooks=(
            Hook(
                f"{_LAYER}._next_stream",
                next_stream,
                "around",
                params=("self", "hidden_states", "residual", "per_layer_input", "forward_batch"),
            ),
        ),
        delete_when="Gemma4DecoderLayer._next_stream fuses the per-layer-embedding tail itself",
        check=_check,
    )
]
