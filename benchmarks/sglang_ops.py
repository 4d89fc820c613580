"""Stand-ins for the single-op kernels SGLang 0.5.23 launches in a Gemma-4 decode layer.

The benchmark machine has torch + triton but neither sglang, sgl_kernel nor
FlashInfer. Each function here is one launch computing what the SGLang op
computes, moving the same bytes, written from the op's description (our own
code): so a sequence of them has SGLang's launch count and memory traffic.
Where SGLang's op is itself a Triton kernel, the stand-in keeps its launch
shape (one program per row, Triton's default 4 warps), since that shape is
part of its cost.

Ops (one launch each):

* ``rmsnorm``                 -- ``sgl_kernel.rmsnorm`` (FlashInfer): ``round(x * rsqrt(mean(x^2) + eps) * w)``
* ``fused_add_rmsnorm``       -- ``residual = round(x + residual)``, ``x = round(rmsnorm(x + residual))``, in place
* ``rmsnorm_residual_scalar`` -- SGLang's ``gemma_rmsnorm_residual_scalar`` (Triton)
* ``dual_rmsnorm_residual_scalar`` -- SGLang's ``gemma_dual_rmsnorm_residual_scalar`` (Triton)
* ``qkv_rmsnorm``             -- SGLang's ``gemma_qkv_rmsnorm``: per-head norm of q, k (weights) and v (none), in place
* ``rope``                    -- ``apply_rope_with_cos_sin_cache_inplace`` (NeoX style, fp32 cache), in place
* ``kv_store``                -- the KV pool's ``set_kv_buffer``: k and v rows to their cache slots
* ``gelu_tanh_and_mul``       -- ``sgl_kernel.gelu_tanh_and_mul``: ``gelu_tanh(x[:, :I]) * x[:, I:]``
* ``topk_routing``            -- Gemma-4's fused routing: softmax over experts, top-k, renormalize
* ``moe_align``               -- ``moe_align_block_size``, as two launches (count + scatter)
* ``moe_sum_reduce``          -- sum over the top-k expert outputs of each token

Imports torch and triton only.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def _row_warps(block: int, element_size: int) -> int:
    return max(1, min(8, block * element_size // 512))


# --------------------------------------------------------------------------- norms


@triton.jit
def _rmsnorm_kernel(x_ptr, w_ptr, out_ptr, x_stride, out_stride, n_cols, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    inv = tl.rsqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    tl.store(out_ptr + row * out_stride + cols, (x * inv * w).to(out_ptr.dtype.element_ty), mask=mask)


def rmsnorm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    block = triton.next_power_of_2(x.shape[1])
    _rmsnorm_kernel[(x.shape[0],)](
        x, w, out, x.stride(0), out.stride(0), x.shape[1], eps, BLOCK=block, num_warps=_row_warps(block, x.element_size())
    )
    return out


@triton.jit
def _fused_add_rmsnorm_kernel(x_ptr, res_ptr, w_ptr, n_cols, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    s = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    s += tl.load(res_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(res_ptr + row * n_cols + cols, s.to(res_ptr.dtype.element_ty), mask=mask)
    inv = tl.rsqrt(tl.sum(s * s, axis=0) / n_cols + eps)
    tl.store(x_ptr + row * n_cols + cols, (s * inv * w).to(x_ptr.dtype.element_ty), mask=mask)


def fused_add_rmsnorm(x: torch.Tensor, residual: torch.Tensor, w: torch.Tensor, eps: float) -> None:
    block = triton.next_power_of_2(x.shape[1])
    _fused_add_rmsnorm_kernel[(x.shape[0],)](
        x, residual, w, x.shape[1], eps, BLOCK=block, num_warps=_row_warps(block, x.element_size())
    )


@triton.jit
def _norm_residual_scalar_kernel(
    x_ptr, x2_ptr, w1_ptr, w2_ptr, w3_ptr, res_ptr, scalar_ptr, out_ptr, n_cols, eps,
    DUAL: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    w1 = tl.load(w1_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    res = tl.load(res_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    y = x * tl.rsqrt(tl.sum(x * x, axis=0) / n_cols + eps) * w1
    if DUAL:
        x2 = tl.load(x2_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        w2 = tl.load(w2_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        w3 = tl.load(w3_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        y += x2 * tl.rsqrt(tl.sum(x2 * x2, axis=0) / n_cols + eps) * w2
        y = y * tl.rsqrt(tl.sum(y * y, axis=0) / n_cols + eps) * w3
    scalar = tl.load(scalar_ptr).to(tl.float32)
    tl.store(out_ptr + row * n_cols + cols, ((y + res) * scalar).to(out_ptr.dtype.element_ty), mask=mask)


def rmsnorm_residual_scalar(x, w, residual, scalar, eps) -> torch.Tensor:
    out = torch.empty_like(x)
    # SGLang launches its Triton kernel with one program per row and no num_warps (4).
    _norm_residual_scalar_kernel[(x.shape[0],)](
        x, x, w, w, w, residual, scalar, out, x.shape[1], eps, DUAL=False, BLOCK=triton.next_power_of_2(x.shape[1])
    )
    return out


def dual_rmsnorm_residual_scalar(x1, w1, x2, w2, w3, residual, scalar, eps) -> torch.Tensor:
    out = torch.empty_like(x1)
    _norm_residual_scalar_kernel[(x1.shape[0],)](
        x1, x2, w1, w2, w3, residual, scalar, out, x1.shape[1], eps, DUAL=True, BLOCK=triton.next_power_of_2(x1.shape[1])
    )
    return out


# --------------------------------------------------------------------------- attention prologue


@triton.jit
def _head_rmsnorm_kernel(
    q_ptr, k_ptr, v_ptr, wq_ptr, wk_ptr, q_stride, k_stride, v_stride, eps,
    NQ: tl.constexpr, NKV: tl.constexpr, HEAD_DIM: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    cols = tl.arange(0, HEAD_DIM)
    if head < NQ:
        ptr = q_ptr + row * q_stride + head * HEAD_DIM + cols
        w = tl.load(wq_ptr + cols).to(tl.float32)
    elif head < NQ + NKV:
        ptr = k_ptr + row * k_stride + (head - NQ) * HEAD_DIM + cols
        w = tl.load(wk_ptr + cols).to(tl.float32)
    else:
        ptr = v_ptr + row * v_stride + (head - NQ - NKV) * HEAD_DIM + cols
        w = tl.full([HEAD_DIM], 1.0, tl.float32)
    x = tl.load(ptr).to(tl.float32)
    y = x * tl.rsqrt(tl.sum(x * x, axis=0) / HEAD_DIM + eps) * w
    tl.store(ptr, y.to(q_ptr.dtype.element_ty))


def qkv_rmsnorm(q, k, v, wq, wk, num_q_heads, num_kv_heads, head_dim, eps) -> None:
    """In place; ``k``/``v`` None for a KV-shared layer (q only). One program per (token, head)."""
    nkv = 0 if k is None else num_kv_heads
    # Triton 3.6 cannot compile a load through a None pointer even in a branch no
    # program takes, so a Q-only call passes q's buffers for the unused K/V slots.
    k = q if k is None else k
    v = q if v is None else v
    wk = wq if wk is None else wk
    _head_rmsnorm_kernel[(q.shape[0], num_q_heads + 2 * nkv)](
        q, k, v, wq, wk, q.stride(0), k.stride(0), v.stride(0), eps, NQ=num_q_heads, NKV=nkv, HEAD_DIM=head_dim
    )


@triton.jit
def _rope_kernel(
    q_ptr, k_ptr, pos_ptr, cache_ptr, q_stride, k_stride,
    NQ: tl.constexpr, HEAD_DIM: tl.constexpr, HALF: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    i = tl.arange(0, HALF)
    if head < NQ:
        base = q_ptr + row * q_stride + head * HEAD_DIM
    else:
        base = k_ptr + row * k_stride + (head - NQ) * HEAD_DIM
    pos = tl.load(pos_ptr + row).to(tl.int64)
    cos = tl.load(cache_ptr + pos * 2 * HALF + i)
    sin = tl.load(cache_ptr + pos * 2 * HALF + HALF + i)
    x1 = tl.load(base + i).to(tl.float32)
    x2 = tl.load(base + HALF + i).to(tl.float32)
    tl.store(base + i, (x1 * cos - x2 * sin).to(q_ptr.dtype.element_ty))
    tl.store(base + HALF + i, (x2 * cos + x1 * sin).to(q_ptr.dtype.element_ty))


def rope(positions, q, k, cos_sin_cache, num_q_heads, num_kv_heads, head_dim) -> None:
    """NeoX RoPE over the whole head (Gemma-4's partial RoPE is zero frequencies), in place."""
    _rope_kernel[(q.shape[0], num_q_heads + num_kv_heads)](
        q, k, positions, cos_sin_cache, q.stride(0), k.stride(0), NQ=num_q_heads, HEAD_DIM=head_dim, HALF=head_dim // 2
    )


@triton.jit
def _kv_store_kernel(k_ptr, v_ptr, kc_ptr, vc_ptr, loc_ptr, k_stride, v_stride, row_len, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < row_len
    slot = tl.load(loc_ptr + row).to(tl.int64)
    tl.store(kc_ptr + slot * row_len + cols, tl.load(k_ptr + row * k_stride + cols, mask=mask), mask=mask)
    tl.store(vc_ptr + slot * row_len + cols, tl.load(v_ptr + row * v_stride + cols, mask=mask), mask=mask)


def kv_store(k, v, k_cache, v_cache, loc) -> None:
    _kv_store_kernel[(k.shape[0],)](
        k, v, k_cache, v_cache, loc, k.stride(0), v.stride(0), k.shape[1], BLOCK=triton.next_power_of_2(k.shape[1])
    )


# --------------------------------------------------------------------------- MLP / MoE


@triton.jit
def _gelu_tanh_and_mul_kernel(x_ptr, out_ptr, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    g = tl.load(x_ptr + row * 2 * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(x_ptr + row * 2 * n_cols + n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    inner = 0.7978845608028654 * (g + 0.044715 * g * g * g)
    gelu = g / (1.0 + tl.exp(-2.0 * inner))
    tl.store(out_ptr + row * n_cols + cols, (gelu * u).to(out_ptr.dtype.element_ty), mask=mask)


def gelu_tanh_and_mul(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[1] // 2
    out = torch.empty(x.shape[0], n, dtype=x.dtype, device=x.device)
    block = min(1024, triton.next_power_of_2(n))
    _gelu_tanh_and_mul_kernel[(x.shape[0], triton.cdiv(n, block))](x, out, n, BLOCK=block, num_warps=4)
    return out


@triton.jit
def _topk_routing_kernel(logits_ptr, w_ptr, ids_ptr, E: tl.constexpr, K: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    e = tl.arange(0, E)
    x = tl.load(logits_ptr + row * E + e).to(tl.float32)
    p = tl.exp(x - tl.max(x, axis=0))
    p = p / tl.sum(p, axis=0)
    kk = tl.arange(0, K)
    chosen_w = tl.zeros([K], tl.float32)
    chosen_i = tl.zeros([K], tl.int32)
    for j in tl.static_range(K):
        best = tl.max(p, axis=0)
        idx = tl.min(tl.where(p == best, e, E), axis=0)
        chosen_w = tl.where(kk == j, best, chosen_w)
        chosen_i = tl.where(kk == j, idx, chosen_i)
        p = tl.where(e == idx, -1.0, p)
    tl.store(w_ptr + row * K + kk, chosen_w / tl.sum(chosen_w, axis=0))
    tl.store(ids_ptr + row * K + kk, chosen_i)


def topk_routing(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    t, e = logits.shape
    weights = torch.empty(t, k, dtype=torch.float32, device=logits.device)
    ids = torch.empty(t, k, dtype=torch.int32, device=logits.device)
    _topk_routing_kernel[(t,)](logits, weights, ids, E=e, K=k)
    return weights, ids


@triton.jit
def _moe_count_kernel(ids_ptr, cursor_ptr, expert_of_block_ptr, n_ids, n_blocks, E: tl.constexpr, E_PAD: tl.constexpr,
                      BLOCK_M: tl.constexpr, N_PAD: tl.constexpr, CHUNK: tl.constexpr):
    i = tl.arange(0, N_PAD)
    # Padding lanes count into bin E, which owns no slots.
    ids = tl.load(ids_ptr + i, mask=i < n_ids, other=E)
    counts = tl.histogram(ids, E_PAD)
    e = tl.arange(0, E_PAD)
    padded = tl.where(e < E, (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M, 0)
    ends = tl.cumsum(padded, axis=0)
    starts = ends - padded
    tl.store(cursor_ptr + e, starts, mask=e < E)
    # Which expert each block of BLOCK_M sorted slots belongs to.
    for b0 in range(0, n_blocks, CHUNK):
        b = b0 + tl.arange(0, CHUNK)
        owner = tl.sum((b[:, None] * BLOCK_M >= ends[None, :]).to(tl.int32), axis=1)
        tl.store(expert_of_block_ptr + b, owner, mask=b < n_blocks)


@triton.jit
def _moe_scatter_kernel(ids_ptr, cursor_ptr, sorted_ptr, n_ids, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = i < n_ids
    ids = tl.load(ids_ptr + i, mask=ok, other=0)
    slot = tl.atomic_add(cursor_ptr + ids, 1, mask=ok)
    tl.store(sorted_ptr + slot, i, mask=ok)


def moe_align(ids: torch.Tensor, num_experts: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token slots sorted by expert, each expert's run padded to ``block_m`` (two launches)."""
    n = ids.numel()
    max_slots = n + num_experts * (block_m - 1)
    max_blocks = triton.cdiv(max_slots, block_m)
    cursor = torch.empty(num_experts, dtype=torch.int32, device=ids.device)
    expert_of_block = torch.empty(max_blocks, dtype=torch.int32, device=ids.device)
    sorted_ids = torch.empty(max_slots, dtype=torch.int32, device=ids.device)
    _moe_count_kernel[(1,)](
        ids, cursor, expert_of_block, n, max_blocks, E=num_experts, E_PAD=triton.next_power_of_2(num_experts + 1),
        BLOCK_M=block_m, N_PAD=triton.next_power_of_2(n), CHUNK=32,
    )
    _moe_scatter_kernel[(triton.cdiv(n, 256),)](ids, cursor, sorted_ids, n, BLOCK=256)
    return sorted_ids, expert_of_block


@triton.jit
def _moe_sum_kernel(x_ptr, out_ptr, n_cols, K: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    acc = tl.zeros([BLOCK], tl.float32)
    for j in tl.static_range(K):
        acc += tl.load(x_ptr + (row * K + j) * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * n_cols + cols, acc.to(out_ptr.dtype.element_ty), mask=mask)


def moe_sum_reduce(x: torch.Tensor) -> torch.Tensor:
    """``[T, K, H] -> [T, H]``."""
    t, k, h = x.shape
    out = torch.empty(t, h, dtype=x.dtype, device=x.device)
    block = min(1024, triton.next_power_of_2(h))
    _moe_sum_kernel[(t, triton.cdiv(h, block))](x, out, h, K=k, BLOCK=block, num_warps=4)
    return out
