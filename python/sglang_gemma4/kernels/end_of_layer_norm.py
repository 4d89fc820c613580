"""End of a Gemma-4 decoder layer with the next layer's ``input_layernorm`` folded in.

A Gemma-4 layer ends by writing the new hidden stream ``h`` (SGLang 0.5.23's
``ReplaceAtExit`` residual: the layer computes the whole next stream itself);
the next layer then starts by reading ``h`` back for its input norm
(``NormQuantReadout.read`` -> ``RMSNorm`` -> ``sgl_kernel.rmsnorm``). Here one
launch writes both: ``h`` and ``next_in = rmsnorm(h, w_next)``.

Gemma-4 RMSNorm (no "+1" on the weight, fp32 inside)::

    rmsnorm(x, w) = x * rsqrt(sum(x**2) / hidden + eps) * w

The three layer kinds end differently; the rounding points follow what SGLang
0.5.23 runs on CUDA for bf16/fp16 activations (``round`` = to the activation
dtype, to nearest even; ``s`` = ``layer_scalar`` read as fp32):

* dense layer (31B), ``gemma_rmsnorm_residual_scalar``: one Triton kernel,
  fp32 throughout, one rounding at the store::

      h = round((rmsnorm(x, w_post_ff) + residual) * s)

* MoE layer (26B-A4B), ``gemma_dual_rmsnorm_residual_scalar`` after the dense
  and expert branches: one Triton kernel, fp32 throughout, one rounding::

      h = round((rmsnorm(rmsnorm(h1, w1) + rmsnorm(h2, w2), w3) + residual) * s)

* PLE layer (E2B/E4B), the last stretch of the eager PLE tail after the
  projection GEMM: three eager ops (``Gemma4RMSNorm``, ``+``, ``*``), each
  rounding its output::

      h = round(round(round(rmsnorm(x, w_post_ple)) + residual) * s)

  Eager ``bf16[T, H] * layer_scalar`` promotes to fp32 if the scalar is fp32,
  so the PLE variant requires a scalar of the activation dtype.

The next layer's norm then reads the *stored* ``h``::

    next_in = round(rmsnorm(h, w_next))

so this kernel normalizes the rounded ``h``, which is what SGLang computes with
a separate launch. With fp32 activations every rounding is the identity.

Traffic: one pass over each input row from DRAM, two output rows written,
weights from L2. Three kernels compute it:

* rows: one program holds ``ROWS`` whole rows in registers (padded to a power
  of two), each element loaded once (the latency-bound decode sizes);
* chunks: one row per program, ``CHUNK`` columns at a time, in passes (the
  first unrolled, all its loads in flight; the later ones unrolled too or, by
  the launch's ``unroll``, loops), one cross-thread reduction per pass; few
  registers per program, so many rows in flight per SM (the bandwidth-bound
  prefill sizes). Later passes re-read the row from L1/L2 and recompute with the
  same operations. The pass that sums ``h**2`` stores ``h``; the last pass reads
  the stored ``h`` back for ``next_in`` (the very value the next layer's norm
  would read);
* persistent: a fixed grid of a few programs per SM, each taking one row at a
  time in registers (as power-of-two segments, no idle lanes), computing each
  element once and prefetching its next row during this row's reductions.

:func:`launch_config` picks the kernel and its shape by row width and count.

Imports torch and triton only (the GPU benchmark machine has no sglang).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from sglang_gemma4.kernels.dependent_launch import launch_kwargs, wait_for_previous_grid
from sglang_gemma4.kernels.prefetch import prefetch_lanes, prefetch_level, prefetch_lines
from sglang_gemma4.kernels.reductions import paired_sums
from sglang_gemma4.kernels.rounding import round_to
from sglang_gemma4.kernels.row_segments import lanes_per_row, launch_segments
from sglang_gemma4.kernels.support import (
    FUSED_DTYPES,
    MAX_FUSED_ROW,
    is_rowmajor_2d,
    multiprocessor_count,
    triton_can_run_on,
    triton_interpreting,
)

# Which layer's end the kernel computes (a constexpr of the kernel).
DENSE, MOE, PLE = 0, 1, 2


# --------------------------------------------------------------------------- kernel


@triton.jit
def _inv_rms(x, hidden, eps):
    return tl.rsqrt(tl.sum(x * x, axis=1) / hidden + eps)


@triton.jit
def _end_of_layer_norm_kernel(
    x_ptr,
    x2_ptr,
    res_ptr,
    scalar_ptr,
    w_a_ptr,
    w_b_ptr,
    w_c_ptr,
    w_next_ptr,
    out_ptr,
    next_ptr,
    n_rows,
    hidden,
    x_stride,
    x2_stride,
    res_stride,
    eps,
    MODE: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BF16_RNE_BY_BITS: tl.constexpr,
    USE_PDL: tl.constexpr = False,
    EXPERT_ROWS: tl.constexpr = 0,
):
    """``EXPERT_ROWS`` (MoE only; 0: ``x2`` is the experts' summed output): ``x2``
    holds each token's ``EXPERT_ROWS`` routed-weighted expert rows, ``hidden``
    apart, summed here as SGLang's top-k sum does before the end of the layer."""
    wait_for_previous_grid(USE_PDL)
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    # int64: rows * stride passes 2**31 at ~400k tokens of hidden 5376.
    rows64 = rows.to(tl.int64)[:, None]
    cols = tl.arange(0, BLOCK_H)
    col_ok = cols < hidden
    mask = (rows[:, None] < n_rows) & col_ok[None, :]
    act = out_ptr.dtype.element_ty

    # Activations are read once; the weights by every program, so they stay in L2.
    x = tl.load(x_ptr + rows64 * x_stride + cols[None, :], mask=mask, other=0.0, eviction_policy="evict_first")
    res = tl.load(res_ptr + rows64 * res_stride + cols[None, :], mask=mask, other=0.0, eviction_policy="evict_first")
    x = x.to(tl.float32)
    res = res.to(tl.float32)
    scalar = tl.load(scalar_ptr).to(tl.float32)
    w_a = tl.load(w_a_ptr + cols, mask=col_ok, other=0.0, eviction_policy="evict_last").to(tl.float32)

    if MODE == 1:
        # Dense and expert branches, each normalized, summed and normalized
        # again, all in fp32 (SGLang's dual kernel stores nothing in between).
        if EXPERT_ROWS > 0:
            # moe_sum_reduce: an fp32 sum over the top-k rows in routing order,
            # stored (rounded) as the MoE output that the dual norm then reads.
            x2 = tl.zeros((ROWS, BLOCK_H), dtype=tl.float32)
            for k in tl.static_range(EXPERT_ROWS):
                x2 += tl.load(
                    x2_ptr + rows64 * x2_stride + k * hidden + cols[None, :],
                    mask=mask, other=0.0, eviction_policy="evict_first",
                ).to(tl.float32)
            x2 = round_to(x2, act, BF16_RNE_BY_BITS)
        else:
            x2 = tl.load(x2_ptr + rows64 * x2_stride + cols[None, :], mask=mask, other=0.0, eviction_policy="evict_first")
            x2 = x2.to(tl.float32)
        w_b = tl.load(w_b_ptr + cols, mask=col_ok, other=0.0, eviction_policy="evict_last").to(tl.float32)
        w_c = tl.load(w_c_ptr + cols, mask=col_ok, other=0.0, eviction_policy="evict_last").to(tl.float32)
        combined = x * _inv_rms(x, hidden, eps)[:, None] * w_a[None, :]
        combined = combined + x2 * _inv_rms(x2, hidden, eps)[:, None] * w_b[None, :]
        normed = combined * _inv_rms(combined, hidden, eps)[:, None] * w_c[None, :]
        h = round_to((normed + res) * scalar, act, BF16_RNE_BY_BITS)
    elif MODE == 2:
        # Eager PLE tail: norm, add and scale each store their output.
        normed = round_to(x * _inv_rms(x, hidden, eps)[:, None] * w_a[None, :], act, BF16_RNE_BY_BITS)
        summed = round_to(normed + res, act, BF16_RNE_BY_BITS)
        h = round_to(summed * scalar, act, BF16_RNE_BY_BITS)
    else:
        h = round_to((x * _inv_rms(x, hidden, eps)[:, None] * w_a[None, :] + res) * scalar, act, BF16_RNE_BY_BITS)
    out_offs = rows64 * hidden + cols[None, :]
    tl.store(out_ptr + out_offs, h.to(act), mask=mask)

    # The next layer's input norm of the stored (rounded) stream.
    w_next = tl.load(w_next_ptr + cols, mask=col_ok, other=0.0, eviction_policy="evict_last").to(tl.float32)
    next_in = h * _inv_rms(h, hidden, eps)[:, None] * w_next[None, :]
    tl.store(next_ptr + out_offs, round_to(next_in, act, BF16_RNE_BY_BITS).to(act), mask=mask)


@triton.jit
def _load_weight(ptr, cols, col_ok):
    # Every row reads the weights: keep them in L2.
    return tl.load(ptr + cols, mask=col_ok, other=0.0, eviction_policy="evict_last").to(tl.float32)


@triton.jit
def _row_inv_rms(lane_sums, hidden, eps):
    return tl.rsqrt(tl.sum(lane_sums, axis=0) / hidden + eps)


@triton.jit
def _moe_branch_sum(x_row, x2_row, w_a_ptr, w_b_ptr, cols, col_ok, inv_a, inv_b, EVICT: tl.constexpr):
    """``rmsnorm(h1, w1) + rmsnorm(h2, w2)`` of one chunk, fp32, not rounded."""
    x = tl.load(x_row + cols, mask=col_ok, other=0.0, eviction_policy=EVICT).to(tl.float32)
    x2 = tl.load(x2_row + cols, mask=col_ok, other=0.0, eviction_policy=EVICT).to(tl.float32)
    combined = x * inv_a * _load_weight(w_a_ptr, cols, col_ok)
    return combined + x2 * inv_b * _load_weight(w_b_ptr, cols, col_ok)


@triton.jit
def _input_sums_chunk(x_row, x2_row, cols, hidden, sum_a, sum_b, MODE: tl.constexpr, EVICT: tl.constexpr):
    """Pass 1 on one chunk: per-lane sums of squares of the layer's inputs."""
    col_ok = cols < hidden
    x = tl.load(x_row + cols, mask=col_ok, other=0.0, eviction_policy=EVICT).to(tl.float32)
    sum_a += x * x
    if MODE == 1:
        x2 = tl.load(x2_row + cols, mask=col_ok, other=0.0, eviction_policy=EVICT).to(tl.float32)
        sum_b += x2 * x2
    return sum_a, sum_b


@triton.jit
def _branch_sum_sums_chunk(x_row, x2_row, w_a_ptr, w_b_ptr, cols, hidden, inv_a, inv_b, sum_c, EVICT: tl.constexpr):
    """Pass 2 (MoE) on one chunk: per-lane sums of squares of the fp32 branch sum."""
    combined = _moe_branch_sum(x_row, x2_row, w_a_ptr, w_b_ptr, cols, cols < hidden, inv_a, inv_b, EVICT)
    return sum_c + combined * combined


@triton.jit
def _store_h_chunk(
    x_row, x2_row, res_row, out_row, w_a_ptr, w_b_ptr, w_c_ptr, cols, hidden, inv_a, inv_b, inv_c, scalar,
    sum_h, MODE: tl.constexpr, BF16_RNE_BY_BITS: tl.constexpr, EVICT: tl.constexpr,
):
    """Pass 3 on one chunk: ``h`` stored (read ``residual`` first, so ``out`` may
    alias it), and per-lane sums of squares of the rounded ``h``. ``EVICT``:
    the eviction hint of these last reads of the inputs."""
    col_ok = cols < hidden
    act = out_row.dtype.element_ty
    res = tl.load(res_row + cols, mask=col_ok, other=0.0, eviction_policy=EVICT).to(tl.float32)
    if MODE == 1:
        combined = _moe_branch_sum(x_row, x2_row, w_a_ptr, w_b_ptr, cols, col_ok, inv_a, inv_b, EVICT)
        normed = combined * inv_c * _load_weight(w_c_ptr, cols, col_ok)
        h = round_to((normed + res) * scalar, act, BF16_RNE_BY_BITS)
    else:
        x = tl.load(x_row + cols, mask=col_ok, other=0.0, eviction_policy=EVICT).to(tl.float32)
        normed = x * inv_a * _load_weight(w_a_ptr, cols, col_ok)
        if MODE == 2:
            # Eager PLE tail: norm, add and scale each store their output.
            normed = round_to(normed, act, BF16_RNE_BY_BITS)
            summed = round_to(normed + res, act, BF16_RNE_BY_BITS)
            h = round_to(summed * scalar, act, BF16_RNE_BY_BITS)
        else:
            h = round_to((normed + res) * scalar, act, BF16_RNE_BY_BITS)
    tl.store(out_row + cols, h.to(act), mask=col_ok)
    return sum_h + h * h


@triton.jit
def _store_next_chunk(
    out_row, next_row, w_next_ptr, cols, hidden, inv_h, BF16_RNE_BY_BITS: tl.constexpr, EVICT: tl.constexpr
):
    """Pass 4 on one chunk: ``next_in`` from the stored ``h`` (read with ``EVICT``)."""
    col_ok = cols < hidden
    act = out_row.dtype.element_ty
    h = tl.load(out_row + cols, mask=col_ok, other=0.0, eviction_policy=EVICT).to(tl.float32)
    next_in = h * inv_h * _load_weight(w_next_ptr, cols, col_ok)
    tl.store(next_row + cols, round_to(next_in, act, BF16_RNE_BY_BITS).to(act), mask=col_ok)


@triton.jit(do_not_specialize=["n_rows"])
def _end_of_layer_norm_chunked_kernel(
    x_ptr,
    x2_ptr,
    res_ptr,
    scalar_ptr,
    w_a_ptr,
    w_b_ptr,
    w_c_ptr,
    w_next_ptr,
    out_ptr,
    next_ptr,
    n_rows,
    hidden,
    x_stride,
    x2_stride,
    res_stride,
    eps,
    MODE: tl.constexpr,
    CHUNK: tl.constexpr,
    NUM_CHUNKS: tl.constexpr,
    UNROLL: tl.constexpr,
    BF16_RNE_BY_BITS: tl.constexpr,
    REREAD_EVICT: tl.constexpr,
    LAST_EVICT: tl.constexpr,
    PREFETCH_RES: tl.constexpr = "",
    PREFETCH_LANES: tl.constexpr = 1,
    USE_PDL: tl.constexpr = False,
):
    """One row per program (``n_rows`` programs), ``CHUNK`` columns at a time.

    Passes, each summing per lane across its chunks and reducing across threads
    once: (1) the input norms' sums of squares (both branches for MoE); (2, MoE
    only) the sum of squares of the fp32 branch sum; (3) ``h``, stored, and the
    sum of squares of the rounded ``h``; (4) ``next_in`` from ``h`` read back.
    Passes 2 and 3 re-read their inputs from L1/L2 and recompute bit-identically.
    Only pass 3 reads ``residual`` after pass 1 and each chunk reads it before
    storing that chunk, so ``out`` may be ``residual``. Lanes past ``hidden``
    load zeros and contribute nothing to any sum.

    Pass 1 is unrolled over its chunks (the row's DRAM reads all in flight at
    once). ``UNROLL`` 0: so are passes 2-4 (the most registers: ptxas, sm_90,
    MoE 2816 at 1024 x 4 warps: 105). ``UNROLL`` n >= 1: passes 2-4 are loops
    unrolled n chunks at a time (1: rolled; MoE 1024 x 4: 74 registers), so
    more rows fit on an SM, at the cost of re-reads (and pass 3's ``residual``
    reads from DRAM) issued n chunks at a time. Every lane adds its chunks in
    the same order either way: the results are the same bits.

    Eviction hints of the activations' reads: ``REREAD_EVICT`` where a later
    pass reads them again (passes 1 and 2), ``LAST_EVICT`` for their last
    reads (pass 3, and ``h`` in pass 4); "" for none. ``PREFETCH_RES`` ("L1",
    "L2"; "": none): the row's residual, first read in pass 3, prefetched into
    that cache level before pass 1 by ``PREFETCH_LANES`` lanes."""
    wait_for_previous_grid(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * x_stride
    x2_row = x2_ptr + row * x2_stride
    res_row = res_ptr + row * res_stride
    prefetch_lines(res_row, hidden, NUM_CHUNKS * CHUNK, PREFETCH_LANES, PREFETCH_RES)
    out_row = out_ptr + row * hidden
    next_row = next_ptr + row * hidden
    lanes = tl.arange(0, CHUNK)
    scalar = tl.load(scalar_ptr).to(tl.float32)

    sum_a = tl.zeros([CHUNK], dtype=tl.float32)
    sum_b = tl.zeros([CHUNK], dtype=tl.float32)
    # Unrolled whatever UNROLL says: all of the row's first DRAM reads in flight
    # at once (rolling this pass saved 2 of 76 registers, sm_90, MoE 1024 x 4).
    for c in tl.static_range(NUM_CHUNKS):
        sum_a, sum_b = _input_sums_chunk(x_row, x2_row, c * CHUNK + lanes, hidden, sum_a, sum_b, MODE, REREAD_EVICT)
    inv_a = _row_inv_rms(sum_a, hidden, eps)
    inv_b = _row_inv_rms(sum_b, hidden, eps)

    inv_c = inv_a  # read by MoE layers only
    if MODE == 1:
        sum_c = tl.zeros([CHUNK], dtype=tl.float32)
        if UNROLL == 0:
            for c in tl.static_range(NUM_CHUNKS):
                sum_c = _branch_sum_sums_chunk(x_row, x2_row, w_a_ptr, w_b_ptr, c * CHUNK + lanes, hidden,
                                               inv_a, inv_b, sum_c, REREAD_EVICT)
        else:
            for c in tl.range(0, NUM_CHUNKS, loop_unroll_factor=UNROLL):
                sum_c = _branch_sum_sums_chunk(x_row, x2_row, w_a_ptr, w_b_ptr, c * CHUNK + lanes, hidden,
                                               inv_a, inv_b, sum_c, REREAD_EVICT)
        inv_c = _row_inv_rms(sum_c, hidden, eps)

    sum_h = tl.zeros([CHUNK], dtype=tl.float32)
    if UNROLL == 0:
        for c in tl.static_range(NUM_CHUNKS):
            sum_h = _store_h_chunk(x_row, x2_row, res_row, out_row, w_a_ptr, w_b_ptr, w_c_ptr, c * CHUNK + lanes,
                                   hidden, inv_a, inv_b, inv_c, scalar, sum_h, MODE, BF16_RNE_BY_BITS,
                                   LAST_EVICT)
    else:
        for c in tl.range(0, NUM_CHUNKS, loop_unroll_factor=UNROLL):
            sum_h = _store_h_chunk(x_row, x2_row, res_row, out_row, w_a_ptr, w_b_ptr, w_c_ptr, c * CHUNK + lanes,
                                   hidden, inv_a, inv_b, inv_c, scalar, sum_h, MODE, BF16_RNE_BY_BITS,
                                   LAST_EVICT)
    inv_h = _row_inv_rms(sum_h, hidden, eps)

    # Pass 4 reads h as other threads of this program stored it: the barrier
    # orders those stores before these loads.
    tl.debug_barrier()
    if UNROLL == 0:
        for c in tl.static_range(NUM_CHUNKS):
            _store_next_chunk(out_row, next_row, w_next_ptr, c * CHUNK + lanes, hidden, inv_h, BF16_RNE_BY_BITS,
                              LAST_EVICT)
    else:
        for c in tl.range(0, NUM_CHUNKS, loop_unroll_factor=UNROLL):
            _store_next_chunk(out_row, next_row, w_next_ptr, c * CHUNK + lanes, hidden, inv_h, BF16_RNE_BY_BITS,
                              LAST_EVICT)


@triton.jit
def _segment_cols(start, SEG: tl.constexpr, LANES: tl.constexpr):
    """Columns ``[start, start + SEG)`` as a ``[LANES, SEG // LANES]`` tile (lane
    ``j`` holds ``SEG // LANES`` adjacent columns)."""
    VEC: tl.constexpr = SEG // LANES
    return start + tl.arange(0, LANES)[:, None] * VEC + tl.arange(0, VEC)[None, :]


@triton.jit
def _stream_load(ptrs, mask, ACT_CACHE: tl.constexpr):
    """An activation load: with ``ACT_CACHE`` "" cached in L1 with the
    ``evict_first`` hint, else with that cache modifier (".cg": in L2 only,
    meant to leave the SM's L1 to the weights that every row reads)."""
    if ACT_CACHE == "":
        return tl.load(ptrs, mask=mask, other=0.0, eviction_policy="evict_first")
    else:
        return tl.load(ptrs, mask=mask, other=0.0, cache_modifier=ACT_CACHE)


@triton.jit
def _segment_inputs(
    x_row, x2_row, res_row, start, hidden, ok, SEG: tl.constexpr, LANES: tl.constexpr, MODE: tl.constexpr,
    ACT_CACHE: tl.constexpr,
):
    """Issue one segment's activation loads (``ok``: the row exists), in the
    activation dtype: a prefetch, converted where it is used."""
    cols = _segment_cols(start, SEG, LANES)
    mask = (cols < hidden) & ok
    x = _stream_load(x_row + cols, mask, ACT_CACHE)
    x2 = x
    if MODE == 1:
        x2 = _stream_load(x2_row + cols, mask, ACT_CACHE)
    res = _stream_load(res_row + cols, mask, ACT_CACHE)
    return x, x2, res


@triton.jit
def _prefetch_row(
    x_ptr, x2_ptr, res_ptr, row, n_rows, hidden, x_stride, x2_stride, res_stride,
    SEG0: tl.constexpr, SEG1: tl.constexpr, SEG2: tl.constexpr, LANES: tl.constexpr, MODE: tl.constexpr,
    ACT_CACHE: tl.constexpr,
):
    """Issue the loads of ``row``'s segments (none past ``n_rows``): ``x``,
    the MoE branch input ``x2`` (``x`` again otherwise) and ``residual`` of
    each segment; an absent segment repeats the first."""
    # int64 (rows * stride passes 2**31 at ~400k tokens of hidden 5376); a
    # product, not .to(): the interpreter hands loop indices over as ints.
    row64 = row * tl.full([], 1, tl.int64)
    ok = row < n_rows
    x_row = x_ptr + row64 * x_stride
    x2_row = x2_ptr + row64 * x2_stride
    res_row = res_ptr + row64 * res_stride
    x0, y0, res0 = _segment_inputs(x_row, x2_row, res_row, 0, hidden, ok, SEG0, LANES, MODE, ACT_CACHE)
    x1, y1, res1, x2, y2, res2 = x0, y0, res0, x0, y0, res0
    if SEG1 > 0:
        x1, y1, res1 = _segment_inputs(x_row, x2_row, res_row, SEG0, hidden, ok, SEG1, LANES, MODE, ACT_CACHE)
    if SEG2 > 0:
        x2, y2, res2 = _segment_inputs(x_row, x2_row, res_row, SEG0 + SEG1, hidden, ok, SEG2, LANES, MODE,
                                       ACT_CACHE)
    return x0, y0, res0, x1, y1, res1, x2, y2, res2


@triton.jit
def _segment_input_squares(x, x2):
    """A segment's lanes' sums of squares of ``x`` and ``x2`` (fp32)."""
    x = x.to(tl.float32)
    x2 = x2.to(tl.float32)
    return tl.sum(x * x, axis=1), tl.sum(x2 * x2, axis=1)


@triton.jit
def _segment_branches(x, x2, w_a_ptr, w_b_ptr, start, hidden, inv_a, inv_b, SEG: tl.constexpr,
                      LANES: tl.constexpr, MODE: tl.constexpr):
    """A segment's normalized input, fp32, unrounded: MoE ``rmsnorm(h1, w1) +
    rmsnorm(h2, w2)``, else ``x * inv_a * w_a``; and its lanes' sums of squares
    (MoE only: the input of the third norm)."""
    cols = _segment_cols(start, SEG, LANES)
    col_ok = cols < hidden
    pre = x.to(tl.float32) * inv_a * _load_weight(w_a_ptr, cols, col_ok)
    if MODE == 1:
        pre = pre + x2.to(tl.float32) * inv_b * _load_weight(w_b_ptr, cols, col_ok)
    return pre, tl.sum(pre * pre, axis=1)


@triton.jit
def _segment_h(pre, res, w_c_ptr, out_row, start, hidden, inv_c, scalar, SEG: tl.constexpr,
               LANES: tl.constexpr, MODE: tl.constexpr, BF16_RNE_BY_BITS: tl.constexpr):
    """Store a segment of ``h`` (rounded at the layer kind's points, as the
    row kernel); return it (fp32 of the stored values) and its lanes' sums of squares."""
    cols = _segment_cols(start, SEG, LANES)
    col_ok = cols < hidden
    act = out_row.dtype.element_ty
    res = res.to(tl.float32)
    if MODE == 1:
        h = round_to((pre * inv_c * _load_weight(w_c_ptr, cols, col_ok) + res) * scalar, act, BF16_RNE_BY_BITS)
    elif MODE == 2:
        summed = round_to(round_to(pre, act, BF16_RNE_BY_BITS) + res, act, BF16_RNE_BY_BITS)
        h = round_to(summed * scalar, act, BF16_RNE_BY_BITS)
    else:
        h = round_to((pre + res) * scalar, act, BF16_RNE_BY_BITS)
    tl.store(out_row + cols, h.to(act), mask=col_ok)
    return h, tl.sum(h * h, axis=1)


@triton.jit
def _segment_next(h, w_next_ptr, next_row, start, hidden, inv_h, SEG: tl.constexpr, LANES: tl.constexpr,
                  BF16_RNE_BY_BITS: tl.constexpr):
    cols = _segment_cols(start, SEG, LANES)
    col_ok = cols < hidden
    act = next_row.dtype.element_ty
    next_in = h * inv_h * _load_weight(w_next_ptr, cols, col_ok)
    tl.store(next_row + cols, round_to(next_in, act, BF16_RNE_BY_BITS).to(act), mask=col_ok)


@triton.jit(do_not_specialize=["n_rows"])
def _end_of_layer_norm_persistent_kernel(
    x_ptr,
    x2_ptr,
    res_ptr,
    scalar_ptr,
    w_a_ptr,
    w_b_ptr,
    w_c_ptr,
    w_next_ptr,
    out_ptr,
    next_ptr,
    n_rows,
    hidden,
    x_stride,
    x2_stride,
    res_stride,
    eps,
    MODE: tl.constexpr,
    SEG0: tl.constexpr,
    SEG1: tl.constexpr,
    SEG2: tl.constexpr,
    LANES: tl.constexpr,
    BF16_RNE_BY_BITS: tl.constexpr,
    ACT_CACHE: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    """The row kernel's computation in a fixed grid: program ``p`` takes rows
    ``p, p + P, ...`` one at a time, held in registers as up to three
    power-of-two segments of ``SEG0``/``SEG1``/``SEG2`` columns (0: none; a
    row like 2816 = 2048 + 512 + 256 has no idle lanes), each split over the
    same ``LANES`` lanes so that the segments' partial sums add lane by lane.
    It issues the loads of its next row before the reductions of this one
    (so a row's DRAM reads are in flight while it reduces and stores), and
    computes each element once: the chunked kernel recomputes its passes
    from re-read inputs, which left it issue-bound (Nsight Compute, MoE 2816
    x 4096: 69% SM throughput, 44% DRAM). The MoE branches' two sums of
    squares go through one cross-thread reduction. A row's ``residual`` is
    read (prefetched) before its ``h`` is stored, and only its program writes
    it, so ``out`` may be ``residual``. ``ACT_CACHE``: the activation loads'
    cache modifier (:func:`_stream_load`)."""
    wait_for_previous_grid(USE_PDL)
    first = tl.program_id(0)
    step = tl.num_programs(0)
    scalar = tl.load(scalar_ptr).to(tl.float32)
    x0, y0, res0, x1, y1, res1, x2, y2, res2 = _prefetch_row(
        x_ptr, x2_ptr, res_ptr, first, n_rows, hidden, x_stride, x2_stride, res_stride, SEG0, SEG1, SEG2, LANES, MODE,
        ACT_CACHE,
    )
    # One stage: the prefetch is written out here.
    for row in tl.range(first, n_rows, step, num_stages=1):
        n_x0, n_y0, n_res0, n_x1, n_y1, n_res1, n_x2, n_y2, n_res2 = _prefetch_row(
            x_ptr, x2_ptr, res_ptr, row + step, n_rows, hidden, x_stride, x2_stride, res_stride,
            SEG0, SEG1, SEG2, LANES, MODE, ACT_CACHE,
        )
        r64 = row * tl.full([], 1, tl.int64)
        out_row = out_ptr + r64 * hidden
        next_row = next_ptr + r64 * hidden

        # The layer's input norms: one cross-thread reduction (paired for MoE).
        lane_a, lane_b = _segment_input_squares(x0, y0)
        if SEG1 > 0:
            lane_a1, lane_b1 = _segment_input_squares(x1, y1)
            lane_a += lane_a1
            lane_b += lane_b1
        if SEG2 > 0:
            lane_a2, lane_b2 = _segment_input_squares(x2, y2)
            lane_a += lane_a2
            lane_b += lane_b2
        if MODE == 1:
            sum_a, sum_b = paired_sums(lane_a, lane_b, 0)
        else:
            sum_a = tl.sum(lane_a, axis=0)
            sum_b = sum_a
        inv_a = tl.rsqrt(sum_a / hidden + eps)
        inv_b = tl.rsqrt(sum_b / hidden + eps)

        pre0, lane_c = _segment_branches(x0, y0, w_a_ptr, w_b_ptr, 0, hidden, inv_a, inv_b, SEG0, LANES, MODE)
        pre1, pre2 = pre0, pre0
        if SEG1 > 0:
            pre1, lane_c1 = _segment_branches(x1, y1, w_a_ptr, w_b_ptr, SEG0, hidden, inv_a, inv_b, SEG1,
                                              LANES, MODE)
            lane_c += lane_c1
        if SEG2 > 0:
            pre2, lane_c2 = _segment_branches(x2, y2, w_a_ptr, w_b_ptr, SEG0 + SEG1, hidden, inv_a, inv_b,
                                              SEG2, LANES, MODE)
            lane_c += lane_c2
        inv_c = inv_a  # read by MoE layers only
        if MODE == 1:
            inv_c = tl.rsqrt(tl.sum(lane_c, axis=0) / hidden + eps)

        h0, lane_h = _segment_h(pre0, res0, w_c_ptr, out_row, 0, hidden, inv_c, scalar, SEG0, LANES, MODE,
                                BF16_RNE_BY_BITS)
        h1, h2 = h0, h0
        if SEG1 > 0:
            h1, lane_h1 = _segment_h(pre1, res1, w_c_ptr, out_row, SEG0, hidden, inv_c, scalar, SEG1, LANES,
                                     MODE, BF16_RNE_BY_BITS)
            lane_h += lane_h1
        if SEG2 > 0:
            h2, lane_h2 = _segment_h(pre2, res2, w_c_ptr, out_row, SEG0 + SEG1, hidden, inv_c, scalar, SEG2,
                                     LANES, MODE, BF16_RNE_BY_BITS)
            lane_h += lane_h2
        # The next layer's input norm of the stored (rounded) h, from registers.
        inv_h = tl.rsqrt(tl.sum(lane_h, axis=0) / hidden + eps)
        _segment_next(h0, w_next_ptr, next_row, 0, hidden, inv_h, SEG0, LANES, BF16_RNE_BY_BITS)
        if SEG1 > 0:
            _segment_next(h1, w_next_ptr, next_row, SEG0, hidden, inv_h, SEG1, LANES, BF16_RNE_BY_BITS)
        if SEG2 > 0:
            _segment_next(h2, w_next_ptr, next_row, SEG0 + SEG1, hidden, inv_h, SEG2, LANES,
                          BF16_RNE_BY_BITS)

        x0, y0, res0 = n_x0, n_y0, n_res0
        x1, y1, res1 = n_x1, n_y1, n_res1
        x2, y2, res2 = n_x2, n_y2, n_res2


# --------------------------------------------------------------------------- launch


class EndOfLayerLaunch(NamedTuple):
    """How to launch: ``kernel`` "row" holds ``rows_per_program`` whole rows of
    ``block_h`` lanes (a power of two >= hidden) per program; "chunked" walks one
    row per program ``block_h`` (a power of two) columns at a time, its passes
    after the first unrolled over all chunks (``unroll`` 0) or loops unrolled
    ``unroll`` chunks at a time (1: rolled; fewer registers, more rows in
    flight). The row kernel takes ``unroll`` 0 only. "persistent": one row at
    a time in ``programs_per_sm`` programs per SM (capped at the row count),
    each prefetching its next row; ``block_h`` either ``hidden`` itself, held
    as up to three power-of-two segments (no idle lanes), or a power of two
    >= hidden. ``act_cache`` (persistent only): the activation loads' cache
    modifier, "" (L1, hinted ``evict_first``) or ".cg" (L2 only, meant to
    leave the SM's L1 to the weights every row reads). ``stream_hints``
    (chunked only): the activations' reads hinted ``evict_last`` where a later
    pass reads them again and ``evict_first`` where they are read for the
    last time (so that a row's re-reads find it in L2 while other rows stream
    through). ``prefetch`` (chunked only; "L1" or "L2", "": none): the residual
    row prefetched into that cache level before the first pass (the third
    reads it first); not under Triton's interpreter."""

    block_h: int
    rows_per_program: int
    num_warps: int
    kernel: str = "row"
    unroll: int = 0
    programs_per_sm: int = 0
    act_cache: str = ""
    stream_hints: bool = False
    prefetch: str = ""


# Row kernel, measured on the H200 (torch 2.11, triton 3.6, bf16;
# benchmarks/sweep_end_of_layer_norm.py, 2026-11-29,
# results/sweep_end_of_layer_norm.json as of commit 078f471, us per call under CUDA-graph replay):
# from 4096 rows, 8 warps per 4096-lane row beat 16 at 2816 and 2560 in that
# sweep (MoE 2816 x 4096: 38.1-39.3 vs 51.2), but benchmark_end_of_layer_norm.py
# the same day measured that launch's MoE 2816 at 52.8 us (4096 rows) and 199.1 us
# (16384), 52-55% of copy bandwidth: whole rows in registers leave few rows in
# flight per SM. The tables below now take every Gemma-4 width off the row kernel
# well before 4096 rows, so the row kernel keeps one warp rule at every row count.

# Chunked kernel, measured on the H200 (torch 2.11, triton 3.6, bf16; sweep_end_of_layer_norm.py,
# results/sweep_end_of_layer_norm.json, second sweep 2026-11-29 (session 3); copy 4.07 TB/s; us,
# the chosen launch vs the previous table (unrolled passes) vs torch.compile):
#   MoE 2816: 512 rows 1024 cols x 4 warps unrolled 7.2; from 1024 rows the same with rolled passes
#     (unroll 1: 74 registers instead of 105, more rows in flight per SM): 1024 12.5 vs 13.1;
#     4096 38.4 vs 39.7 (compile 45.5); 8192 69.7 vs 73.4; 16384 135.0 vs 139.9 (compile 163.9), 83%;
#   dense 5376: 512 2048 x 8 unrolled 7.1-7.2; from 1024 1024 x 8 rolled: 1024 13.3 vs 14.0;
#     4096 48.2 vs 48.9 (compile 50.4); 8192 93.2 vs 92.7; 16384 179.9 vs 181.5 (compile 188.9);
#   E4B 2560: 512 1024 x 8 rolled 4.4 vs the row kernel's 4.6; from 1024 1024 x 4 unrolled two
#     chunks at a time: 1024 7.0 vs 7.2; 4096 23.4 vs 24.4 (compile 31.4); 16384 84.0 vs 85.3;
#   E2B 1536 (first sweep): 1024 x 4 at 16384 rows 52.4-54.6 vs the row kernel's 55.0, 4096 15.7 vs
#     14.2-14.4 (row stays).
# 1 row: the row kernel. hidden -> buckets (from this many rows, launch), the last one reached
# wins; other widths: PREFILL_DEFAULT.
#
# Persistent kernel (session 6 of 2026-11-29, same machine and versions; sweep_end_of_layer_norm.py
# --kernels persistent, results/sweep_end_of_layer_norm_persistent.json, copy 4.22 TB/s; us, best vs
# the table then, each candidate alone): MoE 2816, exact rows (2048 + 512 + 256) in 8 warps, 2 programs
# per SM, first at every size: 1024 11.45 vs 12.40; 4096 36.15 vs 38.58 (compile 45.48); 8192 67.35
# vs 70.22; 16384 128.71 vs 133.94 (85.0% of copy). Nsight Compute had found the chunked kernel
# issue-bound there (69-80% SM throughput, 44-57% DRAM: it recomputes each pass from re-read inputs).
# Dense 5376: the chunks stay (48.28 at 4096; persistent no better). E2B/E4B: within the run-to-run
# spread of one launch (2-4% between its two timings), so unchanged.
#
# Session 7 (2026-11-30, same machine and versions; sweep_end_of_layer_norm.py --kernels
# persistent, results/sweep_end_of_layer_norm_session7.json, copy 4.04 TB/s; each launch alone,
# us, candidate and repeat): the MoE persistent launch with its activation loads cached in L2 only
# (act_cache ".cg", meant to leave L1 to the four weights each row reads; the triple norm's kernels
# gained nothing from it, so why it helps here is not established) vs the table: 4096 35.44 /
# 34.78-35.33 with 4 warps x 3 per SM vs 36.15; 8192 65.63-65.76 vs 66.70; 16384 126.66-127.05 vs
# 128.39; 1024 11.65 vs 11.55 (no gain: the table takes it from 4096 rows). Dense 5376 and the
# triple norm (sweep_triple_rmsnorm, same run): within 0.3%, unchanged. Also tried that session
# and not kept (numbers in benchmarks/notes_issue6.md): the persistent kernel's weights loaded once
# per program, and its row loads software-pipelined through shared memory.
#
# Session 8 (2026-11-30, same machine and versions; benchmarks/sweep_in_context.py,
# results/sweep_in_context.json): each launch timed as the benchmarks time it, in
# harness.LAYOUTS memory layouts with the input sets rotated past the L2, at row counts the
# benchmarks had skipped. torch.compile beat the table for the dense 31B at 192-1024 rows
# (us, table vs compile: 192 4.74 vs 4.40, 384 6.93 vs 5.61, 768 11.46 vs 10.75, 1024 13.39
# vs 12.84) and for the MoE at 384 (6.92 vs 6.45). Inductor's kernel there (its generated
# source, read on the device) walks the row in 2048-column chunks in 16 warps and hints its
# loads: evict_last where a later pass reads again, evict_first for the last read. With those
# hints (``stream_hints``) and a warp count that keeps every row resident in one wave (the
# H200's 132 SMs hold 4 programs of 2048 x 8 warps each, 8 of 2048 x 4), us, chosen vs
# compile: dense 192 row of 8192 lanes in 16 warps 4.14 vs 4.47 (first run; 256: 4.38 vs
# 4.67); 384 2048 x 8 with hints 5.62 vs 5.61 (level: no candidate beat Inductor there);
# 512 6.67 vs 6.91; 768 2048 x 4 with hints 9.49 vs 10.75; 1024 12.19 vs
# 12.84; 1536 2048 x 4 20.08 vs 20.88; 3072 35.72 vs 38.79. MoE 384: 1024 x 4 with hints 5.72
# vs 6.45 (512: 6.80 vs 6.93 without; at 768 the hints lost, 11.81 vs 8.59). The bucket edges
# at 264 and 529 rows are where the 2048-column launches stop fitting in one wave.
#
# Session 9 (2026-11-30, same machine and versions; sweep_in_context.py, results/
# sweep_in_context_segmented_eol_31B.json and ..._26B.json): the chunked passes over whole
# chunks and exact power-of-two tails (no masked lane; the triple norm's "segmented" kernel,
# which won there) gained 1-3% at most (dense 768 rows 9.30 vs 9.57, 1024 12.00 vs 12.18,
# 2048 25.07 vs 25.26; MoE 16384 127.66 vs 128.90), lost at 192-512 rows (dense 384 6.13 vs
# 5.65) and at 1024-8192 for the MoE (4096 39.38 vs 35.40), so it was not kept (its code:
# commit c555f57).
#
# Session 10 (2026-11-30, same versions; sweep_in_context.py, results/
# sweep_in_context_eol_prefetch.json, copy 4.22 TB/s; the GPU drew its 700 W limit at the
# large sizes and its SM clock moved between 1365 and 1980 MHz, reaching every candidate
# alike through the interleaved turns): the chunked kernel with the residual row prefetched
# before pass 1 (``prefetch``; pass 3 is its first read, two row reductions in). us in
# context, chosen vs the table then vs torch.compile: MoE 2816, 1024 x 4 unrolled, prefetch
# into L2: 4096 34.66 vs 35.41 (persistent) vs 45.55, 8192 63.92 vs 66.74 vs 84.64, 16384
# 124.87 (L1: 123.06) vs 132.33 vs 166.91; at 2048 rows the persistent kernel stays (19.79
# vs 20.40; without the prefetch that chunked launch took 22.04). Dense 5376: no gain from
# the prefetch (4096 rows, 2048 x 4 unrolled: 48.59 vs 46.91 without), but 2048 x 4 unrolled
# with eviction hints beat the rolled 1024 x 8 from 4096 rows: 46.72 vs 47.79, 88.92 vs
# 93.16, 172.06 vs 180.34 (compile 50.12, 96.47, 189.25). At 384-2048 rows the prefetch lost
# (results/sweep_in_context_prefetch_mid.json: dense 384 6.36 vs 5.71, MoE 768 8.85 vs 8.63).
# The benchmark with this table (results/end_of_layer_norm_prefill_session10.json): MoE
# 4096/8192/16384 34.49/63.26/118.96, dense 46.73/88.64/171.54. Capping the MoE launch's
# registers (Triton's maxnreg, for more programs per SM) was level at 80 and slower at
# 88-104 (results/sweep_in_context_eol_max_registers.json), so it is not an option here.
PREFILL_TABLE: dict[int, tuple[tuple[int, EndOfLayerLaunch], ...]] = {
    2816: (
        (257, EndOfLayerLaunch(1024, 1, 4, "chunked", stream_hints=True)),
        (529, EndOfLayerLaunch(1024, 1, 4, "chunked")),
        (1024, EndOfLayerLaunch(2816, 1, 8, "persistent", programs_per_sm=2)),
        (4096, EndOfLayerLaunch(1024, 1, 4, "chunked", prefetch="L2")),
    ),
    5376: (
        (129, EndOfLayerLaunch(8192, 1, 16)),
        (264, EndOfLayerLaunch(2048, 1, 8, "chunked", stream_hints=True)),
        (529, EndOfLayerLaunch(2048, 1, 4, "chunked", stream_hints=True)),
        (1057, EndOfLayerLaunch(2048, 1, 4, "chunked")),
        (4096, EndOfLayerLaunch(2048, 1, 4, "chunked", stream_hints=True)),
    ),
    2560: (
        (512, EndOfLayerLaunch(1024, 1, 8, "chunked", unroll=1)),
        (1024, EndOfLayerLaunch(1024, 1, 4, "chunked", unroll=2)),
    ),
    1536: ((16384, EndOfLayerLaunch(1024, 1, 4, "chunked")),),
}
PREFILL_DEFAULT = ((2048, EndOfLayerLaunch(1024, 1, 4, "chunked")),)


def row_launch(hidden: int) -> EndOfLayerLaunch:
    """The row kernel's launch for rows of ``hidden`` elements.

    ``block_h`` is ``hidden`` rounded up to a power of two. Narrow rows go
    several to a program so each program moves a few KB; wide rows get a warp
    per 256 elements (up to 32), so each thread holds 8 elements of each live
    row: ptxas (sm_90, triton 3.8) then assigns 46-75 registers and spills
    nothing at Gemma-4's widths (MoE at 2816: 75; dense at 5376: 46; PLE at
    1536/2560: 57/51), where 4-8 warps needed 140-255 (MoE at 8 warps: 140, no
    spill).
    """
    block_h = triton.next_power_of_2(hidden)
    return EndOfLayerLaunch(
        block_h=block_h,
        rows_per_program=max(1, min(16, 2048 // block_h)),
        num_warps=min(32, max(4, block_h // 256)),
    )


def launch_config(hidden: int, n_rows: int) -> EndOfLayerLaunch:
    """How to launch the kernels for ``n_rows`` rows of ``hidden`` elements:
    the launch (row, chunked or persistent) of the width's last bucket in
    ``PREFILL_TABLE`` that ``n_rows`` reaches (``PREFILL_DEFAULT``'s chunks
    elsewhere, for rows wider than half a chunk), else :func:`row_launch`."""
    for min_rows, launch in reversed(PREFILL_TABLE.get(hidden, PREFILL_DEFAULT)):
        if n_rows >= min_rows and hidden > launch.block_h // 2:
            return launch
    return row_launch(hidden)


# --------------------------------------------------------------------------- support checks


def _activation_problem(name: str, t: torch.Tensor, like: torch.Tensor | None) -> str | None:
    if not is_rowmajor_2d(t):
        return f"{name} must be 2-D with unit last stride, got shape {tuple(t.shape)} strides {t.stride()}"
    if like is None:
        if t.dtype not in FUSED_DTYPES:
            return f"{name} dtype {t.dtype} is not one of {FUSED_DTYPES}"
        if not triton_can_run_on(t):
            return f"{name} is on {t.device}, where Triton cannot run"
        if not 0 < t.shape[1] <= MAX_FUSED_ROW:
            return f"{name} rows of {t.shape[1]} elements (supported: 1..{MAX_FUSED_ROW})"
        return None
    if t.shape != like.shape or t.dtype != like.dtype or t.device != like.device:
        return (
            f"{name} {tuple(t.shape)} {t.dtype} on {t.device} differs from "
            f"{tuple(like.shape)} {like.dtype} on {like.device}"
        )
    return None


def _weight_problem(name: str, w: torch.Tensor, x: torch.Tensor) -> str | None:
    if w.dim() != 1 or w.shape[0] != x.shape[1] or w.stride(0) != 1:
        return f"{name} must be contiguous 1-D of length {x.shape[1]}, got {tuple(w.shape)}"
    if w.dtype not in FUSED_DTYPES:
        return f"{name} dtype {w.dtype} is not one of {FUSED_DTYPES}"
    if w.device != x.device:
        return f"{name} is on {w.device}, not {x.device}"
    return None


def _scalar_problem(scalar: torch.Tensor, x: torch.Tensor, *, same_dtype: bool) -> str | None:
    if scalar.numel() != 1 or scalar.device != x.device:
        return f"layer_scalar must be one element on {x.device}, got {tuple(scalar.shape)} on {scalar.device}"
    if scalar.dtype not in FUSED_DTYPES:
        return f"layer_scalar dtype {scalar.dtype} is not one of {FUSED_DTYPES}"
    if same_dtype and scalar.dtype != x.dtype:
        return f"layer_scalar dtype {scalar.dtype} differs from {x.dtype} (eager would promote the output)"
    return None


def _problem(
    mode: int,
    x: torch.Tensor,
    x2: torch.Tensor | None,
    residual: torch.Tensor,
    layer_scalar: torch.Tensor,
    weights: tuple[tuple[str, torch.Tensor], ...],
) -> str | None:
    problem = _activation_problem("x", x, None) or _activation_problem("residual", residual, x)
    if problem is None and x2 is not None:
        problem = _activation_problem("h_moe", x2, x)
    if problem is None:
        problem = _scalar_problem(layer_scalar, x, same_dtype=mode == PLE)
    for name, w in weights:
        problem = problem or _weight_problem(name, w, x)
    return problem


def _dense_problem(x, w_post_ff, residual, layer_scalar, w_next) -> str | None:
    return _problem(DENSE, x, None, residual, layer_scalar, (("w_post_ff", w_post_ff), ("w_next", w_next)))


def _moe_weights(w_post_ff_1, w_post_ff_2, w_post_ff, w_next) -> tuple[tuple[str, torch.Tensor], ...]:
    return ("w_post_ff_1", w_post_ff_1), ("w_post_ff_2", w_post_ff_2), ("w_post_ff", w_post_ff), ("w_next", w_next)


def _moe_problem(h_dense, w_post_ff_1, h_moe, w_post_ff_2, w_post_ff, residual, layer_scalar, w_next) -> str | None:
    weights = _moe_weights(w_post_ff_1, w_post_ff_2, w_post_ff, w_next)
    return _problem(MOE, h_dense, h_moe, residual, layer_scalar, weights)


# The most top-k rows one token's expert sum reads (Gemma-4 routes to 8).
MAX_EXPERT_ROWS = 16
# Batches up to this many tokens have their experts' rows summed by the end of
# the layer (patch moe_sum_fold). SGLang sums these with moe_sum_reduce_triton on
# sm_90+ (an fp32 sum in routing order, as the fold does: the same bits), and
# they are the decode batches, where the saved launch is most of the sum's cost.
EXPERT_SUM_FOLD_MAX_TOKENS = 32


def _moe_expert_sum_problem(
    h_dense, w_post_ff_1, expert_rows, w_post_ff_2, w_post_ff, residual, layer_scalar, w_next
) -> str | None:
    weights = _moe_weights(w_post_ff_1, w_post_ff_2, w_post_ff, w_next)
    problem = _problem(MOE, h_dense, None, residual, layer_scalar, weights)
    if problem is not None:
        return problem
    if expert_rows.dim() != 3 or not expert_rows.is_contiguous():
        return f"expert_rows must be a contiguous [T, top_k, H] tensor, got shape {tuple(expert_rows.shape)} strides {expert_rows.stride()}"
    tokens, top_k, hidden = expert_rows.shape
    if (tokens, hidden) != tuple(h_dense.shape) or expert_rows.dtype != h_dense.dtype or expert_rows.device != h_dense.device:
        return (
            f"expert_rows {tuple(expert_rows.shape)} {expert_rows.dtype} on {expert_rows.device} does not match "
            f"h_dense {tuple(h_dense.shape)} {h_dense.dtype} on {h_dense.device}"
        )
    if not 1 <= top_k <= MAX_EXPERT_ROWS:
        return f"expert_rows has {top_k} rows per token (supported: 1..{MAX_EXPERT_ROWS})"
    return None


def _ple_problem(x, w_post_ple, residual, layer_scalar, w_next) -> str | None:
    return _problem(PLE, x, None, residual, layer_scalar, (("w_post_ple", w_post_ple), ("w_next", w_next)))


def supports_dense(x, w_post_ff, residual, layer_scalar, w_next) -> bool:
    """Whether :func:`dense_end_of_layer_norm` runs on these inputs.

    Activations 2-D with unit last stride (rows may be spaced), one dtype in
    ``FUSED_DTYPES``, 1..``MAX_FUSED_ROW`` columns, on a device Triton runs on;
    weights contiguous 1-D of the row length; ``layer_scalar`` one element of
    any fused dtype. Zero rows are fine (no launch).
    """
    return _dense_problem(x, w_post_ff, residual, layer_scalar, w_next) is None


def supports_moe(h_dense, w_post_ff_1, h_moe, w_post_ff_2, w_post_ff, residual, layer_scalar, w_next) -> bool:
    """Whether :func:`moe_end_of_layer_norm` runs on these inputs (as :func:`supports_dense`)."""
    return _moe_problem(h_dense, w_post_ff_1, h_moe, w_post_ff_2, w_post_ff, residual, layer_scalar, w_next) is None


def supports_moe_expert_sum(
    h_dense, w_post_ff_1, expert_rows, w_post_ff_2, w_post_ff, residual, layer_scalar, w_next
) -> bool:
    """Whether :func:`moe_expert_sum_end_of_layer_norm` runs on these inputs: as
    :func:`supports_moe`, with ``expert_rows`` a contiguous ``[T, top_k, H]`` tensor
    (``top_k`` 1..``MAX_EXPERT_ROWS``) of ``h_dense``'s dtype and device."""
    problem = _moe_expert_sum_problem(
        h_dense, w_post_ff_1, expert_rows, w_post_ff_2, w_post_ff, residual, layer_scalar, w_next
    )
    return problem is None


def supports_ple(x, w_post_ple, residual, layer_scalar, w_next) -> bool:
    """As :func:`supports_dense`, and ``layer_scalar`` must have the activation dtype."""
    return _ple_problem(x, w_post_ple, residual, layer_scalar, w_next) is None


# --------------------------------------------------------------------------- wrappers


def _launch(
    mode: int,
    problem: str | None,
    x: torch.Tensor,
    x2: torch.Tensor | None,
    residual: torch.Tensor,
    layer_scalar: torch.Tensor,
    w_a: torch.Tensor,
    w_b: torch.Tensor | None,
    w_c: torch.Tensor | None,
    w_next: torch.Tensor,
    eps: float,
    out: torch.Tensor | None,
    launch: EndOfLayerLaunch | None,
    expert_rows: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    if problem is not None:
        raise ValueError(f"end_of_layer_norm: unsupported inputs: {problem}")
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    elif out.shape != x.shape or out.dtype != x.dtype or out.device != x.device or not out.is_contiguous():
        raise ValueError("out must be contiguous and shaped, typed and placed like the activations")
    next_in = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    n_rows, hidden = x.shape
    if n_rows == 0:
        return out, next_in
    launch = launch or (row_launch(hidden) if expert_rows else launch_config(hidden, n_rows))
    if expert_rows and launch.kernel != "row":
        raise ValueError(f"the experts' rows are summed by the row kernel only: {launch}")
    x2 = x if x2 is None else x2
    args = (
        x,
        x2,
        residual,
        layer_scalar,
        w_a,
        w_a if w_b is None else w_b,
        w_a if w_c is None else w_c,
        w_next,
        out,
        next_in,
        n_rows,
        hidden,
        x.stride(0),
        x2.stride(0),
        residual.stride(0),
        eps,
    )
    bf16_by_bits = triton_interpreting() and x.dtype == torch.bfloat16
    pdl = launch_kwargs(x, "end_of_layer", n_rows, hidden)
    if launch.kernel != "persistent" and (launch.block_h < 1 or launch.block_h & (launch.block_h - 1)):
        raise ValueError(f"block_h must be a power of two: {launch}")
    if launch.unroll < 0 or (launch.kernel == "row" and launch.unroll):
        raise ValueError(f"unroll must be >= 0, and 0 for the row kernel: {launch}")
    if launch.act_cache not in ("", ".cg") or (launch.act_cache and launch.kernel != "persistent"):
        raise ValueError(f"act_cache must be '' or '.cg', and '' except for the persistent kernel: {launch}")
    if launch.stream_hints and launch.kernel != "chunked":
        raise ValueError(f"stream_hints is an option of the chunked kernel only: {launch}")
    prefetch = prefetch_level(launch, "chunked")
    if launch.kernel == "row":
        rows = launch.rows_per_program
        if rows < 1 or rows & (rows - 1):
            raise ValueError(f"rows_per_program must be a power of two, got {rows}")
        if launch.block_h < hidden:
            raise ValueError(f"the row kernel needs block_h >= hidden ({hidden}): {launch}")
        _end_of_layer_norm_kernel[(triton.cdiv(n_rows, rows),)](
            *args, MODE=mode, ROWS=rows, BLOCK_H=launch.block_h, BF16_RNE_BY_BITS=bf16_by_bits,
            EXPERT_ROWS=expert_rows, num_warps=launch.num_warps, **pdl,
        )
    elif launch.kernel == "persistent":
        if launch.rows_per_program != 1 or launch.programs_per_sm < 1:
            raise ValueError(f"the persistent kernel takes one row at a time, programs_per_sm >= 1: {launch}")
        segments = launch_segments(hidden, launch.block_h, launch)
        seg0, seg1, seg2 = segments
        programs = min(n_rows, launch.programs_per_sm * multiprocessor_count(x))
        _end_of_layer_norm_persistent_kernel[(programs,)](
            *args, MODE=mode, SEG0=seg0, SEG1=seg1, SEG2=seg2,
            LANES=lanes_per_row(tuple(seg for seg in segments if seg), 32 * launch.num_warps, 8),
            BF16_RNE_BY_BITS=bf16_by_bits, ACT_CACHE=launch.act_cache,
            num_warps=launch.num_warps, **pdl,
        )
    elif launch.kernel == "chunked":
        if launch.rows_per_program != 1:
            raise ValueError(f"the chunked kernel takes one row per program: {launch}")
        _end_of_layer_norm_chunked_kernel[(n_rows,)](
            *args, MODE=mode, CHUNK=launch.block_h, NUM_CHUNKS=triton.cdiv(hidden, launch.block_h),
            UNROLL=launch.unroll, BF16_RNE_BY_BITS=bf16_by_bits,
            REREAD_EVICT="evict_last" if launch.stream_hints else "",
            LAST_EVICT="evict_first" if launch.stream_hints else "",
            **({} if not prefetch else dict(
                PREFETCH_RES=prefetch, PREFETCH_LANES=prefetch_lanes(hidden, residual.element_size()))),
            num_warps=launch.num_warps, **pdl,
        )
    else:
        raise ValueError(f"unknown kernel {launch.kernel!r}")
    return out, next_in


def dense_end_of_layer_norm(
    x: torch.Tensor,
    w_post_ff: torch.Tensor,
    residual: torch.Tensor,
    layer_scalar: torch.Tensor,
    w_next: torch.Tensor,
    eps: float,
    *,
    out: torch.Tensor | None = None,
    launch: EndOfLayerLaunch | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, next_in)`` of a dense layer's end, one launch.

    ``h = round((rmsnorm(x, w_post_ff) + residual) * layer_scalar)`` (fp32 inside,
    one rounding) and ``next_in = round(rmsnorm(h, w_next))`` of the rounded
    ``h``. ``x`` (the MLP output) and ``residual``: ``[T, H]``, unit last
    stride, one dtype; weights ``[H]``; ``layer_scalar`` one element, read on the
    device. ``h`` goes to ``out`` when given (may be ``residual`` itself: each
    program reads its rows before writing them). ``eps`` serves both norms.
    ``launch`` overrides :func:`launch_config` (tests, sweeps). Unsupported inputs (see
    :func:`supports_dense`) raise ``ValueError``.
    """
    problem = _dense_problem(x, w_post_ff, residual, layer_scalar, w_next)
    return _launch(
        DENSE, problem, x, None, residual, layer_scalar, w_post_ff, None, None, w_next, eps,
        out, launch,
    )


def moe_end_of_layer_norm(
    h_dense: torch.Tensor,
    w_post_ff_1: torch.Tensor,
    h_moe: torch.Tensor,
    w_post_ff_2: torch.Tensor,
    w_post_ff: torch.Tensor,
    residual: torch.Tensor,
    layer_scalar: torch.Tensor,
    w_next: torch.Tensor,
    eps: float,
    *,
    out: torch.Tensor | None = None,
    launch: EndOfLayerLaunch | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, next_in)`` of a MoE layer's end, one launch.

    ``h = round((rmsnorm(rmsnorm(h_dense, w_post_ff_1) + rmsnorm(h_moe, w_post_ff_2),
    w_post_ff) + residual) * layer_scalar)`` in fp32 with one rounding, and
    ``next_in = round(rmsnorm(h, w_next))`` of the rounded ``h``. Arguments as in
    :func:`dense_end_of_layer_norm`; ``h_dense``/``h_moe`` are the two branch outputs.
    """
    problem = _moe_problem(h_dense, w_post_ff_1, h_moe, w_post_ff_2, w_post_ff, residual, layer_scalar, w_next)
    return _launch(
        MOE, problem, h_dense, h_moe, residual, layer_scalar, w_post_ff_1, w_post_ff_2, w_post_ff, w_next, eps,
        out, launch,
    )


def moe_expert_sum_end_of_layer_norm(
    h_dense: torch.Tensor,
    w_post_ff_1: torch.Tensor,
    expert_rows: torch.Tensor,
    w_post_ff_2: torch.Tensor,
    w_post_ff: torch.Tensor,
    residual: torch.Tensor,
    layer_scalar: torch.Tensor,
    w_next: torch.Tensor,
    eps: float,
    *,
    out: torch.Tensor | None = None,
    launch: EndOfLayerLaunch | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, next_in)`` of a MoE layer's end from the experts' unsummed rows, one launch.

    ``expert_rows`` is ``[T, top_k, H]``: each token's routed-weighted expert
    outputs (what SGLang's Triton MoE runner leaves with ``defer_sum``). The
    kernel first forms the MoE output as SGLang's top-k sum does,
    ``h_moe = round(sum_k expert_rows[:, k])`` with an fp32 sum in routing
    order, then computes :func:`moe_end_of_layer_norm` of it. One launch
    instead of two (the top-k sum and the end of layer). Always the row kernel
    (:func:`row_launch`; ``launch`` must be a row launch); it is meant for the
    decode sizes, where the launch saved is most of the cost. Unsupported
    inputs (see :func:`supports_moe_expert_sum`) raise ``ValueError``.
    """
    problem = _moe_expert_sum_problem(
        h_dense, w_post_ff_1, expert_rows, w_post_ff_2, w_post_ff, residual, layer_scalar, w_next
    )
    return _launch(
        MOE, problem, h_dense, expert_rows, residual, layer_scalar, w_post_ff_1, w_post_ff_2, w_post_ff, w_next,
        eps, out, launch, expert_rows=expert_rows.shape[1] if expert_rows.dim() == 3 else 0,
    )


def ple_end_of_layer_norm(
    x: torch.Tensor,
    w_post_ple: torch.Tensor,
    residual: torch.Tensor,
    layer_scalar: torch.Tensor,
    w_next: torch.Tensor,
    eps: float,
    *,
    out: torch.Tensor | None = None,
    launch: EndOfLayerLaunch | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, next_in)`` of a PLE layer's end, one launch.

    ``h = round(round(round(rmsnorm(x, w_post_ple)) + residual) * layer_scalar)``
    (the eager ops' roundings) and ``next_in = round(rmsnorm(h, w_next))``. ``x`` is
    the per-layer projection's output, ``residual`` the stream after the FFN
    (``h`` of the PLE tail's first stretch); ``layer_scalar`` must have the
    activation dtype. Otherwise as :func:`dense_end_of_layer_norm`.
    """
    problem = _ple_problem(x, w_post_ple, residual, layer_scalar, w_next)
    return _launch(
        PLE, problem, x, None, residual, layer_scalar, w_post_ple, None, None, w_next, eps,
        out, launch,
    )


# --------------------------------------------------------------------------- references


def _rmsnorm_fp32(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps) * w.float()


def _scalar_fp32(layer_scalar: torch.Tensor) -> torch.Tensor:
    return layer_scalar.float().reshape(())


def next_input_norm_reference(h: torch.Tensor, w_next: torch.Tensor, eps: float) -> torch.Tensor:
    """The next layer's ``input_layernorm`` as its own launch: ``round(rmsnorm(h, w_next))``."""
    return _rmsnorm_fp32(h, w_next, eps).to(h.dtype)


def dense_end_of_layer_reference(x, w_post_ff, residual, layer_scalar, eps) -> torch.Tensor:
    """SGLang's ``gemma_rmsnorm_residual_scalar``: ``round((rmsnorm(x, w) + residual) * s)``, fp32 inside."""
    return ((_rmsnorm_fp32(x, w_post_ff, eps) + residual.float()) * _scalar_fp32(layer_scalar)).to(x.dtype)


def moe_end_of_layer_reference(h_dense, w_post_ff_1, h_moe, w_post_ff_2, w_post_ff, residual, layer_scalar, eps):
    """SGLang's ``gemma_dual_rmsnorm_residual_scalar``, fp32 inside, one rounding."""
    combined = _rmsnorm_fp32(h_dense, w_post_ff_1, eps) + _rmsnorm_fp32(h_moe, w_post_ff_2, eps)
    normed = _rmsnorm_fp32(combined, w_post_ff, eps)
    return ((normed + residual.float()) * _scalar_fp32(layer_scalar)).to(h_dense.dtype)


def ple_end_of_layer_reference(x, w_post_ple, residual, layer_scalar, eps) -> torch.Tensor:
    """The eager PLE tail's last three ops, each rounding its output."""
    dtype = x.dtype
    normed = _rmsnorm_fp32(x, w_post_ple, eps).to(dtype)
    summed = (normed.float() + residual.float()).to(dtype)
    return (summed.float() * _scalar_fp32(layer_scalar)).to(dtype)


def dense_end_of_layer_norm_reference(x, w_post_ff, residual, layer_scalar, w_next, eps):
    """``(h, next_in)`` as SGLang's two launches compute them (fp32 arithmetic)."""
    h = dense_end_of_layer_reference(x, w_post_ff, residual, layer_scalar, eps)
    return h, next_input_norm_reference(h, w_next, eps)


def moe_end_of_layer_norm_reference(
    h_dense, w_post_ff_1, h_moe, w_post_ff_2, w_post_ff, residual, layer_scalar, w_next, eps
):
    """``(h, next_in)`` as SGLang's two launches compute them (fp32 arithmetic)."""
    h = moe_end_of_layer_reference(h_dense, w_post_ff_1, h_moe, w_post_ff_2, w_post_ff, residual, layer_scalar, eps)
    return h, next_input_norm_reference(h, w_next, eps)


def moe_expert_sum_reference(expert_rows: torch.Tensor) -> torch.Tensor:
    """SGLang's top-k sum (``moe_sum_reduce``, routed scale 1): an fp32 sum of each
    token's ``[top_k, H]`` rows in routing order, rounded to their dtype."""
    acc = torch.zeros(expert_rows.shape[0], expert_rows.shape[2], dtype=torch.float32, device=expert_rows.device)
    for k in range(expert_rows.shape[1]):
        acc += expert_rows[:, k].float()
    return acc.to(expert_rows.dtype)


def moe_expert_sum_end_of_layer_norm_reference(
    h_dense, w_post_ff_1, expert_rows, w_post_ff_2, w_post_ff, residual, layer_scalar, w_next, eps
):
    """``(h, next_in)`` as SGLang's top-k sum and its two launches after it compute them."""
    return moe_end_of_layer_norm_reference(
        h_dense, w_post_ff_1, moe_expert_sum_reference(expert_rows), w_post_ff_2, w_post_ff, residual,
        layer_scalar, w_next, eps,
    )


def ple_end_of_layer_norm_reference(x, w_post_ple, residual, layer_scalar, w_next, eps):
    """``(h, next_in)`` as SGLang's eager ops and the next layer's norm compute them."""
    h = ple_end_of_layer_reference(x, w_post_ple, residual, layer_scalar, eps)
    return h, next_input_norm_reference(h, w_next, eps)
