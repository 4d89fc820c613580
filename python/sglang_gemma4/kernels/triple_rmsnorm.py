"""Post-attention triple RMSNorm of Gemma-4's MoE decoder layer, in one launch.

Gemma-4 RMSNorm (no "+1" on the weight, fp32 inside)::

    rmsnorm(x, w) = x * rsqrt(mean(x**2) + eps) * w

After attention, a MoE layer (26B-A4B) needs the updated residual ``r`` and three
normalizations of it: the dense MLP's input, the router's input (the router's
norm has no weight of its own; SGLang folds ``router.scale * hidden**-0.5`` into
it, so ``w_router`` is that folded scale) and the experts' input::

    r         = rmsnorm(attn_out, w_post_attn) + residual
    dense_in  = rmsnorm(r, w_pre_ff)
    router_in = rmsnorm(r, w_router)
    moe_in    = rmsnorm(r, w_pre_ff_2)

Where SGLang 0.5.23 rounds (CUDA, bf16/fp16 activations), read from the code:

1. ``post_attention_layernorm`` is the attention's ``OutputTransform``, an
   ``RMSNorm`` whose ``forward_cuda`` calls ``sgl_kernel.rmsnorm`` -> FlashInfer's
   ``rmsnorm`` (CUDA ``RMSNormKernel`` in ``norm.cuh``, or the CuTe-DSL
   ``RMSNormKernel``, same math): the sum of squares is taken in fp32 of the
   input, and ``float(x) * rstd * float(w)`` is rounded once to the activation
   dtype. So ``a = round(rmsnorm(attn_out, w_post_attn))``.
2. The FFN read runs ``pre_feedforward_layernorm(a, residual)`` ->
   ``fused_add_rmsnorm``. FlashInfer's ``FusedAddRMSNormKernel`` adds in fp32,
   ``s = float(a) + float(residual)``, stores ``residual = round(s)``, and takes
   the sum of squares of the *unrounded* fp32 ``s`` and normalizes the unrounded
   ``s`` (the CUDA kernel keeps it in shared memory, the CuTe kernel in
   registers). So ``r = round(s)`` and ``dense_in = round(rmsnorm(s, w_pre_ff))``.
   SGLang's ``RMSNorm.forward_native`` (CPU) does the same.
3. ``_next_stream`` then calls ``router(r)`` (``Gemma4RMSNorm`` with
   ``with_scale=False``, whose ``forward_cuda`` calls ``rmsnorm`` with the folded
   weight) and ``pre_feedforward_layernorm_2(r)``: both read the *rounded*
   residual ``r`` from memory. So ``router_in`` and ``moe_in`` share one rsqrt,
   of the rounded ``r``, which differs from the dense input's rsqrt of ``s``.

Dense and PLE layers (31B, E2B, E4B) have no router or experts: their
post-attention block is steps 1 and 2 only, ``(r, dense_in)``, which
:func:`post_attn_norm_add` computes with the same kernels (a constexpr flag
drops the router/expert loads, sums and stores).

This kernel rounds at exactly those points: ``a`` to the activation dtype before
the add, the dense input from fp32 ``s``, the router and expert inputs from the
rounded ``r``. With fp32 activations every rounding is the identity and all
three normalizations share one rsqrt. (An earlier upstream router-norm fusion
was reverted for a bf16 routing regression; matching the rounding points is
what keeps the selected experts the same.)

Four kernels, all reading each row once (attn_out, residual) and writing it
four (two) times, the minimum DRAM traffic: whole rows held in registers, each
element loaded once, a row as power-of-two segments that add up to it
(no idle lanes) or padded to a power of two; the same rows in a fixed
(persistent) grid whose programs prefetch their next row; one row per
program walked in chunks over three passes, re-reading from cache, whose
small register footprint keeps many rows in flight per SM; and the same
passes over whole chunks and exact power-of-two tails (no masked lane).
:func:`launch_config` picks the kernel and its shape from a table measured
on the H200 (the 4-output mode takes the chunks or the segmented passes for
prefills; the 2-output mode whole rows, in the persistent grid from 4096 rows
at 2560 and 5376).
Two options of :class:`TripleNormLaunch` change how, not what, they compute:
the chunked passes as rolled loops (as Inductor compiles this reduction: one
chunk's registers live) instead of unrolled, and the sums of squares of ``s``
and ``r`` paired into one cross-thread reduction (two dependent reductions per
row instead of three).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from sglang_gemma4.kernels.dependent_launch import launch_kwargs, wait_for_previous_grid
from sglang_gemma4.kernels.prefetch import prefetch_level, prefetch_lines
from sglang_gemma4.kernels.reductions import paired_sums
from sglang_gemma4.kernels.rounding import round_to
from sglang_gemma4.kernels.row_segments import block_segments, exact_chunks, launch_segments
from sglang_gemma4.kernels.support import (
    MAX_FUSED_ROW,
    multiprocessor_count,
    triton_can_run_on,
    triton_interpreting,
)

TRIPLE_RMSNORM_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _rms_inverse(x: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)


def post_attn_norm_add_reference(
    attn_out: torch.Tensor,
    residual: torch.Tensor,
    w_post_attn: torch.Tensor,
    w_pre_ff: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(r, dense_in)`` as SGLang's rmsnorm + fused_add_rmsnorm compute them.

    fp32 arithmetic, rounded to ``attn_out.dtype`` where SGLang stores a tensor:
    ``a = round(rmsnorm(attn_out, w_post_attn))``, ``s = a + residual`` (fp32),
    ``r = round(s)``, ``dense_in = round(rmsnorm(s, w_pre_ff))``. The first two
    outputs of :func:`triple_rmsnorm_reference`, which is built on this.
    """
    dtype = attn_out.dtype
    x = attn_out.float()
    a = (x * _rms_inverse(x, eps) * w_post_attn.float()).to(dtype)
    s = a.float() + residual.float()
    return s.to(dtype), (s * _rms_inverse(s, eps) * w_pre_ff.float()).to(dtype)


def triple_rmsnorm_reference(
    attn_out: torch.Tensor,
    residual: torch.Tensor,
    w_post_attn: torch.Tensor,
    w_pre_ff: torch.Tensor,
    w_router: torch.Tensor,
    w_pre_ff_2: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(r, dense_in, router_in, moe_in)`` as SGLang's four launches compute them.

    fp32 arithmetic, rounded to ``attn_out.dtype`` where SGLang stores a tensor
    (see the module docstring): ``a = round(rmsnorm(attn_out, w_post_attn))``,
    ``s = a + residual`` (fp32), ``r = round(s)``,
    ``dense_in = round(rmsnorm(s, w_pre_ff))``, and with ``rr = rsqrt(mean(r**2) + eps)``
    ``router_in = round(r * rr * w_router)``, ``moe_in = round(r * rr * w_pre_ff_2)``.
    """
    dtype = attn_out.dtype
    r, dense_in = post_attn_norm_add_reference(attn_out, residual, w_post_attn, w_pre_ff, eps)
    r32 = r.float()
    r_normed = r32 * _rms_inverse(r32, eps)
    router_in = (r_normed * w_router.float()).to(dtype)
    moe_in = (r_normed * w_pre_ff_2.float()).to(dtype)
    return r, dense_in, router_in, moe_in


@triton.jit
def _load_weight(ptr, cols, col_ok):
    # Every row reads the weights: keep them in L2.
    return tl.load(ptr + cols, mask=col_ok, other=0.0, eviction_policy="evict_last").to(tl.float32)


@triton.jit
def _residual_sum(x, res, inv_x, w_post, act: tl.constexpr, BF16_RNE_BY_BITS: tl.constexpr):
    """``(s, r)``: the fp32 sum ``round(x * inv_x * w_post) + res`` and ``r = round(s)``.
    The post-attention norm's output is rounded before the add, as SGLang stores it."""
    a = round_to((x * inv_x) * w_post, act, BF16_RNE_BY_BITS)
    s = a + res
    return s, round_to(s, act, BF16_RNE_BY_BITS).to(act)


@triton.jit
def _sums_of_s_and_r(lane_s, lane_r, axis: tl.constexpr, PAIRED_SUMS: tl.constexpr):
    """The row sums of ``lane_s`` and ``lane_r`` along ``axis``. ``PAIRED_SUMS``:
    both in one cross-thread reduction (:func:`paired_sums`)."""
    if PAIRED_SUMS:
        sum_s, sum_r = paired_sums(lane_s, lane_r, axis)
    else:
        sum_s = tl.sum(lane_s, axis=axis)
        sum_r = tl.sum(lane_r, axis=axis)
    return sum_s, sum_r


@triton.jit
def _segment_cols(start, SEG: tl.constexpr, LANES: tl.constexpr):
    """Columns ``[start, start + SEG)`` as a ``[1, LANES, SEG // LANES]`` tile
    (lane ``j`` holds ``SEG // LANES`` adjacent columns). The weights are loaded
    in the activations' 3-D shape, so that both get the same register layout (no
    conversion through shared memory)."""
    VEC: tl.constexpr = SEG // LANES
    return start + tl.arange(0, LANES)[None, :, None] * VEC + tl.arange(0, VEC)[None, None, :]


@triton.jit
def _segment_weights(
    w_post_ptr, w_pre_ff_ptr, w_router_ptr, w_pre_ff_2_ptr, start, hidden,
    SEG: tl.constexpr, LANES: tl.constexpr, MOE_OUTPUTS: tl.constexpr,
):
    """The weights of columns ``[start, start + SEG)`` in fp32 (the router/expert
    ones only with ``MOE_OUTPUTS``; else the dense one stands in for them)."""
    cols = _segment_cols(start, SEG, LANES)
    col_ok = cols < hidden
    w_post = _load_weight(w_post_ptr, cols, col_ok)
    w_pre_ff = _load_weight(w_pre_ff_ptr, cols, col_ok)
    if MOE_OUTPUTS:
        w_router = _load_weight(w_router_ptr, cols, col_ok)
        w_pre_ff_2 = _load_weight(w_pre_ff_2_ptr, cols, col_ok)
    else:
        w_router = w_pre_ff
        w_pre_ff_2 = w_pre_ff
    return w_post, w_pre_ff, w_router, w_pre_ff_2


@triton.jit
def _segment_offsets(rows, n_rows, start, hidden, SEG: tl.constexpr, LANES: tl.constexpr):
    """Element offsets and mask of columns ``[start, start + SEG)`` of ``rows``
    as ``[ROWS, LANES, SEG // LANES]`` tiles."""
    cols = _segment_cols(start, SEG, LANES)
    # int64: rows * hidden passes 2**31 for prefills of ~760k tokens at hidden 2816.
    return rows.to(tl.int64)[:, None, None] * hidden + cols, (rows < n_rows)[:, None, None] & (cols < hidden)


@triton.jit
def _segment_activations(
    attn_ptr, res_ptr, rows, n_rows, start, hidden,
    SEG: tl.constexpr, LANES: tl.constexpr, ACT_EVICT: tl.constexpr, AS_FP32: tl.constexpr,
):
    """Offsets, mask, ``attn_out`` and ``residual`` of columns ``[start, start +
    SEG)`` of ``rows`` as ``[ROWS, LANES, SEG // LANES]`` tiles, in fp32
    (``AS_FP32``) or the activation dtype (a prefetch, converted where it is
    used so that its issue does not wait for its data)."""
    offs, mask = _segment_offsets(rows, n_rows, start, hidden, SEG, LANES)
    x = tl.load(attn_ptr + offs, mask=mask, other=0.0, eviction_policy=ACT_EVICT)
    # Converted before the residual's load: ptxas then issues that load once x
    # has arrived, overlapping the first reduction, which measured faster at
    # decode sizes than all loads at once (see ple_tail's launch notes).
    if AS_FP32:
        x = x.to(tl.float32)
    res = tl.load(res_ptr + offs, mask=mask, other=0.0, eviction_policy=ACT_EVICT)
    if AS_FP32:
        res = res.to(tl.float32)
    return offs, mask, x, res


@triton.jit
def _segment_residual(x, res, inv_x, w_post, r_ptr, offs, mask, BF16_RNE_BY_BITS: tl.constexpr):
    """Store ``r`` of a segment; return ``s`` and ``r`` (fp32) and each lane's sums of squares."""
    act = r_ptr.dtype.element_ty
    s, r = _residual_sum(x, res, inv_x, w_post, act, BF16_RNE_BY_BITS)
    tl.store(r_ptr + offs, r, mask=mask)
    r32 = r.to(tl.float32)
    return s, r32, tl.sum(s * s, axis=2), tl.sum(r32 * r32, axis=2)


@triton.jit
def _segment_outputs(
    s,
    r32,
    inv_s,
    inv_r,
    w_pre_ff,
    w_router,
    w_pre_ff_2,
    dense_ptr,
    router_ptr,
    moe_ptr,
    offs,
    mask,
    MOE_OUTPUTS: tl.constexpr,
    BF16_RNE_BY_BITS: tl.constexpr,
):
    """Store the normalized outputs of a segment."""
    act = dense_ptr.dtype.element_ty
    tl.store(dense_ptr + offs, round_to((s * inv_s) * w_pre_ff, act, BF16_RNE_BY_BITS).to(act), mask=mask)
    if MOE_OUTPUTS:
        r_normed = r32 * inv_r
        tl.store(router_ptr + offs, round_to(r_normed * w_router, act, BF16_RNE_BY_BITS).to(act), mask=mask)
        tl.store(moe_ptr + offs, round_to(r_normed * w_pre_ff_2, act, BF16_RNE_BY_BITS).to(act), mask=mask)


@triton.jit
def _norm_segments_and_store(
    x0, res0, wp0, wf0, wr0, wm0, offs0, mask0,
    x1, res1, wp1, wf1, wr1, wm1, offs1, mask1,
    x2, res2, wp2, wf2, wr2, wm2, offs2, mask2,
    r_ptr, dense_ptr, router_ptr, moe_ptr, hidden, eps,
    SEG1: tl.constexpr, SEG2: tl.constexpr, MOE_OUTPUTS: tl.constexpr,
    BF16_RNE_BY_BITS: tl.constexpr, PAIRED_SUMS: tl.constexpr,
):
    """The outputs of rows held as up to three segments (see
    :func:`_triple_norm_row_kernel`; the arguments of an absent segment are
    not read): three dependent row reductions (two with ``PAIRED_SUMS``)
    and the stores. ``x``/``res`` in fp32 or the activation dtype."""
    x0 = x0.to(tl.float32)
    res0 = res0.to(tl.float32)
    x1 = x1.to(tl.float32)
    res1 = res1.to(tl.float32)
    x2 = x2.to(tl.float32)
    res2 = res2.to(tl.float32)
    lane_x = tl.sum(x0 * x0, axis=2)
    if SEG1 > 0:
        lane_x += tl.sum(x1 * x1, axis=2)
    if SEG2 > 0:
        lane_x += tl.sum(x2 * x2, axis=2)
    inv_x = tl.rsqrt(tl.sum(lane_x, axis=1) / hidden + eps)[:, None, None]

    s0, r0, lane_s, lane_r = _segment_residual(x0, res0, inv_x, wp0, r_ptr, offs0, mask0, BF16_RNE_BY_BITS)
    if SEG1 > 0:
        s1, r1, lane_s1, lane_r1 = _segment_residual(x1, res1, inv_x, wp1, r_ptr, offs1, mask1, BF16_RNE_BY_BITS)
        lane_s += lane_s1
        lane_r += lane_r1
    if SEG2 > 0:
        s2, r2, lane_s2, lane_r2 = _segment_residual(x2, res2, inv_x, wp2, r_ptr, offs2, mask2, BF16_RNE_BY_BITS)
        lane_s += lane_s2
        lane_r += lane_r2
    # fused_add_rmsnorm normalizes the unrounded fp32 sum; the router's norm and
    # pre_feedforward_layernorm_2 read the stored residual. (Without MOE_OUTPUTS
    # the compiler drops the sum of r, which nothing reads.)
    sum_s, sum_r = _sums_of_s_and_r(lane_s, lane_r, 1, PAIRED_SUMS)
    inv_s = tl.rsqrt(sum_s / hidden + eps)[:, None, None]
    inv_r = tl.rsqrt(sum_r / hidden + eps)[:, None, None]

    _segment_outputs(
        s0, r0, inv_s, inv_r, wf0, wr0, wm0, dense_ptr, router_ptr, moe_ptr, offs0, mask0,
        MOE_OUTPUTS, BF16_RNE_BY_BITS,
    )
    if SEG1 > 0:
        _segment_outputs(
            s1, r1, inv_s, inv_r, wf1, wr1, wm1, dense_ptr, router_ptr, moe_ptr, offs1, mask1,
            MOE_OUTPUTS, BF16_RNE_BY_BITS,
        )
    if SEG2 > 0:
        _segment_outputs(
            s2, r2, inv_s, inv_r, wf2, wr2, wm2, dense_ptr, router_ptr, moe_ptr, offs2, mask2,
            MOE_OUTPUTS, BF16_RNE_BY_BITS,
        )



@triton.jit(do_not_specialize=["n_rows"])
def _triple_norm_row_kernel(
    attn_ptr,
    res_ptr,
    w_post_ptr,
    w_pre_ff_ptr,
    w_router_ptr,
    w_pre_ff_2_ptr,
    r_ptr,
    dense_ptr,
    router_ptr,
    moe_ptr,
    n_rows,
    hidden,
    eps,
    ROWS: tl.constexpr,
    SEG0: tl.constexpr,
    SEG1: tl.constexpr,
    SEG2: tl.constexpr,
    LANES: tl.constexpr,
    MOE_OUTPUTS: tl.constexpr,
    ACT_EVICT: tl.constexpr,
    BF16_RNE_BY_BITS: tl.constexpr,
    PAIRED_SUMS: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    """``ROWS`` whole rows per program, held in registers: each element is loaded
    once (the latency-bound decode sizes). ptxas issues the residual's and the
    weights' loads once ``x`` has arrived, so they overlap the first reduction;
    issuing them all at once measured slower (see ple_tail's launch notes).

    A row is held as up to three power-of-two segments of ``SEG0``, ``SEG1``,
    ``SEG2`` columns (0: none), so that a row like 2816 = 2048 + 512 + 256 has
    no idle lanes; ``SEG0`` alone may also exceed the row (masked lanes). Each
    segment is split over the same ``LANES`` lanes (which divides every
    segment), so that the segments' sums of squares add lane by lane, in
    registers, and each row sum costs one cross-thread reduction.
    Without ``MOE_OUTPUTS`` only ``r`` and ``dense_in`` (the router/expert
    pointers are not touched). ``ACT_EVICT``: the activations' eviction hint.
    ``PAIRED_SUMS``: the sums of squares of ``s`` and ``r`` in one cross-thread
    reduction (two dependent reductions per row instead of three)."""
    wait_for_previous_grid(USE_PDL)
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    offs0, mask0, x0, res0 = _segment_activations(attn_ptr, res_ptr, rows, n_rows, 0, hidden, SEG0, LANES, ACT_EVICT, True)
    wp0, wf0, wr0, wm0 = _segment_weights(
        w_post_ptr, w_pre_ff_ptr, w_router_ptr, w_pre_ff_2_ptr, 0, hidden, SEG0, LANES, MOE_OUTPUTS
    )
    if SEG1 > 0:
        offs1, mask1, x1, res1 = _segment_activations(
            attn_ptr, res_ptr, rows, n_rows, SEG0, hidden, SEG1, LANES, ACT_EVICT, True
        )
        wp1, wf1, wr1, wm1 = _segment_weights(
            w_post_ptr, w_pre_ff_ptr, w_router_ptr, w_pre_ff_2_ptr, SEG0, hidden, SEG1, LANES, MOE_OUTPUTS
        )
    else:
        offs1, mask1, x1, res1, wp1, wf1, wr1, wm1 = offs0, mask0, x0, res0, wp0, wf0, wr0, wm0
    if SEG2 > 0:
        offs2, mask2, x2, res2 = _segment_activations(
            attn_ptr, res_ptr, rows, n_rows, SEG0 + SEG1, hidden, SEG2, LANES, ACT_EVICT, True
        )
        wp2, wf2, wr2, wm2 = _segment_weights(
            w_post_ptr, w_pre_ff_ptr, w_router_ptr, w_pre_ff_2_ptr, SEG0 + SEG1, hidden, SEG2, LANES, MOE_OUTPUTS
        )
    else:
        offs2, mask2, x2, res2, wp2, wf2, wr2, wm2 = offs0, mask0, x0, res0, wp0, wf0, wr0, wm0
    _norm_segments_and_store(
        x0, res0, wp0, wf0, wr0, wm0, offs0, mask0,
        x1, res1, wp1, wf1, wr1, wm1, offs1, mask1,
        x2, res2, wp2, wf2, wr2, wm2, offs2, mask2,
        r_ptr, dense_ptr, router_ptr, moe_ptr, hidden, eps,
        SEG1, SEG2, MOE_OUTPUTS, BF16_RNE_BY_BITS, PAIRED_SUMS,
    )


@triton.jit
def _prefetch_segments(
    attn_ptr, res_ptr, rows, n_rows, hidden,
    SEG0: tl.constexpr, SEG1: tl.constexpr, SEG2: tl.constexpr, LANES: tl.constexpr, ACT_EVICT: tl.constexpr,
):
    """Issue the loads of ``rows``'s segments, in the activation dtype (an
    absent segment repeats the first)."""
    _, _, x0, res0 = _segment_activations(attn_ptr, res_ptr, rows, n_rows, 0, hidden, SEG0, LANES, ACT_EVICT, False)
    x1, res1, x2, res2 = x0, res0, x0, res0
    if SEG1 > 0:
        _, _, x1, res1 = _segment_activations(
            attn_ptr, res_ptr, rows, n_rows, SEG0, hidden, SEG1, LANES, ACT_EVICT, False
        )
    if SEG2 > 0:
        _, _, x2, res2 = _segment_activations(
            attn_ptr, res_ptr, rows, n_rows, SEG0 + SEG1, hidden, SEG2, LANES, ACT_EVICT, False
        )
    return x0, res0, x1, res1, x2, res2


@triton.jit(do_not_specialize=["n_rows"])
def _triple_norm_persistent_kernel(
    attn_ptr,
    res_ptr,
    w_post_ptr,
    w_pre_ff_ptr,
    w_router_ptr,
    w_pre_ff_2_ptr,
    r_ptr,
    dense_ptr,
    router_ptr,
    moe_ptr,
    n_rows,
    hidden,
    eps,
    SEG0: tl.constexpr,
    SEG1: tl.constexpr,
    SEG2: tl.constexpr,
    LANES: tl.constexpr,
    MOE_OUTPUTS: tl.constexpr,
    ACT_EVICT: tl.constexpr,
    BF16_RNE_BY_BITS: tl.constexpr,
    PAIRED_SUMS: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    """The row kernel's computation (one row at a time, held as segments as
    there), in a fixed grid: program ``p`` takes rows ``p, p + P, p + 2P, ...``
    and issues the loads of its next row before the reductions of this one,
    so that every program keeps a row's DRAM reads in flight while it
    reduces and stores (a program of the row kernel has none in flight
    then). Per row the operations of :func:`_triple_norm_row_kernel` in the
    same order (ptxas may still contract another multiply-add into an FMA:
    within one final rounding of it). A row is read before its program writes
    any row, and only its own program writes it, so ``r`` may overwrite the
    residual."""
    wait_for_previous_grid(USE_PDL)
    first = tl.program_id(0)
    step = tl.num_programs(0)
    x0, res0, x1, res1, x2, res2 = _prefetch_segments(
        attn_ptr, res_ptr, first + tl.arange(0, 1), n_rows, hidden, SEG0, SEG1, SEG2, LANES, ACT_EVICT
    )
    # One stage: the prefetch is written out here (Triton's pipeliner would
    # stage the loads through shared memory instead).
    for row in tl.range(first, n_rows, step, num_stages=1):
        next_x0, next_res0, next_x1, next_res1, next_x2, next_res2 = _prefetch_segments(
            attn_ptr, res_ptr, row + step + tl.arange(0, 1), n_rows, hidden, SEG0, SEG1, SEG2, LANES, ACT_EVICT
        )
        rows = row + tl.arange(0, 1)
        # Offsets and weights (from L1) per row: carrying them would take the
        # registers that let more programs share an SM.
        offs0, mask0 = _segment_offsets(rows, n_rows, 0, hidden, SEG0, LANES)
        wp0, wf0, wr0, wm0 = _segment_weights(
            w_post_ptr, w_pre_ff_ptr, w_router_ptr, w_pre_ff_2_ptr, 0, hidden, SEG0, LANES, MOE_OUTPUTS
        )
        offs1, mask1, wp1, wf1, wr1, wm1 = offs0, mask0, wp0, wf0, wr0, wm0
        offs2, mask2, wp2, wf2, wr2, wm2 = offs0, mask0, wp0, wf0, wr0, wm0
        if SEG1 > 0:
            offs1, mask1 = _segment_offsets(rows, n_rows, SEG0, hidden, SEG1, LANES)
            wp1, wf1, wr1, wm1 = _segment_weights(
                w_post_ptr, w_pre_ff_ptr, w_router_ptr, w_pre_ff_2_ptr, SEG0, hidden, SEG1, LANES, MOE_OUTPUTS
            )
        if SEG2 > 0:
            offs2, mask2 = _segment_offsets(rows, n_rows, SEG0 + SEG1, hidden, SEG2, LANES)
            wp2, wf2, wr2, wm2 = _segment_weights(
                w_post_ptr, w_pre_ff_ptr, w_router_ptr, w_pre_ff_2_ptr, SEG0 + SEG1, hidden, SEG2, LANES, MOE_OUTPUTS
            )
        _norm_segments_and_store(
            x0, res0, wp0, wf0, wr0, wm0, offs0, mask0,
            x1, res1, wp1, wf1, wr1, wm1, offs1, mask1,
            x2, res2, wp2, wf2, wr2, wm2, offs2, mask2,
            r_ptr, dense_ptr, router_ptr, moe_ptr, hidden, eps,
            SEG1, SEG2, MOE_OUTPUTS, BF16_RNE_BY_BITS, PAIRED_SUMS,
        )
        x0, res0, x1, res1, x2, res2 = next_x0, next_res0, next_x1, next_res1, next_x2, next_res2


@triton.jit
def _chunk_x_squares(attn_ptr, base, cols, hidden):
    x = tl.load(attn_ptr + base + cols, mask=cols < hidden, other=0.0).to(tl.float32)
    return x * x


@triton.jit
def _chunk_residual(
    attn_ptr, res_ptr, w_post_ptr, base, cols, col_ok, inv_x, EVICT: tl.constexpr, BF16_RNE_BY_BITS: tl.constexpr
):
    """``(s, r)`` of a chunk (see :func:`_residual_sum`); the activations' loads with hint ``EVICT``."""
    act = res_ptr.dtype.element_ty
    x = tl.load(attn_ptr + base + cols, mask=col_ok, other=0.0, eviction_policy=EVICT).to(tl.float32)
    res = tl.load(res_ptr + base + cols, mask=col_ok, other=0.0, eviction_policy=EVICT).to(tl.float32)
    return _residual_sum(x, res, inv_x, _load_weight(w_post_ptr, cols, col_ok), act, BF16_RNE_BY_BITS)


@triton.jit
def _chunk_s_and_r_squares(
    attn_ptr, res_ptr, w_post_ptr, base, cols, hidden, inv_x,
    MOE_OUTPUTS: tl.constexpr, BF16_RNE_BY_BITS: tl.constexpr,
):
    """``(s * s, r * r)`` of a chunk (``r * r`` is zero without ``MOE_OUTPUTS``)."""
    s, r = _chunk_residual(attn_ptr, res_ptr, w_post_ptr, base, cols, cols < hidden, inv_x, "", BF16_RNE_BY_BITS)
    r32 = r.to(tl.float32)
    if MOE_OUTPUTS:
        r_squares = r32 * r32
    else:
        r_squares = tl.zeros_like(r32)
    return s * s, r_squares


@triton.jit
def _chunk_outputs(
    attn_ptr, res_ptr, w_post_ptr, w_pre_ff_ptr, w_router_ptr, w_pre_ff_2_ptr,
    r_ptr, dense_ptr, router_ptr, moe_ptr, base, cols, hidden, inv_x, inv_s, inv_r,
    MOE_OUTPUTS: tl.constexpr, ACT_EVICT: tl.constexpr, BF16_RNE_BY_BITS: tl.constexpr,
):
    """Recompute ``s`` and ``r`` of a chunk and store its outputs."""
    act = r_ptr.dtype.element_ty
    col_ok = cols < hidden
    s, r = _chunk_residual(attn_ptr, res_ptr, w_post_ptr, base, cols, col_ok, inv_x, ACT_EVICT, BF16_RNE_BY_BITS)
    tl.store(r_ptr + base + cols, r, mask=col_ok)
    dense = (s * inv_s) * _load_weight(w_pre_ff_ptr, cols, col_ok)
    tl.store(dense_ptr + base + cols, round_to(dense, act, BF16_RNE_BY_BITS).to(act), mask=col_ok)
    if MOE_OUTPUTS:
        r_normed = r.to(tl.float32) * inv_r
        router = r_normed * _load_weight(w_router_ptr, cols, col_ok)
        tl.store(router_ptr + base + cols, round_to(router, act, BF16_RNE_BY_BITS).to(act), mask=col_ok)
        moe = r_normed * _load_weight(w_pre_ff_2_ptr, cols, col_ok)
        tl.store(moe_ptr + base + cols, round_to(moe, act, BF16_RNE_BY_BITS).to(act), mask=col_ok)


@triton.jit(do_not_specialize=["n_rows"])
def _triple_norm_chunked_kernel(
    attn_ptr,
    res_ptr,
    w_post_ptr,
    w_pre_ff_ptr,
    w_router_ptr,
    w_pre_ff_2_ptr,
    r_ptr,
    dense_ptr,
    router_ptr,
    moe_ptr,
    n_rows,
    hidden,
    eps,
    CHUNK: tl.constexpr,
    NUM_CHUNKS: tl.constexpr,
    ROLLED: tl.constexpr,
    MOE_OUTPUTS: tl.constexpr,
    ACT_EVICT: tl.constexpr,
    BF16_RNE_BY_BITS: tl.constexpr,
    PAIRED_SUMS: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    """One row per program, ``CHUNK`` columns at a time, in three passes: the
    sum of squares of attn_out; the sums of squares of ``s`` and ``r``; all four
    outputs. Few registers per program, so many rows are in flight per SM (the
    bandwidth-bound sizes). Passes 2 and 3 re-read the row from L1/L2, so DRAM
    still sees each element once; pass 3 recomputes ``s`` and ``r`` with the same
    operations on the same inputs (bit-identical), and is the only pass that
    stores, so ``r`` may overwrite the residual it is computed from. Without
    ``MOE_OUTPUTS`` only ``r`` and ``dense_in``, and no sum of squares of ``r``.
    ``ACT_EVICT``: the eviction hint of pass 3's activation loads, the last read.

    ``ROLLED``: each pass is a loop over the row's runtime width (one chunk's
    registers live at a time, so more rows per SM); else unrolled over the
    ``NUM_CHUNKS`` chunks (all of a pass's loads in flight at once, more
    registers). Both add the chunks in the same order. ``PAIRED_SUMS``: the
    sums of ``s`` and ``r`` in one cross-thread reduction."""
    wait_for_previous_grid(USE_PDL)
    base = tl.program_id(0).to(tl.int64) * hidden
    lanes = tl.arange(0, CHUNK)

    sum_x = tl.zeros([CHUNK], dtype=tl.float32)
    if ROLLED:
        for start in tl.range(0, hidden, CHUNK):
            sum_x += _chunk_x_squares(attn_ptr, base, start + lanes, hidden)
    else:
        for c in tl.static_range(NUM_CHUNKS):
            sum_x += _chunk_x_squares(attn_ptr, base, c * CHUNK + lanes, hidden)
    inv_x = tl.rsqrt(tl.sum(sum_x, axis=0) / hidden + eps)

    lane_s = tl.zeros([CHUNK], dtype=tl.float32)
    lane_r = tl.zeros([CHUNK], dtype=tl.float32)
    if ROLLED:
        for start in tl.range(0, hidden, CHUNK):
            s_squares, r_squares = _chunk_s_and_r_squares(
                attn_ptr, res_ptr, w_post_ptr, base, start + lanes, hidden, inv_x, MOE_OUTPUTS, BF16_RNE_BY_BITS
            )
            lane_s += s_squares
            lane_r += r_squares
    else:
        for c in tl.static_range(NUM_CHUNKS):
            s_squares, r_squares = _chunk_s_and_r_squares(
                attn_ptr, res_ptr, w_post_ptr, base, c * CHUNK + lanes, hidden, inv_x, MOE_OUTPUTS, BF16_RNE_BY_BITS
            )
            lane_s += s_squares
            lane_r += r_squares
    # fused_add_rmsnorm normalizes the unrounded fp32 sum; the router's norm and
    # pre_feedforward_layernorm_2 read the stored residual.
    sum_s, sum_r = _sums_of_s_and_r(lane_s, lane_r, 0, PAIRED_SUMS)
    inv_s = tl.rsqrt(sum_s / hidden + eps)
    inv_r = tl.rsqrt(sum_r / hidden + eps)

    if ROLLED:
        for start in tl.range(0, hidden, CHUNK):
            _chunk_outputs(
                attn_ptr, res_ptr, w_post_ptr, w_pre_ff_ptr, w_router_ptr, w_pre_ff_2_ptr,
                r_ptr, dense_ptr, router_ptr, moe_ptr, base, start + lanes, hidden, inv_x, inv_s, inv_r,
                MOE_OUTPUTS, ACT_EVICT, BF16_RNE_BY_BITS,
            )
    else:
        for c in tl.static_range(NUM_CHUNKS):
            _chunk_outputs(
                attn_ptr, res_ptr, w_post_ptr, w_pre_ff_ptr, w_router_ptr, w_pre_ff_2_ptr,
                r_ptr, dense_ptr, router_ptr, moe_ptr, base, c * CHUNK + lanes, hidden, inv_x, inv_s, inv_r,
                MOE_OUTPUTS, ACT_EVICT, BF16_RNE_BY_BITS,
            )


@triton.jit
def _tile_x_squares(attn_ptr, base, cols):
    """Pass 1 on one tile of a row held exactly (no mask: every lane is a column)."""
    x = tl.load(attn_ptr + base + cols).to(tl.float32)
    return tl.sum(x * x, axis=2)


@triton.jit
def _tile_residual(
    attn_ptr, res_ptr, w_post_ptr, base, cols, inv_x, EVICT: tl.constexpr, BF16_RNE_BY_BITS: tl.constexpr
):
    """``(s, r)`` of one tile (see :func:`_residual_sum`).

    The activations' pointers are ``ptr + (base + cols)``, pass 1's ``ptr + base
    + cols``, on purpose: written alike (one shared helper), the compiler
    merged pass 1's and pass 2's loads of ``x`` and kept the tiles in registers
    across the first reduction: 80 registers instead of 64 for 5376 in 2048 x
    8 warps (sm_90 offline), 3 programs per SM instead of 4, and on the H200
    5376 x 512 rows took 13.7 us instead of 10.4. Re-reading from L1 is what
    keeps a row's registers few."""
    offs = base + cols
    x = tl.load(attn_ptr + offs, eviction_policy=EVICT).to(tl.float32)
    res = tl.load(res_ptr + offs, eviction_policy=EVICT).to(tl.float32)
    w_post = tl.load(w_post_ptr + cols, eviction_policy="evict_last").to(tl.float32)
    return _residual_sum(x, res, inv_x, w_post, res_ptr.dtype.element_ty, BF16_RNE_BY_BITS)


@triton.jit
def _tile_s_and_r_squares(
    attn_ptr, res_ptr, w_post_ptr, base, cols, inv_x, MOE_OUTPUTS: tl.constexpr, BF16_RNE_BY_BITS: tl.constexpr
):
    """Pass 2 on one tile: each lane's sums of ``s * s`` and ``r * r`` (zero without ``MOE_OUTPUTS``)."""
    s, r = _tile_residual(attn_ptr, res_ptr, w_post_ptr, base, cols, inv_x, "", BF16_RNE_BY_BITS)
    lane_s = tl.sum(s * s, axis=2)
    if MOE_OUTPUTS:
        r32 = r.to(tl.float32)
        lane_r = tl.sum(r32 * r32, axis=2)
    else:
        lane_r = tl.zeros_like(lane_s)
    return lane_s, lane_r


@triton.jit
def _tile_outputs(
    attn_ptr, res_ptr, w_post_ptr, w_pre_ff_ptr, w_router_ptr, w_pre_ff_2_ptr,
    r_ptr, dense_ptr, router_ptr, moe_ptr, base, cols, inv_x, inv_s, inv_r,
    MOE_OUTPUTS: tl.constexpr, ACT_EVICT: tl.constexpr, BF16_RNE_BY_BITS: tl.constexpr,
):
    """Pass 3 on one tile: ``s`` and ``r`` recomputed, the outputs stored (``r`` after its residual was read)."""
    s, r = _tile_residual(attn_ptr, res_ptr, w_post_ptr, base, cols, inv_x, ACT_EVICT, BF16_RNE_BY_BITS)
    offs = base + cols
    tl.store(r_ptr + offs, r)
    w_pre_ff = tl.load(w_pre_ff_ptr + cols, eviction_policy="evict_last").to(tl.float32)
    w_router = w_pre_ff
    w_pre_ff_2 = w_pre_ff
    if MOE_OUTPUTS:
        w_router = tl.load(w_router_ptr + cols, eviction_policy="evict_last").to(tl.float32)
        w_pre_ff_2 = tl.load(w_pre_ff_2_ptr + cols, eviction_policy="evict_last").to(tl.float32)
    _segment_outputs(
        s, r.to(tl.float32), inv_s, inv_r, w_pre_ff, w_router, w_pre_ff_2, dense_ptr, router_ptr, moe_ptr,
        offs, None, MOE_OUTPUTS, BF16_RNE_BY_BITS,
    )


@triton.jit
def _segmented_tile(
    PASS: tl.constexpr, attn_ptr, res_ptr, w_post_ptr, w_pre_ff_ptr, w_router_ptr, w_pre_ff_2_ptr, r_ptr, dense_ptr,
    router_ptr, moe_ptr, base, cols, inv_x, inv_s, inv_r, lane_0, lane_1, MOE_OUTPUTS: tl.constexpr,
    ACT_EVICT: tl.constexpr, BF16_RNE_BY_BITS: tl.constexpr,
):
    """Pass ``PASS`` (as in :func:`_triple_norm_chunked_kernel`) on one tile:
    each lane's sums of squares added to ``lane_0`` (of ``x``, then of ``s``)
    and ``lane_1`` (of ``r``), or the outputs stored."""
    if PASS == 1:
        lane_0 += _tile_x_squares(attn_ptr, base, cols)
    elif PASS == 2:
        s_squares, r_squares = _tile_s_and_r_squares(
            attn_ptr, res_ptr, w_post_ptr, base, cols, inv_x, MOE_OUTPUTS, BF16_RNE_BY_BITS
        )
        lane_0 += s_squares
        lane_1 += r_squares
    else:
        _tile_outputs(
            attn_ptr, res_ptr, w_post_ptr, w_pre_ff_ptr, w_router_ptr, w_pre_ff_2_ptr, r_ptr, dense_ptr, router_ptr,
            moe_ptr, base, cols, inv_x, inv_s, inv_r, MOE_OUTPUTS, ACT_EVICT, BF16_RNE_BY_BITS,
        )
    return lane_0, lane_1


@triton.jit
def _segmented_pass(
    PASS: tl.constexpr, attn_ptr, res_ptr, w_post_ptr, w_pre_ff_ptr, w_router_ptr, w_pre_ff_2_ptr, r_ptr, dense_ptr,
    router_ptr, moe_ptr, base, inv_x, inv_s, inv_r, CHUNK: tl.constexpr, NUM_CHUNKS: tl.constexpr,
    TAIL0: tl.constexpr, TAIL1: tl.constexpr, LANES: tl.constexpr, ROLLED: tl.constexpr, MOE_OUTPUTS: tl.constexpr,
    ACT_EVICT: tl.constexpr, BF16_RNE_BY_BITS: tl.constexpr,
):
    """Pass ``PASS`` over a row: its whole chunks (a loop with ``ROLLED``, else
    unrolled), then its tails; the lanes' sums of the pass."""
    lane_0 = tl.zeros([1, LANES], dtype=tl.float32)
    lane_1 = tl.zeros([1, LANES], dtype=tl.float32)
    TAILS: tl.constexpr = NUM_CHUNKS * CHUNK
    if ROLLED:
        for start in tl.range(0, TAILS, CHUNK):
            lane_0, lane_1 = _segmented_tile(
                PASS, attn_ptr, res_ptr, w_post_ptr, w_pre_ff_ptr, w_router_ptr, w_pre_ff_2_ptr, r_ptr, dense_ptr,
                router_ptr, moe_ptr, base, _segment_cols(start, CHUNK, LANES), inv_x, inv_s, inv_r, lane_0, lane_1,
                MOE_OUTPUTS, ACT_EVICT, BF16_RNE_BY_BITS,
            )
    else:
        for c in tl.static_range(NUM_CHUNKS):
            lane_0, lane_1 = _segmented_tile(
                PASS, attn_ptr, res_ptr, w_post_ptr, w_pre_ff_ptr, w_router_ptr, w_pre_ff_2_ptr, r_ptr, dense_ptr,
                router_ptr, moe_ptr, base, _segment_cols(c * CHUNK, CHUNK, LANES), inv_x, inv_s, inv_r, lane_0,
                lane_1, MOE_OUTPUTS, ACT_EVICT, BF16_RNE_BY_BITS,
            )
    if TAIL0 > 0:
        lane_0, lane_1 = _segmented_tile(
            PASS, attn_ptr, res_ptr, w_post_ptr, w_pre_ff_ptr, w_router_ptr, w_pre_ff_2_ptr, r_ptr, dense_ptr,
            router_ptr, moe_ptr, base, _segment_cols(TAILS, TAIL0, LANES), inv_x, inv_s, inv_r, lane_0, lane_1,
            MOE_OUTPUTS, ACT_EVICT, BF16_RNE_BY_BITS,
        )
    if TAIL1 > 0:
        lane_0, lane_1 = _segmented_tile(
            PASS, attn_ptr, res_ptr, w_post_ptr, w_pre_ff_ptr, w_router_ptr, w_pre_ff_2_ptr, r_ptr, dense_ptr,
            router_ptr, moe_ptr, base, _segment_cols(TAILS + TAIL0, TAIL1, LANES), inv_x, inv_s, inv_r, lane_0,
            lane_1, MOE_OUTPUTS, ACT_EVICT, BF16_RNE_BY_BITS,
        )
    return lane_0, lane_1


@triton.jit(do_not_specialize=["n_rows"])
def _triple_norm_segmented_kernel(
    attn_ptr,
    res_ptr,
    w_post_ptr,
    w_pre_ff_ptr,
    w_router_ptr,
    w_pre_ff_2_ptr,
    r_ptr,
    dense_ptr,
    router_ptr,
    moe_ptr,
    n_rows,
    hidden,
    eps,
    CHUNK: tl.constexpr,
    NUM_CHUNKS: tl.constexpr,
    TAIL0: tl.constexpr,
    TAIL1: tl.constexpr,
    LANES: tl.constexpr,
    ROLLED: tl.constexpr,
    MOE_OUTPUTS: tl.constexpr,
    ACT_EVICT: tl.constexpr,
    BF16_RNE_BY_BITS: tl.constexpr,
    PAIRED_SUMS: tl.constexpr,
    PREFETCH_RES: tl.constexpr = "",
    USE_PDL: tl.constexpr = False,
):
    """The chunked kernel's three passes over a row held exactly: ``NUM_CHUNKS``
    chunks of ``CHUNK`` columns, then tails of ``TAIL0`` and ``TAIL1`` columns
    (powers of two, 0: none), ``hidden = NUM_CHUNKS * CHUNK + TAIL0 + TAIL1``
    (5376 = 2 x 2048 + 1024 + 256). No lane is masked, so none issues work for
    a column past the row (the chunked kernel's last chunk of a 5376 row in
    2048 lanes idles 37.5% of them). Every tile is split over the same
    ``LANES`` lanes, so the tiles' per-lane sums add in registers and each pass
    reduces across threads once, as in :func:`_triple_norm_row_kernel`.
    ``ROLLED``: the full chunks of each pass in a loop (the tails unrolled).
    ``PREFETCH_RES`` ("L1", "L2"; "": none): the row's residual, first read in
    pass 2, prefetched into that cache level before pass 1."""
    wait_for_previous_grid(USE_PDL)
    base = tl.program_id(0).to(tl.int64) * hidden
    HIDDEN: tl.constexpr = NUM_CHUNKS * CHUNK + TAIL0 + TAIL1
    prefetch_lines(res_ptr + base, HIDDEN, HIDDEN, LANES, PREFETCH_RES)
    lane_x, _ = _segmented_pass(
        1, attn_ptr, res_ptr, w_post_ptr, w_pre_ff_ptr, w_router_ptr, w_pre_ff_2_ptr, r_ptr, dense_ptr, router_ptr,
        moe_ptr, base, eps, eps, eps, CHUNK, NUM_CHUNKS, TAIL0, TAIL1, LANES, ROLLED, MOE_OUTPUTS, ACT_EVICT,
        BF16_RNE_BY_BITS,
    )
    inv_x = tl.rsqrt(tl.sum(lane_x, axis=1) / hidden + eps)[:, None, None]
    lane_s, lane_r = _segmented_pass(
        2, attn_ptr, res_ptr, w_post_ptr, w_pre_ff_ptr, w_router_ptr, w_pre_ff_2_ptr, r_ptr, dense_ptr, router_ptr,
        moe_ptr, base, inv_x, eps, eps, CHUNK, NUM_CHUNKS, TAIL0, TAIL1, LANES, ROLLED, MOE_OUTPUTS, ACT_EVICT,
        BF16_RNE_BY_BITS,
    )
    # fused_add_rmsnorm normalizes the unrounded fp32 sum; the router's norm and
    # pre_feedforward_layernorm_2 read the stored residual.
    sum_s, sum_r = _sums_of_s_and_r(lane_s, lane_r, 1, PAIRED_SUMS)
    inv_s = tl.rsqrt(sum_s / hidden + eps)[:, None, None]
    inv_r = tl.rsqrt(sum_r / hidden + eps)[:, None, None]
    _segmented_pass(
        3, attn_ptr, res_ptr, w_post_ptr, w_pre_ff_ptr, w_router_ptr, w_pre_ff_2_ptr, r_ptr, dense_ptr, router_ptr,
        moe_ptr, base, inv_x, inv_s, inv_r, CHUNK, NUM_CHUNKS, TAIL0, TAIL1, LANES, ROLLED, MOE_OUTPUTS, ACT_EVICT,
        BF16_RNE_BY_BITS,
    )


class TripleNormLaunch(NamedTuple):
    """How to launch the kernels.

    ``kernel`` "row": ``rows_per_program`` whole rows per program, each held in
    ``block`` lanes: a power of two >= hidden (the lanes past the row idle), or
    ``hidden`` itself when it is a sum of at most three powers of two (the row
    held as those segments, no idle lanes). "chunked": one row per program,
    ``block`` (a power of two) columns at a time. ``stream_hints``: the
    activations' last loads evict_first (they are dead after the read).
    ``rolled`` (chunked only): each pass a loop over the row instead of
    unrolled over its chunks (one chunk's registers live, so more rows per SM;
    fewer loads in flight per row), compiled with one pipeline stage, as
    Inductor compiles its reductions. ``paired_sums``: the 4-output mode's sums
    of squares of ``s`` and ``r`` in one cross-thread reduction (no effect with
    2 outputs, which have no sum of ``r``). "persistent": the row kernel's
    rows (``block`` as there, one row at a time) in a grid of
    ``programs_per_sm`` programs per SM (capped at the row count), each
    prefetching its next row. "segmented": the chunked passes over
    ``hidden // block`` whole chunks and the remainder as at most two
    power-of-two tails (no masked lane; ``rolled`` loops the whole chunks).
    ``prefetch`` (segmented only; "L1" or "L2", "": none): the residual row
    prefetched into that cache level before the first pass (pass 2 reads it
    first); not under Triton's interpreter.
    """

    kernel: str
    block: int
    rows_per_program: int
    num_warps: int
    stream_hints: bool = False
    rolled: bool = False
    paired_sums: bool = False
    programs_per_sm: int = 0
    prefetch: str = ""


def row_segments(hidden: int) -> tuple[int, int, int] | None:
    """``hidden`` as at most three powers of two, largest first, zero-padded
    (2816 -> (2048, 512, 256)); None when it needs more."""
    segments = block_segments(hidden, hidden, 3)
    if segments is None:
        return None
    seg0, seg1, seg2 = segments
    return seg0, seg1, seg2


def row_lanes(segments: tuple[int, int, int], num_warps: int) -> int:
    """Lanes each row segment is split over: one per thread where the smallest
    segment allows (fewer lanes, more adjacent columns per lane, past that)."""
    return min(min(seg for seg in segments if seg), 32 * num_warps)


# --------------------------------------------------------------------------- launch table
#
# Chosen on the H200 (torch 2.11, triton 3.6; benchmarks/sweep_triple_rmsnorm.py,
# 2026-11-29, benchmarks/results/sweep_triple_rmsnorm.json as of commit 078f471; the
# file now holds the second sweep below): every candidate
# timed alone under CUDA-graph replay, bf16; copy bandwidth 4.06 TB/s. The run's
# time budget covered 1, 256, 4096 and 16384 tokens (not 1536 x 16384); the
# bucket edges in between are interpolated, not measured. In us, best vs the
# previous rule ("old": padded rows in 2 x the warps up to 128 rows, then
# 1024-column chunks) and torch.compile of the reference:
#
# * Fewer warps per row: 8 (4 at 1536) instead of 16-32 (likely: fewer warps
#   to synchronize in each of the three row reductions). Triple 2816 x 1: 2.60 (old 2.81;
#   compile 3.48), 5376 x 1: 3.56 (old 4.06; compile 4.49).
# * Exact rows (2816 = 2048 + 512 + 256 lanes, no idle ones), so more programs
#   per SM (sm_90 ptxas, offline: 64 registers x 256 threads for an exact 2816
#   row in 8 warps, 48 x 512 padded in 16): triple 2816 x 256: 3.58 (old 5.29,
#   compile 4.34); 5376 x 256: 7.49 (old 11.16, compile 7.36); 2-output 2560 x
#   256: 2.57 (old 3.63), 1536 x 256: 2.25 (old 3.19). Padded rows stay best
#   for 5376 at decode sizes (3.56 vs 4.05 exact, which takes 120 registers in
#   8 warps).
# * Prefill, 4 outputs: the 1024-column chunks in 4 warps stay best. 2816 x 4096:
#   39.2 (86.8% of copy; exact rows 40.2), x 16384: 143.5 (95.0%); 5376 x 4096:
#   82.7 (78.6%, compile 79.0), x 16384: 306.9 (84.7%, compile 296.2).
#   Chunks of 256/512 (no masked lanes) lose: 11-21 chunks per pass, not 3-6.
# * Prefill, 2 outputs: whole rows win. 2560: exact, 8 warps (x 4096 24.2,
#   x 16384 87.3, 94.6%); 1536: exact, 4 warps (x 4096 13.1, 94.5%); 5376:
#   padded, 16 warps (x 4096 51.0, x 16384 193.7, 89.5%; compile 55.3, 203.5).
# * Eviction hints: within +-1% (noise) for the 2-output rows, 1.5-4% slower
#   for the chunks; off. Two rows per program: slower everywhere measured.
#
# Second sweep, 4 outputs (same machine and versions, session 3 of 2026-11-29,
# copy 4.07 TB/s; us, chosen vs the table above vs torch.compile):
# * Paired sums of s**2 and r**2 (one cross-thread reduction fewer): 2816 rows
#   at 1-128 tokens 2.39-2.88 (table 2.52-3.00; compile 3.31-3.91); up to 1024
#   tokens, 9.85 vs 9.91. 5376: 3.36-3.50 at 1-32 (table 3.53-3.64), exact
#   rows at 256: 7.02 (7.26; compile 7.32).
# * 2816 x 4096: exact rows 40.4 vs the 1024-column chunks' 40.8-41.2; from
#   8192 the chunks stay (76.2-76.5, 146.6).
# * 5376 from 512 tokens: 2048-column chunks in 8 warps (unrolled): 512 11.6
#   (previous table 13.4, compile 11.0), 1024 21.8 (25.2, compile 23.2), 4096
#   76.3 (82.8, compile 78.9), 16384 290.1-290.6 (303.0, compile 295.2).
#   Rolled chunk loops (Inductor's shape, 40 registers) measured 286.7 and 295.2
#   at 16384 and lost elsewhere; the launch option stays for sweeps.
#
# Tried in session 5 (same machine), for the decode ratio to one plain RMSNorm:
# a row split over 2-8 programs (each recomputing the row's sums from the
# whole row, storing only its slice; r out of place, since a slice written in
# place would be read as residual by the row's other programs). 5376 at 1-32
# rows 3.25-3.46 -> 2.95-3.37 us, slower from 64; 2816 slower at every size
# (x 1 2.30 -> 2.44); the 2-output 5376 even or slower (x 1 2.41 -> 2.44). No
# model has the 4-output 5376 width, so not kept. (Bulk L2 prefetch: see
# ple_tail's launch notes.)
#
# Prefill bandwidth (issue 8's 90% of copy): the traffic alone, 2 rows read and
# 4 written with no reduction, reached 94.2/95.5/97.2% of copy at 2816 x
# 4096/8192/16384 (benchmarks/benchmark_traffic_mix.py), against 81.0/85.7/88.7%
# here. ptxas (sm_90, triton 3.8, offline): the exact 2816 row in 8 warps takes
# 64 registers (4 programs, 4 rows in flight per SM), the 1024-column chunks in
# 4 warps 53 (9 rows), the traffic kernel 16 at 16 warps (4 rows of 4096 lanes,
# full occupancy). The guess then: with as many rows in flight, what the norm
# loses is the time a row spends in its two reductions with no load of its
# own in flight. Session 6's persistent kernel, which issues the next row's
# loads before this row's reductions, disproved it for the 4 outputs (below).

# Eviction hints, 4 outputs (session 5 of 2026-11-29, same machine and
# versions; benchmarks/sweep_stream_hints.py, results/sweep_stream_hints.json:
# the benchmark's timing in harness.LAYOUTS memory layouts, us as the range of
# the per-layout medians, with vs without): 5376 x 256 6.62-6.73 vs
# 6.87-7.08, x 512 10.73-10.88 vs 11.08-11.19 (compile 10.97-11.07), x 1024
# 20.63-20.98 vs 20.99-21.37, x 4096 72.80-73.24 vs 74.74-75.32; 2816 x 512
# 5.53-5.66 vs 5.65-5.76, x 1024 9.59-9.72 vs 9.73-9.83, but x 256 3.50-3.58
# vs 3.45-3.54 and x 4096 37.65-38.28 vs 37.35-37.67 (off there). The sweeps'
# "hints lose" was measured with each kernel alone, where its rotated inputs
# stayed in L2 across replays. 5376 at 8192 and 16384 rows takes the hints
# unswept; the benchmark then measured 142.6 and 279.2 us (147.5 and 289.9
# without, session 3's run).
# The persistent kernel (session 6 of 2026-11-29, same machine and versions;
# sweep_triple_rmsnorm.py --kernels persistent, results/
# sweep_triple_rmsnorm_persistent.json, copy 4.2 TB/s; each candidate alone,
# us, best persistent vs the table then): the 2-output mode gains at 4096 and
# 16384 rows: 2560 exact rows in 8 warps, 4 programs per SM: 23.04 vs 23.99,
# 85.36 vs 87.36 (3 per SM 85.33); 5376 exact in 8 warps, 4 per SM: 48.37 vs
# 50.89, 184.22 vs 193.63 (2 per SM 183.51). Not measured between 512 and
# 4096 rows, where the table keeps the row kernel. 1536 loses (13.92 vs 12.88,
# 54.45 vs 49.93), and so does every 4-output launch, by 6-32%: 2816 x 4096
# 43.57 vs 39.91, x 16384 164.9 vs 145.7 (chunks); 5376 x 4096 95.3 vs 73.2.
# Nsight Compute at base clocks (benchmarks/profile_prefill_norms.py,
# results/ncu_prefill_norms.txt) shows why prefetching is not what the
# 4-output kernels lack: at 2816 x 4096 the exact row kernel issues an
# instruction every 11.5 cycles per warp with 29.5 warps per SM (about 64% of
# the schedulers' issue slots; the traffic-only kernel: 50 cycles), 58% SM
# throughput, 57.5% DRAM throughput against the traffic kernel's 67.9% in
# the same profile. The 4-output rows spend their time issuing arithmetic
# (576 SASS instructions per thread for an 11-column lane, offline). Weights
# passed in fp32 (no bf16 -> fp32 conversion per element and row) were slower
# at every size measured (benchmarks/sweep_weight_dtype.py, results/
# sweep_weight_dtype.json: 2816 x 4096 43.80 vs 40.25 us, x 1 2.52 vs 2.31).
# Tried in session 7 (2026-11-30, same machine and versions; sweep_triple_rmsnorm.py with the
# candidates below added, each alone; us, 4 outputs at 2816) and not kept, since none beat the
# table by more than ~1%:
# * The persistent kernel's weights loaded once per program (118 registers in 8 warps, 2 programs
#   per SM): 10% off the persistent kernel (x 4096 44.2 -> 39.75-39.85, x 8192 86.0 -> 77.06-77.11,
#   x 16384 168.0 -> 150.9-151.1) but only level with the table (x 4096 40.27-40.29, x 8192 76.1-77.2,
#   x 16384 146.0-147.5; x 1024 10.5 vs 9.6-9.95).
# * Its row loads software-pipelined through shared memory instead (tl.range num_stages 2-3,
#   cp.async): 47.3 at best at 4096 rows, 177.0 at 16384.
# * Two exact rows per program (8 or 16 warps): 95.8-105.5 at 4096 rows.
# * The activation loads cached in L2 only (".cg", so that L1 keeps the weights), row and
#   persistent kernels: within 0.3% at 1024-16384 rows in both modes (x 4096 39.86 vs 39.88).
# Session 8 (2026-11-30, same machine and versions; benchmarks/sweep_in_context.py,
# results/sweep_in_context.json: each launch timed in harness.LAYOUTS memory layouts, as the
# benchmark times it, at 192-3072 rows): the 4-output 5376 chunks with paired sums against the
# table's unpaired ones vs torch.compile, us: 384 9.02 vs 9.23 (compile 9.04), 512 10.41 vs
# 10.79 (10.92), 768 17.14 vs 18.13 (17.01: still slower than Inductor, by 0.8%), 1024 19.79
# vs 20.65 (22.84), 1536 28.92 vs 30.13, 3072 52.75 vs 54.70; not measured from 4096 rows,
# where the unpaired chunks stay. Also tried there and slower: the chunks' first two passes
# hinted evict_last (as Inductor hints its first reads; 384 9.29, 1024 22.16), 1024-column
# chunks rolled in 4 or 8 warps (Inductor's shape at 768 rows: 17.48, 17.98), 2048 x 16 warps.
# 2816: the table was 1.09-1.75x compile at 192-3072 rows and stays.
# Session 9 (2026-11-30, same machine and versions; sweep_in_context.py, results/
# sweep_in_context_segmented_triple_*.json and ..._2816_mid.log): the segmented kernel (the
# chunked passes over whole chunks and exact power-of-two tails, so no lane is masked: a
# 5376 row's last 2048-column chunk idled 37.5% of its lanes, and in these issue-bound
# kernels masked lanes still issue every instruction; sm_90 offline, 5376 in 2048 x 8
# unrolled: 1000 SASS instructions against the chunks' 1224). us in context, chosen vs
# the table then vs torch.compile: 5376 x 384 8.58 vs 8.93 (compile 8.99), x 768 16.60
# vs 17.33 (17.02), x 1024 19.72 vs 19.90, x 4096 70.84 vs 73.21, x 8192 139.98 vs 144.30,
# x 16384 274.97 vs 280.67 (rolled 274.22); level or slower at 256 (6.92 vs the row
# kernel's 6.77), 512 (10.43 vs 10.44), 1536 (29.27 vs 29.22) and 2048 (35.95 vs
# 35.75), where the table stays. 2816 in 1024 x 4 hinted: x 4096 35.96 vs 37.40 (the
# exact row), x 8192 70.15 vs 74.86, x 16384 140.51 vs 148.49 (91.1/93.4/93.3% of the
# run's copy bandwidth, 4.23 TB/s); slower than the row kernel at 256-2048 rows
# (e.g. x 1024 10.79 vs 9.71). benchmark_triple_rmsnorm.py with this table (5 layouts,
# results/triple_rmsnorm.json): 2816 x 4096/8192/16384 38.33/72.35/140.99 (85.8/90.9/93.3%
# of copy; the previous table's run: 40.69/76.96/148.65), 5376 x 384/512/768/1024 8.83/
# 10.56/17.26/20.69 (compile 9.05/10.97/17.04/23.14: 768 still 0.99x there, 1.03x in two
# sweeps), x 4096/8192/16384 72.72/138.97/272.77 (86.3/90.4/92.1%). Then at 768 rows 1024 x 4
# warps (8 programs per SM: 768 rows in one wave, where 2048 x 8 runs 4 per SM, 1.45 waves):
# 15.48 vs 16.60 (compile 16.9); at 384/512/1024 it lost (9.65/11.36/20.20 vs 8.58/10.38/19.68;
# results/sweep_in_context_segmented_triple_5376_768.json). The edges at 528 (one wave of
# 2048 x 8) and 896 rows are interpolated, not measured.
# Session 10 (2026-11-30, same versions; sweep_in_context.py, results/
# sweep_in_context_prefetch.json, copy 4.22 TB/s): the segmented kernel with the residual
# row prefetched before pass 1 (``prefetch``: pass 2 is its first read, so without it the
# row waits on a second DRAM trip after its first reduction). us in context, prefetch
# into L1 / L2 / none: 5376 in 2048 x 8 at 4096 rows 68.53 / 68.94 / 70.23, 8192 134.16 /
# 133.51 / 138.71, 16384 261.11 / 261.93 / 274.06 (the table takes L1 from 4096 rows);
# level at 1024 (19.71 / 19.77 / 19.80) and 2048 (35.78 / 35.59 / 35.95, the chunked
# table 35.55). 2816 in 1024 x 4 hinted: 4096 36.61 / 36.75 / 35.80, 8192 70.70 / 70.77 /
# 70.47, 16384 139.47 / 139.49 / 140.99: within 1-2% either way, unchanged. (The same
# code's 2816 x 4096 took 38.4 us on another H200 lent that day, and torch.compile 40.7
# on both: harness.gpu_identity.) At 384-2048 rows the prefetch lost or was level
# (results/sweep_in_context_prefetch_mid.json: 5376 x 768 16.05 vs 15.52 in 1024 x 4,
# x 1024 19.67 vs 19.94 in 2048 x 8). The benchmark with this table (results/
# triple_rmsnorm_prefill_session10.json): 5376 x 4096/8192/16384 69.18/133.21/260.69.
# (outputs, hidden) -> (max n_rows, launch) buckets, the first that holds n_rows wins.
_ALL_ROWS = 1 << 62
_LAUNCH_TABLE: dict[tuple[int, int], tuple[tuple[int, TripleNormLaunch], ...]] = {
    (4, 2816): (
        (256, TripleNormLaunch("row", 2816, 1, 8, paired_sums=True)),
        (1024, TripleNormLaunch("row", 2816, 1, 8, stream_hints=True, paired_sums=True)),
        (4095, TripleNormLaunch("row", 2816, 1, 8)),
        (_ALL_ROWS, TripleNormLaunch("segmented", 1024, 1, 4, stream_hints=True, paired_sums=True)),
    ),
    (4, 5376): (
        (128, TripleNormLaunch("row", 8192, 1, 8, paired_sums=True)),
        (256, TripleNormLaunch("row", 5376, 1, 8, stream_hints=True, paired_sums=True)),
        (528, TripleNormLaunch("segmented", 2048, 1, 8, paired_sums=True)),
        (896, TripleNormLaunch("segmented", 1024, 1, 4, paired_sums=True)),
        (1024, TripleNormLaunch("segmented", 2048, 1, 8, paired_sums=True)),
        (4095, TripleNormLaunch("chunked", 2048, 1, 8, stream_hints=True, paired_sums=True)),
        (_ALL_ROWS, TripleNormLaunch("segmented", 2048, 1, 8, paired_sums=True, prefetch="L1")),
    ),
    (2, 1536): ((_ALL_ROWS, TripleNormLaunch("row", 1536, 1, 4)),),
    (2, 2560): (
        (4095, TripleNormLaunch("row", 2560, 1, 8)),
        (_ALL_ROWS, TripleNormLaunch("persistent", 2560, 1, 8, programs_per_sm=4)),
    ),
    (2, 5376): (
        (512, TripleNormLaunch("row", 8192, 1, 8)),
        (4095, TripleNormLaunch("row", 8192, 1, 16)),
        (_ALL_ROWS, TripleNormLaunch("persistent", 5376, 1, 8, programs_per_sm=4)),
    ),
}


def launch_config(hidden: int, n_rows: int, moe_outputs: bool = True) -> TripleNormLaunch:
    """How to launch the kernel for ``n_rows`` rows of ``hidden`` elements, in
    the 4-output (``moe_outputs``) or the 2-output mode.

    The measured widths from the table above. Elsewhere the previous rule:
    padded rows with 8 elements of each tensor per thread (4-32 warps), narrow
    rows batched up to 2048 lanes per program; above 128 rows wider than 1024,
    the chunked kernel, 1024 columns in 4 warps.
    """
    for max_rows, launch in _LAUNCH_TABLE.get((4 if moe_outputs else 2, hidden), ()):
        if n_rows <= max_rows:
            return launch
    if n_rows > 128 and hidden > 1024:
        return TripleNormLaunch("chunked", 1024, 1, 4)
    block = triton.next_power_of_2(hidden)
    rows = max(1, min(16, 2048 // block))
    return TripleNormLaunch("row", block, rows, max(4, min(32, rows * block // 256)))


def _supports(
    attn_out: torch.Tensor,
    residual: torch.Tensor,
    weights: Sequence[torch.Tensor],
    n_weights: int,
    dtypes: Sequence[torch.dtype],
) -> bool:
    if attn_out.dim() != 2 or residual.shape != attn_out.shape:
        return False
    n_rows, hidden = attn_out.shape
    if n_rows == 0 or not 0 < hidden <= MAX_FUSED_ROW:
        return False
    if attn_out.dtype not in dtypes or residual.dtype != attn_out.dtype:
        return False
    if not (attn_out.is_contiguous() and residual.is_contiguous()):
        return False
    if not triton_can_run_on(attn_out) or residual.device != attn_out.device:
        return False
    return len(weights) == n_weights and all(
        w.dim() == 1
        and w.numel() == hidden
        and w.is_contiguous()
        and w.is_floating_point()
        and w.device == attn_out.device
        for w in weights
    )


def supports(
    attn_out: torch.Tensor,
    residual: torch.Tensor,
    weights: Sequence[torch.Tensor],
    dtypes: Sequence[torch.dtype] = TRIPLE_RMSNORM_DTYPES,
) -> bool:
    """Whether :func:`post_attn_triple_rmsnorm` runs the kernel on these inputs.

    2-D contiguous activations of one dtype in ``dtypes``, at least one row and
    at most ``MAX_FUSED_ROW`` columns, on a device Triton runs on; four 1-D
    contiguous floating weights of the row's length on the same device.
    """
    return _supports(attn_out, residual, weights, 4, dtypes)


def supports_norm_add(
    attn_out: torch.Tensor,
    residual: torch.Tensor,
    weights: Sequence[torch.Tensor],
    dtypes: Sequence[torch.dtype] = TRIPLE_RMSNORM_DTYPES,
) -> bool:
    """Whether :func:`post_attn_norm_add` runs the kernel on these inputs: as
    :func:`supports`, with two weights ``(w_post_attn, w_pre_ff)``."""
    return _supports(attn_out, residual, weights, 2, dtypes)


def _launch(
    name: str,
    attn_out: torch.Tensor,
    residual: torch.Tensor,
    weights: tuple[torch.Tensor, ...],
    residual_out: torch.Tensor | None,
    eps: float,
    launch: TripleNormLaunch | None,
) -> tuple[torch.Tensor, ...]:
    """Validate, allocate ``len(weights)`` outputs (``r`` into ``residual_out`` when
    given) and launch the kernel in the mode of that many outputs."""
    moe_outputs = len(weights) == 4
    if residual_out is None:
        residual_out = torch.empty_like(attn_out)
    elif (
        residual_out.shape != attn_out.shape
        or residual_out.dtype != attn_out.dtype
        or not residual_out.is_contiguous()
    ):
        raise ValueError("residual_out must be contiguous, shaped and typed like attn_out")
    outputs = (residual_out,) + tuple(torch.empty_like(attn_out) for _ in weights[1:])
    if attn_out.dim() == 2 and attn_out.shape[0] == 0 and residual.shape == attn_out.shape:
        return outputs
    if not _supports(attn_out, residual, weights, len(weights), TRIPLE_RMSNORM_DTYPES):
        raise ValueError(
            f"{name}: unsupported inputs: attn_out "
            f"{tuple(attn_out.shape)} {attn_out.dtype} on {attn_out.device} "
            f"(contiguous={attn_out.is_contiguous()}), residual {tuple(residual.shape)} "
            f"{residual.dtype} (contiguous={residual.is_contiguous()}), weights "
            f"{[(tuple(w.shape), w.dtype, str(w.device)) for w in weights]}"
        )
    n_rows, hidden = attn_out.shape
    launch = launch or launch_config(hidden, n_rows, moe_outputs)
    # Without the router/expert outputs their pointer arguments are never read:
    # any tensor fills the slots.
    kernel_weights = weights if moe_outputs else weights + weights
    kernel_outputs = outputs if moe_outputs else outputs + outputs
    args = (attn_out, residual, *kernel_weights, *kernel_outputs, n_rows, hidden, eps)
    constants = {
        "MOE_OUTPUTS": moe_outputs,
        "ACT_EVICT": "evict_first" if launch.stream_hints else "",
        "BF16_RNE_BY_BITS": triton_interpreting() and attn_out.dtype == torch.bfloat16,
        "PAIRED_SUMS": launch.paired_sums and moe_outputs,
        **launch_kwargs(attn_out, "post_attn", n_rows, hidden),
    }
    if launch.rows_per_program < 1 or launch.rows_per_program & (launch.rows_per_program - 1):
        raise ValueError(f"rows_per_program must be a power of two: {launch}")
    prefetch = prefetch_level(launch, "segmented")
    if launch.kernel in ("row", "persistent"):
        if launch.rolled:
            raise ValueError(f"the row kernel has no loop to roll: {launch}")
        segments = launch_segments(hidden, launch.block, launch)
        seg0, seg1, seg2 = segments
        segment_constants = dict(SEG0=seg0, SEG1=seg1, SEG2=seg2, LANES=row_lanes(segments, launch.num_warps))
        if launch.kernel == "row":
            _triple_norm_row_kernel[(triton.cdiv(n_rows, launch.rows_per_program),)](
                *args,
                ROWS=launch.rows_per_program,
                num_warps=launch.num_warps,
                **segment_constants,
                **constants,
            )
        else:
            if launch.rows_per_program != 1 or launch.programs_per_sm < 1:
                raise ValueError(f"the persistent kernel takes one row at a time, programs_per_sm >= 1: {launch}")
            programs = min(n_rows, launch.programs_per_sm * multiprocessor_count(attn_out))
            _triple_norm_persistent_kernel[(programs,)](
                *args,
                num_warps=launch.num_warps,
                **segment_constants,
                **constants,
            )
    elif launch.kernel == "chunked":
        if launch.rows_per_program != 1:
            raise ValueError(f"the chunked kernel takes one row per program: {launch}")
        if launch.block < 1 or launch.block & (launch.block - 1):
            raise ValueError(f"the chunked kernel needs a power-of-two chunk: {launch}")
        _triple_norm_chunked_kernel[(n_rows,)](
            *args,
            CHUNK=launch.block,
            NUM_CHUNKS=triton.cdiv(hidden, launch.block),
            ROLLED=launch.rolled,
            num_warps=launch.num_warps,
            # Rolled loops: one stage, as Inductor compiles the same reduction
            # (the configuration measured fast on the H200); unrolled passes
            # have no loop and keep Triton's default.
            **({"num_stages": 1} if launch.rolled else {}),
            **constants,
        )
    elif launch.kernel == "segmented":
        tiles = exact_chunks(hidden, launch.block, 32 * launch.num_warps)
        if launch.rows_per_program != 1 or tiles is None:
            raise ValueError(
                f"the segmented kernel takes one row per program, a power-of-two chunk, and a row whose "
                f"remainder past its whole chunks is at most two powers of two (hidden {hidden}): {launch}"
            )
        num_chunks, tail0, tail1, lanes = tiles
        _triple_norm_segmented_kernel[(n_rows,)](
            *args,
            CHUNK=launch.block,
            NUM_CHUNKS=num_chunks,
            TAIL0=tail0,
            TAIL1=tail1,
            LANES=lanes,
            ROLLED=launch.rolled,
            PREFETCH_RES=prefetch,
            num_warps=launch.num_warps,
            **({"num_stages": 1} if launch.rolled else {}),
            **constants,
        )
    else:
        raise ValueError(f"unknown kernel {launch.kernel!r}")
    return outputs


def post_attn_triple_rmsnorm(
    attn_out: torch.Tensor,
    residual: torch.Tensor,
    w_post_attn: torch.Tensor,
    w_pre_ff: torch.Tensor,
    w_router: torch.Tensor,
    w_pre_ff_2: torch.Tensor,
    eps: float,
    *,
    residual_out: torch.Tensor | None = None,
    launch: TripleNormLaunch | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(r, dense_in, router_in, moe_in)`` of a Gemma-4 MoE layer in one launch.

    ``s = round(rmsnorm(attn_out, w_post_attn)) + residual`` in fp32,
    ``r = round(s)``, ``dense_in = rmsnorm(s, w_pre_ff)``,
    ``router_in = rmsnorm(r, w_router)`` and ``moe_in = rmsnorm(r, w_pre_ff_2)``
    (the last two share one rsqrt of the rounded ``r``); every output in
    ``attn_out.dtype``, rounded to nearest even. Equals
    :func:`triple_rmsnorm_reference` up to fp32 reduction order and rsqrt.

    ``attn_out``/``residual``: ``[tokens, hidden]``, contiguous, one dtype.
    Weights: ``[hidden]``, any float dtype (read as fp32). ``r`` is written to
    ``residual_out`` when given, which may be ``residual`` itself, else to a new
    tensor. ``launch`` overrides :func:`launch_config` (benchmark sweeps).

    An empty batch returns empty outputs without a launch; other inputs that
    :func:`supports` rejects raise ``ValueError``.
    """
    weights = (w_post_attn, w_pre_ff, w_router, w_pre_ff_2)
    r, dense_in, router_in, moe_in = _launch(
        "post_attn_triple_rmsnorm", attn_out, residual, weights, residual_out, eps, launch
    )
    return r, dense_in, router_in, moe_in


def post_attn_norm_add(
    attn_out: torch.Tensor,
    residual: torch.Tensor,
    w_post_attn: torch.Tensor,
    w_pre_ff: torch.Tensor,
    eps: float,
    *,
    residual_out: torch.Tensor | None = None,
    launch: TripleNormLaunch | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(r, dense_in)`` of a Gemma-4 dense or PLE layer in one launch.

    ``s = round(rmsnorm(attn_out, w_post_attn)) + residual`` in fp32,
    ``r = round(s)``, ``dense_in = round(rmsnorm(s, w_pre_ff))``: the first two
    outputs of :func:`post_attn_triple_rmsnorm`, by the same kernels. Equals
    :func:`post_attn_norm_add_reference` up to fp32 reduction order and rsqrt.
    Arguments, ``residual_out`` (may be ``residual``), ``launch`` and errors as
    there; the inputs are those :func:`supports_norm_add` accepts.
    """
    r, dense_in = _launch(
        "post_attn_norm_add", attn_out, residual, (w_post_attn, w_pre_ff), residual_out, eps, launch
    )
    return r, dense_in
