"""Per-head q/k/v RMSNorm and NeoX RoPE of Gemma-4 attention, in one launch.

SGLang 0.5.23's ``Gemma4Attention.forward`` (CUDA) runs, after the qkv GEMM::

    gemma_qkv_rmsnorm(q, k, v)      # in place: q, k per head with weights, v without
    rotary_emb(positions, q, k)     # apply_rope_with_cos_sin_cache_inplace, NeoX style

and on a KV-shared layer it normalizes ``q`` only, then ropes ``q`` next to a
freshly zeroed dummy ``k`` (one more launch) whose result it drops.

Here one launch does the same, per (token, head)::

    q_h = round(rope(round(rmsnorm(q_h, w_q)), pos))
    k_h = round(rope(round(rmsnorm(k_h, w_k)), pos))
    v_h = round(rmsnorm(v_h))                        # v_norm: no weight (with_scale=False)

``rmsnorm(x, w) = x * rsqrt(sum(x**2) / head_dim + eps) * w`` in fp32; ``round``
is to the activation dtype, where SGLang stores (the norm kernel writes the
qkv buffer, the RoPE kernel reads it back). RoPE is NeoX style over the whole
head, with ``cos_sin_cache[pos] = [cos(pos * f_0..f_{d/2-1}), sin(...)]``::

    rope(x)[:d/2] = x[:d/2] * cos - x[d/2:] * sin
    rope(x)[d/2:] = x[d/2:] * cos + x[:d/2] * sin

Gemma-4's partial RoPE on full-attention layers (``Gemma4RotaryEmbedding``,
``rope_type="proportional"``) keeps ``rotary_dim == head_dim`` and zeroes the
frequencies past the rotated part: cos = 1, sin = 0 there, which this formula
applies exactly (``x * 1 - y * 0 == x`` in fp32).

``k`` and ``v`` of ``None`` (a KV-shared layer) normalize and rope ``q`` only.
All three are updated in place and may be strided row views of one qkv buffer.

Imports torch and triton only.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sglang_gemma4.kernels.dependent_launch import launch_kwargs, wait_for_previous_grid
from sglang_gemma4.kernels.rounding import round_to
from sglang_gemma4.kernels.support import (
    FUSED_DTYPES,
    is_rowmajor_2d,
    triton_can_run_on,
    triton_interpreting,
)


@triton.jit
def _qkv_norm_rope_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    w_q_ptr,
    w_k_ptr,
    pos_ptr,
    cache_ptr,
    q_stride,
    k_stride,
    v_stride,
    cache_stride,
    eps,
    NUM_Q_HEADS: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HALF: tl.constexpr,
    BF16_RNE_BY_BITS: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    wait_for_previous_grid(USE_PDL)
    token = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    i = tl.arange(0, HALF)
    act = q_ptr.dtype.element_ty

    is_q = head < NUM_Q_HEADS
    is_k = (head >= NUM_Q_HEADS) & (head < NUM_Q_HEADS + NUM_KV_HEADS)
    if is_q:
        base = q_ptr + token * q_stride + head * HEAD_DIM
        w_ptr = w_q_ptr
    elif is_k:
        base = k_ptr + token * k_stride + (head - NUM_Q_HEADS) * HEAD_DIM
        w_ptr = w_k_ptr
    else:
        base = v_ptr + token * v_stride + (head - NUM_Q_HEADS - NUM_KV_HEADS) * HEAD_DIM
        w_ptr = w_q_ptr  # unused: v has no weight

    x1 = tl.load(base + i).to(tl.float32)
    x2 = tl.load(base + HALF + i).to(tl.float32)
    inv = tl.rsqrt((tl.sum(x1 * x1, axis=0) + tl.sum(x2 * x2, axis=0)) / HEAD_DIM + eps)
    if is_q | is_k:
        w1 = tl.load(w_ptr + i).to(tl.float32)
        w2 = tl.load(w_ptr + HALF + i).to(tl.float32)
        # SGLang stores the normalized head before RoPE reads it back.
        n1 = round_to(x1 * inv * w1, act, BF16_RNE_BY_BITS)
        n2 = round_to(x2 * inv * w2, act, BF16_RNE_BY_BITS)
        pos = tl.load(pos_ptr + token).to(tl.int64)
        cos = tl.load(cache_ptr + pos * cache_stride + i).to(tl.float32)
        sin = tl.load(cache_ptr + pos * cache_stride + HALF + i).to(tl.float32)
        y1 = n1 * cos - n2 * sin
        y2 = n2 * cos + n1 * sin
    else:
        y1 = x1 * inv
        y2 = x2 * inv
    tl.store(base + i, round_to(y1, act, BF16_RNE_BY_BITS).to(act))
    tl.store(base + HALF + i, round_to(y2, act, BF16_RNE_BY_BITS).to(act))


def _problem(
    q: torch.Tensor,
    k: torch.Tensor | None,
    v: torch.Tensor | None,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    w_q: torch.Tensor,
    w_k: torch.Tensor | None,
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
) -> str | None:
    if head_dim < 2 or head_dim & (head_dim - 1):
        return f"head_dim {head_dim} is not a power of two"
    if not is_rowmajor_2d(q) or q.shape[1] != num_q_heads * head_dim:
        return f"q must be [tokens, {num_q_heads * head_dim}] with unit last stride, got {tuple(q.shape)} {q.stride()}"
    if q.dtype not in FUSED_DTYPES or not triton_can_run_on(q):
        return f"q is {q.dtype} on {q.device}"
    if (k is None) != (v is None) or (k is None) != (w_k is None):
        return "k, v and w_k must be all given or all None"
    for name, t in (("k", k), ("v", v)):
        if t is None:
            continue
        if not is_rowmajor_2d(t) or t.shape != (q.shape[0], num_kv_heads * head_dim):
            return f"{name} must be [{q.shape[0]}, {num_kv_heads * head_dim}] with unit last stride, got {tuple(t.shape)}"
        if t.dtype != q.dtype or t.device != q.device:
            return f"{name} is {t.dtype} on {t.device}, q {q.dtype} on {q.device}"
    for name, w in (("w_q", w_q), ("w_k", w_k)):
        if w is not None and (w.shape != (head_dim,) or w.stride(0) != 1 or w.device != q.device):
            return f"{name} must be contiguous [{head_dim}] on {q.device}, got {tuple(w.shape)} on {w.device}"
        if w is not None and w.dtype not in FUSED_DTYPES:
            return f"{name} dtype {w.dtype}"
    if w_k is not None and w_k.dtype != w_q.dtype:
        return f"w_k dtype {w_k.dtype} differs from w_q's {w_q.dtype}"
    if positions.dim() != 1 or positions.shape[0] != q.shape[0] or positions.device != q.device:
        return f"positions must be [{q.shape[0]}] on {q.device}, got {tuple(positions.shape)} on {positions.device}"
    if positions.dtype not in (torch.int32, torch.int64):
        return f"positions dtype {positions.dtype}"
    if (
        cos_sin_cache.dim() != 2
        or cos_sin_cache.shape[1] != head_dim
        or cos_sin_cache.stride(1) != 1
        or cos_sin_cache.device != q.device
        or cos_sin_cache.dtype not in FUSED_DTYPES
    ):
        return f"cos_sin_cache must be [positions, {head_dim}] on {q.device}, got {tuple(cos_sin_cache.shape)}"
    return None


def supports(
    q: torch.Tensor,
    k: torch.Tensor | None,
    v: torch.Tensor | None,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    w_q: torch.Tensor,
    w_k: torch.Tensor | None,
    *,
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
) -> bool:
    """Whether :func:`qkv_norm_rope` runs on these inputs.

    ``q``: ``[T, num_q_heads * head_dim]``, ``k``/``v``: ``[T, num_kv_heads * head_dim]``
    (or both None), unit last stride, one dtype of ``FUSED_DTYPES``, on a device
    Triton runs on; ``head_dim`` a power of two; weights ``[head_dim]``;
    ``positions`` ``[T]`` integers; ``cos_sin_cache`` ``[max_pos, head_dim]``
    (cos half, sin half). Positions are not range-checked (SGLang's RoPE kernel
    does not either).
    """
    return _problem(q, k, v, positions, cos_sin_cache, w_q, w_k, num_q_heads, num_kv_heads, head_dim) is None


def qkv_norm_rope(
    q: torch.Tensor,
    k: torch.Tensor | None,
    v: torch.Tensor | None,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    w_q: torch.Tensor,
    w_k: torch.Tensor | None,
    eps: float,
    *,
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
) -> None:
    """Normalize q, k, v per head and rope q, k, in place, in one launch (module docstring).

    ``k``, ``v`` and ``w_k`` None: q only (a KV-shared layer). ``eps`` serves all
    three norms. Unsupported inputs (see :func:`supports`) raise ``ValueError``.
    """
    problem = _problem(q, k, v, positions, cos_sin_cache, w_q, w_k, num_q_heads, num_kv_heads, head_dim)
    if problem is not None:
        raise ValueError(f"qkv_norm_rope: unsupported inputs: {problem}")
    tokens = q.shape[0]
    if tokens == 0:
        return
    kv_heads = 0 if k is None else num_kv_heads
    _qkv_norm_rope_kernel[(tokens, num_q_heads + 2 * kv_heads)](
        q,
        q if k is None else k,
        q if v is None else v,
        w_q,
        w_q if w_k is None else w_k,
        positions,
        cos_sin_cache,
        q.stride(0),
        q.stride(0) if k is None else k.stride(0),
        q.stride(0) if v is None else v.stride(0),
        cos_sin_cache.stride(0),
        eps,
        NUM_Q_HEADS=num_q_heads,
        NUM_KV_HEADS=kv_heads,
        HEAD_DIM=head_dim,
        HALF=head_dim // 2,
        BF16_RNE_BY_BITS=triton_interpreting() and q.dtype == torch.bfloat16,
        num_warps=max(1, min(4, head_dim // 256)),
        **launch_kwargs(q, "qkv_norm_rope", tokens, q.shape[1]),
    )


# --------------------------------------------------------------------------- reference


def _head_rmsnorm(x: torch.Tensor, w: torch.Tensor | None, heads: int, head_dim: int, eps: float) -> torch.Tensor:
    xf = x.float().reshape(x.shape[0], heads, head_dim)
    y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    return y if w is None else y * w.float()


def _rope(x: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor, head_dim: int) -> torch.Tensor:
    half = head_dim // 2
    cs = cos_sin_cache.float().index_select(0, positions.long())[:, None, :]
    cos, sin = cs[..., :half], cs[..., half:]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def qkv_norm_rope_reference(
    q: torch.Tensor,
    k: torch.Tensor | None,
    v: torch.Tensor | None,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    w_q: torch.Tensor,
    w_k: torch.Tensor | None,
    eps: float,
    *,
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """New ``(q, k, v)`` (2-D, inputs untouched) as SGLang's norm and RoPE launches
    compute them: fp32 arithmetic, rounded after the norm and after RoPE."""
    dtype = q.dtype

    def norm_rope(x: torch.Tensor, w: torch.Tensor, heads: int) -> torch.Tensor:
        normed = _head_rmsnorm(x, w, heads, head_dim, eps).to(dtype).float()
        return _rope(normed, positions, cos_sin_cache, head_dim).to(dtype).reshape(x.shape)

    q_out = norm_rope(q, w_q, num_q_heads)
    if k is None:
        return q_out, None, None
    k_out = norm_rope(k, w_k, num_kv_heads)
    v_out = _head_rmsnorm(v, None, num_kv_heads, head_dim, eps).to(dtype).reshape(v.shape)
    return q_out, k_out, v_out
