"""Patch ``attention_prologue``: the prologue of ``Gemma4Attention.forward``, in fewer launches and FLOPs.

Why, two behaviours (issue 6a and 6c):

* Q-only on KV-shared layers: a KV-shared layer (the last ``num_kv_shared_layers``
  of E2B/E4B: 20 of 35, 18 of 42) reads its K/V from an earlier layer's cache,
  but SGLang 0.5.23 still runs the whole qkv GEMM and drops K and V. Here it
  multiplies by the Q rows of the same weight only (a view, no copy): the
  GEMM's output width goes from ``q + 2 kv`` to ``q`` heads.
* q/k/v norm + RoPE in one launch: SGLang runs the per-head q/k/v RMSNorm and
  RoPE as two launches (three on a KV-shared layer, which also zero-fills a
  dummy key for the RoPE kernel); here they are one
  (:mod:`sglang_gemma4.kernels.qkv_norm_rope`), rounding where SGLang stores.

How: one AROUND hook on ``Gemma4Attention.forward`` computes what SGLang's
forward computes::

    q, k, v  = split(qkv_proj(x))          or  q = x @ W_qkv[:q].T  (KV-shared, Q-only)
    q, k, v  = per-head norms, RoPE on q, k (fused kernel, or SGLang's own ops)
    out      = o_proj(attn(q, k, v, save_kv_cache=not kv_shared))

The Q-only GEMM goes through the layer's own ``quant_method.apply`` with the
Q-row view as weight, so it takes the same GEMM backend SGLang would choose.
It applies to unquantized ``QKVParallelLinear`` projections only (a quantized
or LoRA-wrapped projection, Intel AMX-packed weights, or sequence-parallel
TP > 1 keep SGLang's GEMM). The fused norm+RoPE applies where SGLang's norms
are the plain ``x * rsqrt(mean(x^2) + eps) * w`` (q, k) and weightless (v) with
one eps, its RoPE is the base NeoX ``RotaryEmbedding`` math over the whole
head (``Gemma4RotaryEmbedding`` included), and the kernel takes the tensors
(CUDA, or CPU under ``TRITON_INTERPRET=1``); otherwise SGLang's own norm and
RoPE ops run on the hook's q/k/v. A layer where neither applies runs SGLang's
forward unchanged.

Delete when: SGLang projects only Q on KV-shared layers and fuses the q/k/v
norms with RoPE in the causal model (both; either alone shrinks this hook).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from sglang_gemma4.kernels.qkv_norm_rope import qkv_norm_rope, supports
from sglang_gemma4.kernels.support import FUSED_DTYPES, triton_can_run_on
from sglang_gemma4.registry import Hook, Patch

_ATTN = "sglang.srt.models.gemma4_causal.Gemma4Attention"
PATCH_NAME = "attention_prologue"
# The two behaviours; tests switch one off through enabled().
Q_ONLY = "q_only_kv_shared"
NORM_ROPE = "qkv_norm_rope"


def enabled() -> frozenset[str]:
    """The behaviours the hook applies."""
    return frozenset((Q_ONLY, NORM_ROPE))


# --------------------------------------------------------------------------- Q-only projection


class _RowsOf:
    """What ``UnquantizedLinearMethod.apply`` reads of a layer: its ``weight``."""

    __slots__ = ("weight",)

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight


def takes_q_only(attn: torch.nn.Module, hidden_states: Any) -> bool:
    """Whether ``attn`` may project Q alone for these inputs (module docstring)."""
    from sglang.srt.distributed.utils import get_group_rank_size
    from sglang.srt.layers.linear import QKVParallelLinear
    from sglang.srt.layers.quantization.unquant import UnquantizedLinearMethod
    from sglang.srt.runtime_context import get_forward

    if not (attn.is_kv_shared_layer and attn.kv_shared_layer_index is not None):
        return False
    if not isinstance(hidden_states, torch.Tensor) or hidden_states.dim() != 2:
        return False
    proj = attn.qkv_proj
    if not isinstance(proj, QKVParallelLinear) or type(proj.quant_method) is not UnquantizedLinearMethod:
        return False
    if getattr(proj, "use_intel_amx_backend", False):  # weight packed for AMX, rows reordered
        return False
    weight = proj.weight
    if weight.dim() != 2 or tuple(weight.shape) != (attn.q_size + 2 * attn.kv_size, hidden_states.shape[1]):
        return False
    # ColumnParallelLinear.forward gathers the sequence first under sequence parallelism.
    return not (get_forward().sp_active and get_group_rank_size(proj.tp_group)[1] > 1)


def project_q(attn: torch.nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """``hidden_states @ W[:q_size].T (+ b[:q_size])`` through the layer's own GEMM path."""
    proj = attn.qkv_proj
    bias = proj.bias if not proj.skip_bias_add else None
    q_rows = _RowsOf(proj.weight.narrow(0, 0, attn.q_size))
    return proj.quant_method.apply(q_rows, hidden_states, None if bias is None else bias.narrow(0, 0, attn.q_size))


# --------------------------------------------------------------------------- norm + RoPE


def _plain_rope(rope: torch.nn.Module, head_dim: int, on_cuda: bool) -> bool:
    from sglang.srt.layers.rotary_embedding.base import RotaryEmbedding

    cls = type(rope)
    if not isinstance(rope, RotaryEmbedding) or not rope.is_neox_style:
        return False
    # Subclasses that only change the cache (Gemma4RotaryEmbedding) apply it the same way.
    for method in ("forward", "forward_native", "forward_cuda", "forward_cpu"):
        if getattr(cls, method, None) is not getattr(RotaryEmbedding, method, None):
            return False
    if rope.head_size != head_dim or rope.rotary_dim != head_dim or hasattr(rope, "sin_cos_cache"):
        return False
    # The fallback CUDA kernel and the RL-native path read the cache in the activation dtype.
    return not getattr(rope, "_force_native", False) and not (on_cuda and getattr(rope, "use_fallback_kernel", False))


def may_fuse_norm_rope(attn: torch.nn.Module, hidden_states: Any) -> bool:
    """Whether the fused norm+RoPE kernel fits this layer (checked before the GEMM;
    :func:`supports` decides on the GEMM's output)."""
    if not isinstance(hidden_states, torch.Tensor) or hidden_states.dtype not in FUSED_DTYPES:
        return False
    if not triton_can_run_on(hidden_states):
        return False
    q_norm, k_norm, v_norm = attn.q_norm, attn.k_norm, attn.v_norm
    if not (q_norm.with_scale and k_norm.with_scale and not v_norm.with_scale):
        return False
    if q_norm.scale_shift != 0.0 or k_norm.scale_shift != 0.0 or not q_norm.eps == k_norm.eps == v_norm.eps:
        return False
    return _plain_rope(attn.rotary_emb, attn.head_dim, hidden_states.is_cuda)


def norm_rope_like_sglang(
    attn: torch.nn.Module, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor | None, v: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """SGLang 0.5.23's own per-head norms and RoPE (its ops, its order), for the
    hook's q/k/v when the fused kernel does not apply. ``k``/``v`` None: KV-shared."""
    from sglang.srt.models import gemma4_causal

    heads, kv_heads, head_dim = attn.num_heads, attn.num_kv_heads, attn.head_dim
    if (q.is_cuda or q.is_xpu) and attn.q_norm.scale_shift == 0.0 and attn.k_norm.scale_shift == 0.0 and not attn.v_norm.with_scale:
        gemma4_causal.gemma_qkv_rmsnorm(
            q, k, v, attn.q_norm.weight.data, None if k is None else attn.k_norm.weight.data,
            num_q_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim, eps=attn.q_norm.eps,
        )
    else:
        q = attn.q_norm(q.unflatten(-1, (heads, head_dim))).flatten(-2, -1)
        if k is not None:
            k = attn.k_norm(k.unflatten(-1, (kv_heads, head_dim))).flatten(-2, -1)
            v = attn.v_norm(v.unflatten(-1, (kv_heads, head_dim))).flatten(-2, -1)
    if k is None:
        # SGLang's RoPE needs a key; a KV-shared layer hands it zeros and drops the result.
        q, _ = attn.rotary_emb(positions, q, torch.zeros_like(q[:, : attn.kv_size]))
    else:
        q, k = attn.rotary_emb(positions, q, k)
    return q, k, v


# --------------------------------------------------------------------------- the hook


def attention_forward(
    original: Callable[..., torch.Tensor],
    self: torch.nn.Module,
    positions: torch.Tensor,
    hidden_states: torch.Tensor,
    forward_batch: Any,
    **kwargs: Any,
) -> torch.Tensor:
    """``Gemma4Attention.forward`` with the enabled prologue behaviours (module docstring)."""
    on = enabled()
    q_only = Q_ONLY in on and takes_q_only(self, hidden_states)
    fuse = NORM_ROPE in on and may_fuse_norm_rope(self, hidden_states)
    if not (q_only or fuse):
        return original(self, positions, hidden_states, forward_batch, **kwargs)

    kv_shared = self.is_kv_shared_layer and self.kv_shared_layer_index is not None
    if q_only:
        q, k, v = project_q(self, hidden_states), None, None
    else:
        qkv, _ = self.qkv_proj(hidden_states)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        if kv_shared:
            k = v = None
    heads = dict(num_q_heads=self.num_heads, num_kv_heads=self.num_kv_heads, head_dim=self.head_dim)
    w_k = None if k is None else self.k_norm.weight
    cache = self.rotary_emb.cos_sin_cache
    if fuse and supports(q, k, v, positions, cache, self.q_norm.weight, w_k, **heads):
        qkv_norm_rope(q, k, v, positions, cache, self.q_norm.weight, w_k, self.q_norm.eps, **heads)
    else:
        q, k, v = norm_rope_like_sglang(self, positions, q, k, v)

    q = q.unflatten(-1, (self.num_heads, self.head_dim))
    if k is not None:
        k = k.reshape(-1, self.num_kv_heads, self.head_dim)
        v = v.reshape(-1, self.num_kv_heads, self.head_dim)
    attn_output = self.attn(q, k, v, forward_batch=forward_batch, save_kv_cache=not self.is_kv_shared_layer)
    if attn_output.dim() == 3:
        attn_output = attn_output.flatten(-2, -1)
    output, _ = self.o_proj(attn_output)
    return output


# --------------------------------------------------------------------------- patch entries


def _check_sglang_symbols() -> str | None:
    from sglang.srt.layers import linear
    from sglang.srt.layers.quantization import unquant
    from sglang.srt.layers.rotary_embedding import base
    from sglang.srt.models import gemma4_causal

    for owner, name in (
        (gemma4_causal, "gemma_qkv_rmsnorm"),
        (linear, "QKVParallelLinear"),
        (unquant, "UnquantizedLinearMethod"),
        (base, "RotaryEmbedding"),
    ):
        if not hasattr(owner, name):
            return f"{owner.__name__}.{name} is gone"
    return None


PATCHES = [
    Patch(
        name=PATCH_NAME,
        summary="KV-shared layers project Q only (no K/V GEMM work); q/k/v RMSNorm + RoPE in one launch",
        hooks=(
            Hook(
                f"{_ATTN}.forward",
                attention_forward,
                "around",
                params=("self", "positions", "hidden_states", "forward_batch"),
            ),
        ),
        delete_when="Gemma4Attention projects only Q on KV-shared layers and fuses its q/k/v norms with RoPE",
        check=_check_sglang_symbols,
    ),
]
