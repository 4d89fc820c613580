"""Fused per-layer-embedding (PLE) tail of the Gemma-4 E2B/E4B decoder layer.

SGLang 0.5.23 runs the tail of a PLE layer as seven pointwise/norm launches
around two GEMMs (``Gemma4DecoderLayer._next_stream``)::

    h   = rmsnorm(x, w_ff) + residual              # post_feedforward_layernorm, add
    g   = gelu_tanh(gate_gemm(h)) * per_layer_input # gelu, mul
    out = (rmsnorm(proj_gemm(g), w_ple) + h) * layer_scalar  # norm, add, mul

Here the seven become three kernels, one per stretch between the GEMMs:
:func:`rmsnorm_add`, :func:`gelu_tanh_mul` and :func:`rmsnorm_add_scale`.

Rounding. Every eager op returns the activation dtype, so the eager sequence
rounds after each of the seven ops. The kernels compute in fp32 and round at
exactly those points (a round trip through the activation dtype costs no
memory traffic), so in bf16/fp16 they reproduce the eager results up to fp32
summation order and the ``exp`` approximation, i.e. at most one unit in the
last place of the activation dtype, rarely. The ``*_reference`` functions spell
out the same arithmetic with PyTorch ops in fp32. Compiled casts round to
nearest even; Triton's interpreter truncates fp32 -> bf16 casts, so under the
interpreter only, bf16 is rounded on the bit pattern first (``BF16_RNE_BY_BITS``).

Launches. Each norm runs as one of three kernels: whole rows in registers
padded to a power of two (several rows per program), whole rows held as the
power-of-two segments that add up to them ("exact": no idle lanes at 1536 or
2560), or one row walked in 1024-column chunks; ``gelu_tanh_mul`` runs as 2-D
tiles. :func:`norm_launch` and :func:`gelu_launch` pick the shape from a
static table by (row width, number of rows), measured on the H200 (see the
comment above them; no autotuning: the kernels run inside CUDA-graph
capture). The order of the fp32 sum of squares follows the launch, so the
same row may round differently in the last place at another batch size,
rarely.

``layer_scalar`` is read on the device (never ``.item()``), so a captured CUDA
graph sees the loaded value. It must have the activation dtype: the buffer is a
1-element tensor (not 0-dim), so eager ``bf16 * fp32[1]`` would promote the
whole output to fp32, which a fused kernel writing the activation dtype would
not reproduce.

Imports torch and triton only (the GPU benchmark machine has no sglang).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import triton
import triton.language as tl

from sglang_gemma4.kernels.dependent_launch import launch_kwargs, wait_for_previous_grid
from sglang_gemma4.kernels.rounding import round_to
from sglang_gemma4.kernels.row_segments import lanes_per_row, power_of_two_segments
from sglang_gemma4.kernels.support import (
    FUSED_DTYPES,
    MAX_FUSED_ROW,
    is_rowmajor_2d,
    triton_can_run_on,
    triton_interpreting,
)

# --------------------------------------------------------------------------- kernels


@triton.jit
def _norm_add_scale(
    x, inv_rms, w, r, scale_ptr, act_dtype: tl.constexpr, HAS_SCALE: tl.constexpr, BF16_RNE_BY_BITS: tl.constexpr
):
    """The eager sequence, rounding after each op: norm, + residual, then (if ``HAS_SCALE``) * scale."""
    normed = round_to(x * inv_rms * w, act_dtype, BF16_RNE_BY_BITS)
    out = round_to(normed + r, act_dtype, BF16_RNE_BY_BITS)
    if HAS_SCALE:
        out = round_to(out * tl.load(scale_ptr).to(tl.float32), act_dtype, BF16_RNE_BY_BITS)
    return out


@triton.jit(do_not_specialize=["n_rows"])
def _rmsnorm_add_row_kernel(
    x_ptr,
    weight_ptr,
    residual_ptr,
    scale_ptr,
    out_ptr,
    n_rows,
    n_cols,
    x_row_stride,
    residual_row_stride,
    out_row_stride,
    eps,
    HAS_SCALE: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
    ACT_EVICT: tl.constexpr,
    W_EVICT: tl.constexpr,
    BF16_RNE_BY_BITS: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    """``ROWS`` whole rows per program, held in registers: each element is loaded once.
    ``ACT_EVICT``/``W_EVICT``: eviction hints of the activation and weight loads ("" for none)."""
    wait_for_previous_grid(USE_PDL)
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    col_ok = cols < n_cols
    mask = (rows < n_rows)[:, None] & col_ok[None, :]
    rows64 = rows.to(tl.int64)[:, None]
    act_dtype = out_ptr.dtype.element_ty

    x = tl.load(x_ptr + rows64 * x_row_stride + cols[None, :], mask=mask, other=0.0, eviction_policy=ACT_EVICT)
    r = tl.load(
        residual_ptr + rows64 * residual_row_stride + cols[None, :], mask=mask, other=0.0, eviction_policy=ACT_EVICT
    )
    w = tl.load(weight_ptr + cols, mask=col_ok, other=0.0, eviction_policy=W_EVICT).to(tl.float32)[None, :]
    x = x.to(tl.float32)
    inv_rms = tl.rsqrt(tl.sum(x * x, axis=1) / n_cols + eps)[:, None]
    out = _norm_add_scale(x, inv_rms, w, r.to(tl.float32), scale_ptr, act_dtype, HAS_SCALE, BF16_RNE_BY_BITS)
    tl.store(out_ptr + rows64 * out_row_stride + cols[None, :], out.to(act_dtype), mask=mask)


@triton.jit
def _segment_loads(
    x_ptr,
    weight_ptr,
    residual_ptr,
    rows64,
    row_ok,
    x_row_stride,
    residual_row_stride,
    START: tl.constexpr,
    SEG: tl.constexpr,
    LANES: tl.constexpr,
    ACT_EVICT: tl.constexpr,
    W_EVICT: tl.constexpr,
):
    """Columns ``[START, START + SEG)`` of the program's rows as ``[ROWS, LANES,
    SEG // LANES]`` tiles, lane ``j`` holding ``SEG // LANES`` adjacent columns:
    the columns, ``x`` and the weight (fp32) and the residual (as stored)."""
    VEC: tl.constexpr = SEG // LANES
    cols = START + tl.arange(0, LANES)[None, :, None] * VEC + tl.arange(0, VEC)[None, None, :]
    x = tl.load(x_ptr + rows64 * x_row_stride + cols, mask=row_ok, other=0.0, eviction_policy=ACT_EVICT)
    r = tl.load(residual_ptr + rows64 * residual_row_stride + cols, mask=row_ok, other=0.0, eviction_policy=ACT_EVICT)
    # Loaded once per row of the tile (the repeats hit L1), in the activations'
    # full shape: a [1, LANES, VEC] load gets a register layout of its own, and
    # broadcasting it over the rows then goes through shared memory.
    w = tl.load(weight_ptr + (cols + 0 * rows64), eviction_policy=W_EVICT)
    return cols, x.to(tl.float32), w.to(tl.float32), r


@triton.jit(do_not_specialize=["n_rows"])
def _rmsnorm_add_segmented_kernel(
    x_ptr,
    weight_ptr,
    residual_ptr,
    scale_ptr,
    out_ptr,
    n_rows,
    n_cols,
    x_row_stride,
    residual_row_stride,
    out_row_stride,
    eps,
    HAS_SCALE: tl.constexpr,
    ROWS: tl.constexpr,
    SEG0: tl.constexpr,
    SEG1: tl.constexpr,
    LANES: tl.constexpr,
    ACT_EVICT: tl.constexpr,
    W_EVICT: tl.constexpr,
    BF16_RNE_BY_BITS: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    """``ROWS`` whole rows per program in registers, like the row kernel, but a
    row of ``n_cols = SEG0 + SEG1`` columns (powers of two, ``SEG1`` 0: none) is
    held as two exact segments: no idle lanes (1536 = 1024 + 512 instead of
    2048 lanes). Both segments are split over the same ``LANES`` lanes, so their
    sums of squares add lane by lane in registers and each row costs one
    cross-thread reduction. Other arguments as the row kernel's."""
    wait_for_previous_grid(USE_PDL)
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = (rows < n_rows)[:, None, None]
    rows64 = rows.to(tl.int64)[:, None, None]
    act_dtype = out_ptr.dtype.element_ty

    cols0, x0, w0, r0 = _segment_loads(
        x_ptr, weight_ptr, residual_ptr, rows64, row_ok, x_row_stride, residual_row_stride,
        0, SEG0, LANES, ACT_EVICT, W_EVICT,
    )
    lane_sum_sq = tl.sum(x0 * x0, axis=2)
    if SEG1 > 0:
        cols1, x1, w1, r1 = _segment_loads(
            x_ptr, weight_ptr, residual_ptr, rows64, row_ok, x_row_stride, residual_row_stride,
            SEG0, SEG1, LANES, ACT_EVICT, W_EVICT,
        )
        lane_sum_sq += tl.sum(x1 * x1, axis=2)
    inv_rms = tl.rsqrt(tl.sum(lane_sum_sq, axis=1) / n_cols + eps)[:, None, None]

    out0 = _norm_add_scale(x0, inv_rms, w0, r0.to(tl.float32), scale_ptr, act_dtype, HAS_SCALE, BF16_RNE_BY_BITS)
    tl.store(out_ptr + rows64 * out_row_stride + cols0, out0.to(act_dtype), mask=row_ok)
    if SEG1 > 0:
        out1 = _norm_add_scale(x1, inv_rms, w1, r1.to(tl.float32), scale_ptr, act_dtype, HAS_SCALE, BF16_RNE_BY_BITS)
        tl.store(out_ptr + rows64 * out_row_stride + cols1, out1.to(act_dtype), mask=row_ok)


@triton.jit(do_not_specialize=["n_rows"])
def _rmsnorm_add_looped_kernel(
    x_ptr,
    weight_ptr,
    residual_ptr,
    scale_ptr,
    out_ptr,
    n_rows,
    n_cols,
    x_row_stride,
    residual_row_stride,
    out_row_stride,
    eps,
    HAS_SCALE: tl.constexpr,
    CHUNK: tl.constexpr,
    NUM_CHUNKS: tl.constexpr,
    ACT_EVICT: tl.constexpr,
    W_EVICT: tl.constexpr,
    BF16_RNE_BY_BITS: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    """One row per program, ``CHUNK`` columns at a time, in two passes: the sum of
    squares of ``x``, then the outputs. Pass 2 re-reads ``x`` from L1, so DRAM
    sees each element once; no lanes idle when ``CHUNK`` divides the row.
    Arguments as the row kernel's (``n_rows`` is the grid here)."""
    wait_for_previous_grid(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    lanes = tl.arange(0, CHUNK)
    act_dtype = out_ptr.dtype.element_ty
    x_row = x_ptr + row * x_row_stride

    sum_sq = tl.zeros([CHUNK], dtype=tl.float32)
    for c in tl.static_range(NUM_CHUNKS):
        cols = c * CHUNK + lanes
        x = tl.load(x_row + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
        sum_sq += x * x
    inv_rms = tl.rsqrt(tl.sum(sum_sq, axis=0) / n_cols + eps)

    for c in tl.static_range(NUM_CHUNKS):
        cols = c * CHUNK + lanes
        col_ok = cols < n_cols
        x = tl.load(x_row + cols, mask=col_ok, other=0.0, eviction_policy=ACT_EVICT).to(tl.float32)
        r = tl.load(residual_ptr + row * residual_row_stride + cols, mask=col_ok, other=0.0, eviction_policy=ACT_EVICT)
        w = tl.load(weight_ptr + cols, mask=col_ok, other=0.0, eviction_policy=W_EVICT).to(tl.float32)
        out = _norm_add_scale(x, inv_rms, w, r.to(tl.float32), scale_ptr, act_dtype, HAS_SCALE, BF16_RNE_BY_BITS)
        tl.store(out_ptr + row * out_row_stride + cols, out.to(act_dtype), mask=col_ok)


@triton.jit(do_not_specialize=["n_rows"])
def _gelu_tanh_mul_kernel(
    gate_ptr,
    ple_ptr,
    out_ptr,
    n_rows,
    n_cols,
    gate_row_stride,
    ple_row_stride,
    out_row_stride,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_COLS: tl.constexpr,
    ACT_EVICT: tl.constexpr,
    BF16_RNE_BY_BITS: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    wait_for_previous_grid(USE_PDL)
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.program_id(1) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    rows64 = rows.to(tl.int64)[:, None]
    act_dtype = out_ptr.dtype.element_ty

    # ple may be a column slice of per_layer_inputs[T, L, P]: read through its row stride, no copy.
    gate = tl.load(gate_ptr + rows64 * gate_row_stride + cols[None, :], mask=mask, other=0.0, eviction_policy=ACT_EVICT)
    ple = tl.load(ple_ptr + rows64 * ple_row_stride + cols[None, :], mask=mask, other=0.0, eviction_policy=ACT_EVICT)
    gate = gate.to(tl.float32)

    # gelu_tanh(x) = 0.5 x (1 + tanh(u)) = x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3).
    # The sigmoid form needs only exp (spelled alike in triton 3.6 and 3.8, unlike
    # tanh) and stays exact in both tails: for very negative x, exp overflows to
    # inf and x / inf = -0, as 0.5 x (1 + tanh(-inf)) gives.
    u = 0.7978845608028654 * (gate + 0.044715 * gate * gate * gate)
    activated = round_to(gate / (1.0 + tl.exp(-2.0 * u)), act_dtype, BF16_RNE_BY_BITS)
    out = round_to(activated * ple.to(tl.float32), act_dtype, BF16_RNE_BY_BITS)
    tl.store(out_ptr + rows64 * out_row_stride + cols[None, :], out.to(act_dtype), mask=mask)


# --------------------------------------------------------------------------- support checks


def _row_problem(name: str, t: torch.Tensor, like: torch.Tensor | None = None) -> str | None:
    """Why ``t`` cannot be a row-major 2-D operand (of ``like``'s shape/dtype/device)."""
    if not is_rowmajor_2d(t):
        return f"{name} must be 2-D with unit last stride, got shape {tuple(t.shape)} strides {t.stride()}"
    if like is None:
        if t.dtype not in FUSED_DTYPES:
            return f"{name} dtype {t.dtype} is not one of {FUSED_DTYPES}"
        if not triton_can_run_on(t):
            return f"{name} is on {t.device}, where Triton cannot run"
        if t.shape[0] == 0:
            return f"{name} has no rows"
        return None
    if t.shape != like.shape:
        return f"{name} shape {tuple(t.shape)} differs from {tuple(like.shape)}"
    if t.dtype != like.dtype:
        return f"{name} dtype {t.dtype} differs from {like.dtype} (eager would promote)"
    if t.device != like.device:
        return f"{name} is on {t.device}, not {like.device}"
    return None


def _weight_problem(name: str, weight: torch.Tensor, x: torch.Tensor) -> str | None:
    if weight.dim() != 1 or weight.shape[0] != x.shape[1] or weight.stride(0) != 1:
        return f"{name} must be contiguous 1-D of length {x.shape[1]}, got shape {tuple(weight.shape)}"
    if weight.dtype not in FUSED_DTYPES:
        return f"{name} dtype {weight.dtype} is not one of {FUSED_DTYPES}"
    if weight.device != x.device:
        return f"{name} is on {weight.device}, not {x.device}"
    return None


def _norm_problem(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor) -> str | None:
    problem = _row_problem("x", x) or _row_problem("residual", residual, like=x)
    if problem is None and x.shape[1] > MAX_FUSED_ROW:
        problem = f"row of {x.shape[1]} elements exceeds MAX_FUSED_ROW={MAX_FUSED_ROW}"
    return problem or _weight_problem("weight", weight, x)


def _scale_problem(scale: torch.Tensor, x: torch.Tensor) -> str | None:
    if scale.numel() != 1:
        return f"scale must have one element, got shape {tuple(scale.shape)}"
    if scale.dtype != x.dtype:
        return f"scale dtype {scale.dtype} differs from {x.dtype} (eager would promote the output)"
    if scale.device != x.device:
        return f"scale is on {scale.device}, not {x.device}"
    return None


def _gelu_mul_problem(gate: torch.Tensor, ple: torch.Tensor) -> str | None:
    return _row_problem("gate", gate) or _row_problem("per_layer_input", ple, like=gate)


def supports_rmsnorm_add(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor) -> bool:
    """Whether :func:`rmsnorm_add` accepts these tensors."""
    return _norm_problem(x, weight, residual) is None


def supports_gelu_tanh_mul(gate: torch.Tensor, ple: torch.Tensor) -> bool:
    """Whether :func:`gelu_tanh_mul` accepts these tensors."""
    return _gelu_mul_problem(gate, ple) is None


def supports_rmsnorm_add_scale(
    x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor, scale: torch.Tensor
) -> bool:
    """Whether :func:`rmsnorm_add_scale` accepts these tensors."""
    return (_norm_problem(x, weight, residual) or _scale_problem(scale, x)) is None


def _ple_tail_problem(
    hidden_states: torch.Tensor,
    residual: torch.Tensor,
    per_layer_input: torch.Tensor,
    post_ff_weight: torch.Tensor,
    post_ple_weight: torch.Tensor,
    layer_scalar: torch.Tensor,
) -> str | None:
    problem = (
        _norm_problem(hidden_states, post_ff_weight, residual)
        or _weight_problem("post_ple_weight", post_ple_weight, hidden_states)
        or _scale_problem(layer_scalar, hidden_states)
        or _row_problem("per_layer_input", per_layer_input)
    )
    if problem is not None:
        return problem
    if per_layer_input.shape[0] != hidden_states.shape[0]:
        return f"per_layer_input has {per_layer_input.shape[0]} rows, hidden_states {hidden_states.shape[0]}"
    if per_layer_input.dtype != hidden_states.dtype or per_layer_input.device != hidden_states.device:
        return "per_layer_input differs from hidden_states in dtype or device"
    return None


def supports_ple_tail(
    hidden_states: torch.Tensor,
    residual: torch.Tensor,
    per_layer_input: torch.Tensor,
    post_ff_weight: torch.Tensor,
    post_ple_weight: torch.Tensor,
    layer_scalar: torch.Tensor,
) -> bool:
    """Whether all three fused kernels of the tail can run, judged before the layer's GEMMs.

    ``hidden_states`` stands for the FFN output (same shape, dtype and device);
    the gate GEMM output is ``[T, per_layer_dim]`` in the same dtype, so checking
    ``per_layer_input`` against ``hidden_states`` covers :func:`gelu_tanh_mul`.
    """
    return _ple_tail_problem(
        hidden_states, residual, per_layer_input, post_ff_weight, post_ple_weight, layer_scalar
    ) is None


def _require(problem: str | None) -> None:
    if problem is not None:
        raise ValueError(problem)


# --------------------------------------------------------------------------- launch configs
#
# Chosen on the H200 (torch 2.11, triton 3.6; benchmarks/sweep_ple_tail.py,
# 2026-11-29, results in benchmarks/results/sweep_ple_tail.json as of commit
# ed89414, the second sweep below as of commit 078f471; the file now holds the third): every
# candidate of each kernel timed alone under CUDA-graph replay, bf16, hidden
# 1536 (E2B) and 2560 (E4B), per_layer_dim 256; copy bandwidth 4.16 TB/s.
#
# What mattered, largest first (us per call; "old" = the first version):
#
# * The bf16 bit-trick rounding had run on the GPU too (~8 integer ops per
#   element per rounding point, 2-3 points): the kernels were issue-bound at
#   prefill sizes. Same old launch without it: rmsnorm_add_scale 2560 x 16384
#   96.9 -> 65.6, 1536 x 4096 15.7 -> 10.7; gelu_tanh_mul 16384 rows 8.0 -> 7.3;
#   decode sizes -0.1..0.6 per kernel. It now runs under the interpreter only.
# * Norms, >= 8192 rows: one row per program, 1024 columns at a time (the
#   looped kernel, 4 warps, 8 elements per thread) reaches
#   96-98% of copy bandwidth: 1536 x 16384 37.9 us (old 46.2, best one-row-
#   per-program tile 38.9), 2560 x 16384 61.6 (old 80.3). At 4096 rows it
#   loses to row tiles by 3-8%; the switch sits between.
# * Norms, 2049..8191 rows: two rows per program. 1536 x 4096: 9.8 us/kernel
#   at 8 warps (92% of copy; old 13.1); 2560 x 4096: 15.6 at 4 warps (96%;
#   old 23.1; at 16 warps 16.4).
# * Norms, 513..2048 rows: four rows per program, 16 warps (1024 rows: 1536
#   3.8 us, 2560 5.0; old 4.5 and 7.5; one row per program 4.0 and 5.5).
# * Norms, <= 512 rows (decode): one row per program, 8 warps, 1.7-2.3 us per
#   kernel; up to 128 rows 4, 8 or 16 warps are within 0.1 us (the spread of
#   repeated timings), at 256 rows 8 warps are best.
# * gelu_tanh_mul: tiles of up to 4 rows x 256, 8 elements per thread, up to
#   2048 rows (1.4-1.8 us, old 1.6-2.1); 8 rows x 256 at 4 warps above (4096:
#   3.2 us, 16384: 7.1, 85% of copy; old 3.4 and 8.0). Splitting one row over
#   2-4 programs gained nothing.
# * Eviction hints (activations evict_first, weights evict_last), per bucket.
#   Timed alone they gain 2-8% for the norms at 4096 rows (2560: 15.7 us with,
#   17.2 without) and 3% for gelu at 16384 rows, and cost 1-2% for the looped
#   kernel at 16384 rows. Up to 2048 rows they moved a kernel timed alone by
#   -0.35..+0.1 us, but the whole tail ran 6-25% slower with them (1536 x 256:
#   5.2 us without, 6.5 with; 1024 rows 6-7%; two runs), likely because
#   without hints the harness's rotated input sets (8 of ~5 MB at 256 rows)
#   stay in L2 across replays. In the model these inputs are freshly written
#   and dead after the read, so at those sizes the hints would neither help
#   nor hurt. Hence: on for the row tiles above 2048 rows only (gelu: see the
#   third sweep below).
#
# A second sweep (same machine and versions, 2026-11-29, with a 20 ms warm-up
# before timing; copy bandwidth 4.18 TB/s) at 2048-8192 rows:
#
# * Norms at 1536 x 8192: two rows per program, 4 warps, hints, 18.1-18.2 us
#   per kernel (99% of copy) against the looped kernel's 20.05 (19.35 with
#   hints); the tail 42.4 us against 43.6 with the looped norms. So 1536 wide
#   rows take the row tiles up to 16383 rows, the looped kernel from 16384
#   (measured faster there in the first sweep). At 2560 x 8192 the looped
#   kernel and the best row tile tie (31.8 vs 31.5): unchanged.
# * Tails with the table (us, alternating with torch.compile, two timings
#   each): 1536 x 4096 22.1-22.3 (compile 26.5), 2560 x 4096 35.7 (44.4),
#   1536 x 8192 43.6 (52.3), 2560 x 8192 68.0-69.0 (84.0).
# * gelu_tanh_mul at 4096 rows timed alone ran faster without hints (2.40 us
#   vs 3.23), but its 8 rotated input sets (6 MB each) fit in L2 together; in
#   the tail (2 sets, not L2-resident) the hint-less tiles gained nothing
#   (22.3 vs 22.1-22.3 us): unchanged then (changed by the third sweep).
#
# ptxas issues the loads of the second activation and the weight only after
# the row's sum of squares has its x (seen in the SASS for every tile shape),
# so the reduction of x runs while they are in flight. Neither a barrier nor a
# CTA fence placed after the loads changed that order (sm_90, triton 3.8,
# offline). Tried in session 4 of 2026-11-29 (H200, triton 3.6): a data
# dependency (x OR-ed with the other loads' bits masked by a run-time zero)
# made ptxas issue every load of the row at once, here and in the triple and
# end-of-layer kernels, and it was slower at every decode size: the PLE tail
# +0.1-0.3 us at 1-512 rows (E2B 1: 4.10 -> 4.27), E4B 1024 rows 12.1 -> 15.9,
# the triple norm at 2816 x 1 2.31 -> 2.49 and 5376 x 1 3.20 -> 3.78. So the
# overlap of the reduction with the later loads is worth more than one trip.
# Session 5 (same machine): a bulk L2 prefetch (cp.async.bulk.prefetch.L2,
# one thread per program, issued before x's load) of the residual rows, and
# of the weights, so that the later loads hit L2. Slower or even everywhere:
# the E2B tail at 1 row 4.10 -> 4.33 us (residual) / 4.10 (both), at 512 rows
# 6.71 -> 6.97 / 7.06; the triple norm 2816 x 1 2.30 -> 2.29 / 2.42, 5376 x 1
# 3.26 -> 3.21 / 3.38, slower from 128 rows. Not kept: the decode sizes do
# not wait on the second trip to DRAM.
#
# Exact rows (kernel "exact", measured in the third sweep below):
# the row kernel pads 1536 to 2048 lanes and 2560 to 4096 (25% / 37.5% of the
# lanes idle, more registers per row, fewer rows in flight per SM). Compiled
# for sm_90 by triton 3.8, bf16, every candidate of the sweep (1/2/4 rows,
# 4/8/16 warps, derived lanes) needs one barrier, the row reduction's, and
# no layout conversion: the weight is loaded in the activations' 3-D shape
# ([1, LANES, VEC] gets a layout of its own and goes through shared memory),
# and a lane holds at most 16 bytes of a segment (Triton spreads a longer run
# over several threads, and 2560's 2048 segment at 64 lanes then took 33
# barriers). The padded row kernel at 4 rows x 2048, 16 warps (the second
# sweep's 513..2048-row bucket) converts its 1-D weight load through 8 KB of shared
# memory (3 barriers); at the other table shapes it has one barrier.


class NormLaunch(NamedTuple):
    """How to launch :func:`rmsnorm_add` / :func:`rmsnorm_add_scale`.

    ``kernel`` "row": ``rows_per_program`` whole rows of ``block`` lanes (a power
    of two >= the row) per program, each element loaded once; "looped": one
    row per program, ``block`` columns at a time in two passes (the second
    re-reads ``x`` from L1); "exact": ``rows_per_program`` whole rows of
    ``block`` = the row's width, held as its power-of-two segments (at most
    two: 1536 = 1024 + 512) split over ``lanes`` lanes each (0: one lane per
    thread of the row, see :func:`exact_row_lanes`), no idle lanes.
    ``stream_hints``: the activations (dead after the read) evict_first, the
    weight (read by every program) evict_last.
    """

    kernel: str
    block: int
    rows_per_program: int
    num_warps: int
    stream_hints: bool = False
    lanes: int = 0


class TileLaunch(NamedTuple):
    """How to launch :func:`gelu_tanh_mul`: ``block_rows`` x ``block_cols`` tiles (powers
    of two); ``stream_hints``: both inputs (dead after the read) evict_first."""

    block_rows: int
    block_cols: int
    num_warps: int
    stream_hints: bool = False


# Third sweep (same machine and versions, session 3 of 2026-11-29, copy 4.07
# TB/s; each kernel alone, us, chosen vs the previous table):
# * Exact rows: 1536 at 257-1024 rows, two rows per program in 8 warps (512:
#   2.31/2.26 vs 2.43/2.35 for rmsnorm_add/rmsnorm_add_scale; 1024: 3.54/3.46
#   vs 3.60/3.59); 2560 everywhere but 513-1024 rows (exact one row in 8 warps:
#   1-32 rows 1.63-1.93 vs 1.67-1.94; 512 2.82/3.16 vs 2.87/3.16; 2048, two
#   rows, hints: 8.59/8.58 vs 8.87/8.90; 4096, hints: 15.25/15.39 vs 15.56/15.83;
#   8192 31.20/31.19 and 16384 59.46/60.11, no hints, against the looped
#   kernel's 31.79/31.95 and 61.23/61.05, which 2560 no longer uses).
# * 1536 at 1025-2048 rows: 4 rows in 8 warps with hints, 5.67/5.71 vs 6.07/6.06
#   (the 16-warp tile converted its weight through shared memory).
# * gelu_tanh_mul above 2048 rows: 2048-element tiles at 8 per thread (8 warps),
#   no hints: 2.45-2.47 us vs 3.21 at 4096 rows (8 rotated input sets of 6 MB,
#   as above); the E2B tail with these choices 22.19 us vs the table's 22.35.
# * Eviction hints in context (session 5 of 2026-11-29, same machine and
#   versions; benchmarks/sweep_ple_tail_in_context.py and sweep_stream_hints.py,
#   results/ of the same names: the whole tail as the benchmark times it, in
#   harness.LAYOUTS memory layouts, the range of the per-layout medians):
#   the sweeps above timed each kernel alone, where the 8 rotated input sets
#   stay in L2 across replays and evict_first only throws hits away. In the
#   tail, where the sets no longer fit, hints win from 257 rows: E2B 512
#   6.24-6.31 us in every layout vs 6.47-7.10 without (torch.compile
#   6.61-7.27), 768 7.23-7.27 vs 8.04-8.13, 1024 8.16-8.23 vs 9.13-9.21; E4B
#   384 6.75-6.81 vs 7.44-7.64, 512 7.53-7.57 vs 8.47-8.53, 1024 10.95-11.06
#   vs 12.00-12.08; E2B 384 5.70-5.82 vs 5.63-6.24 (a tie, steadier). At
#   128-256 rows they were even (within +-0.1).
# The measured widths: (max n_rows, launch) buckets, the first that holds n_rows wins.
_ALL_ROWS = 1 << 62
_NORM_TABLE: dict[int, tuple[tuple[int, NormLaunch], ...]] = {
    1536: (
        (256, NormLaunch("row", 2048, 1, 8)),
        (1024, NormLaunch("exact", 1536, 2, 8, stream_hints=True)),
        (2048, NormLaunch("row", 2048, 4, 8, stream_hints=True)),
        (8191, NormLaunch("row", 2048, 2, 8, stream_hints=True)),
        (16383, NormLaunch("row", 2048, 2, 4, stream_hints=True)),
    ),
    2560: (
        (256, NormLaunch("exact", 2560, 1, 8)),
        (512, NormLaunch("exact", 2560, 1, 8, stream_hints=True)),
        (1024, NormLaunch("row", 4096, 4, 16, stream_hints=True)),
        (2048, NormLaunch("exact", 2560, 2, 8, stream_hints=True)),
        (8191, NormLaunch("exact", 2560, 1, 8, stream_hints=True)),
        (_ALL_ROWS, NormLaunch("exact", 2560, 1, 8)),
    ),
}
LOOPED_MIN_ROWS = 8192
LOOP_CHUNK = 1024


def looped_min_rows(n_cols: int) -> int:
    """From how many rows the looped kernel runs: past the width's measured
    table, else ``LOOPED_MIN_ROWS``."""
    table = _NORM_TABLE.get(n_cols)
    return table[-1][0] + 1 if table else LOOPED_MIN_ROWS


def norm_launch(n_cols: int, n_rows: int) -> NormLaunch:
    """The norm kernels' launch for ``n_rows`` rows of ``n_cols`` elements.

    Many rows (from :func:`looped_min_rows`) of more than ``LOOP_CHUNK``
    elements: the looped kernel. Else the measured table for hidden 1536/2560,
    and for other widths (not measured) the same buckets at 16 elements per
    thread: one row per program up to 512
    rows, four up to 2048, two above (at most 16384 elements per program),
    eviction hints above 2048 rows (the measured widths take them from 257).
    """
    if n_rows >= looped_min_rows(n_cols) and n_cols > LOOP_CHUNK:
        return NormLaunch("looped", LOOP_CHUNK, 1, LOOP_CHUNK // 256)
    for max_rows, launch in _NORM_TABLE.get(n_cols, ()):
        if n_rows <= max_rows:
            return launch
    block = triton.next_power_of_2(n_cols)
    rows = 1 if n_rows <= 512 else 4 if n_rows <= 2048 else 2
    rows = max(1, min(rows, 16384 // block))
    return NormLaunch("row", block, rows, max(1, min(16, rows * block // 512)), stream_hints=n_rows > 2048)


def gelu_launch(n_rows: int, n_cols: int) -> TileLaunch:
    """The pointwise kernel's launch for a ``[n_rows, n_cols]`` problem: up to 256
    columns per tile, 8 elements per thread; up to 2048 rows tiles of <= 1024
    elements, above 2048-element tiles. No eviction hints."""
    block_cols = min(triton.next_power_of_2(n_cols), 256)
    tile = 2048 if n_rows > 2048 else 1024
    block_rows = min(triton.next_power_of_2(n_rows), tile // block_cols)
    return TileLaunch(block_rows, block_cols, max(1, block_rows * block_cols // (32 * 8)))


def _check_launch(launch: NormLaunch | TileLaunch) -> None:
    # the exact kernel's block is the row's width, any sum of two powers of two
    fields = ("rows_per_program", "block_rows", "block_cols", "num_warps", "lanes")
    if getattr(launch, "kernel", "") != "exact":
        fields += ("block",)
    for field in fields:
        value = getattr(launch, field, 1)
        if field == "lanes" and value == 0:
            continue  # derived
        if value < 1 or value & (value - 1):
            raise ValueError(f"{field} must be a power of two: {launch}")


EXACT_MAX_SEGMENTS = 2


def exact_row_segments(n_cols: int) -> tuple[int, int] | None:
    """The exact kernel's ``(SEG0, SEG1)`` for rows of ``n_cols``: its powers of
    two, largest first, ``SEG1`` 0 for a power of two; None past two."""
    segments = power_of_two_segments(n_cols, EXACT_MAX_SEGMENTS)
    if segments is None:
        return None
    return segments[0], segments[1] if len(segments) > 1 else 0


def exact_row_lanes(launch: NormLaunch, n_cols: int, element_size: int = 2) -> int:
    """Lanes per row segment of an "exact" launch: ``launch.lanes``, or (0) one
    per thread of the row, ``32 * num_warps / rows_per_program``, more where a
    lane would get more than one 16-byte load's worth of adjacent columns of a
    segment, as far as the smallest segment allows
    (:func:`~sglang_gemma4.kernels.row_segments.lanes_per_row`)."""
    segments = power_of_two_segments(n_cols, EXACT_MAX_SEGMENTS)
    if segments is None:
        raise ValueError(f"{n_cols} is not a sum of at most {EXACT_MAX_SEGMENTS} powers of two")
    if launch.lanes:
        return launch.lanes
    return lanes_per_row(segments, 32 * launch.num_warps // launch.rows_per_program, 16 // element_size)


# --------------------------------------------------------------------------- wrappers


def _bf16_rne_by_bits(t: torch.Tensor) -> bool:
    return triton_interpreting() and t.dtype == torch.bfloat16


def _launch_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    residual: torch.Tensor,
    scale: torch.Tensor | None,
    eps: float,
    launch: NormLaunch | None,
    bf16_rne_by_bits: bool,
) -> torch.Tensor:
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    n_rows, n_cols = x.shape
    launch = launch or norm_launch(n_cols, n_rows)
    _check_launch(launch)
    args = (
        x, weight, residual, x if scale is None else scale, out,  # scale_ptr unread without a scale
        n_rows, n_cols, x.stride(0), residual.stride(0), out.stride(0), eps,
    )
    options = {
        "ACT_EVICT": "evict_first" if launch.stream_hints else "",
        "W_EVICT": "evict_last" if launch.stream_hints else "",
        **launch_kwargs(x, "ple_tail", n_rows, n_cols),
    }
    if launch.kernel == "row":
        if launch.block < n_cols:
            raise ValueError(f"the row kernel needs block >= {n_cols}: {launch}")
        _rmsnorm_add_row_kernel[(triton.cdiv(n_rows, launch.rows_per_program),)](
            *args,
            HAS_SCALE=scale is not None,
            ROWS=launch.rows_per_program,
            BLOCK=launch.block,
            BF16_RNE_BY_BITS=bf16_rne_by_bits,
            num_warps=launch.num_warps,
            **options,
        )
    elif launch.kernel == "exact":
        segments = exact_row_segments(n_cols)
        if launch.block != n_cols or segments is None:
            raise ValueError(
                f"the exact kernel needs block == n_cols = {n_cols}, a sum of at most "
                f"{EXACT_MAX_SEGMENTS} powers of two: {launch}"
            )
        lanes = exact_row_lanes(launch, n_cols, x.element_size())
        if lanes > min(s for s in segments if s):
            raise ValueError(f"lanes must not exceed the smallest row segment {segments}: {launch}")
        _rmsnorm_add_segmented_kernel[(triton.cdiv(n_rows, launch.rows_per_program),)](
            *args,
            HAS_SCALE=scale is not None,
            ROWS=launch.rows_per_program,
            SEG0=segments[0],
            SEG1=segments[1],
            LANES=lanes,
            BF16_RNE_BY_BITS=bf16_rne_by_bits,
            num_warps=launch.num_warps,
            **options,
        )
    elif launch.kernel == "looped":
        if launch.rows_per_program != 1:
            raise ValueError(f"the looped kernel takes one row per program: {launch}")
        _rmsnorm_add_looped_kernel[(n_rows,)](
            *args,
            HAS_SCALE=scale is not None,
            CHUNK=launch.block,
            NUM_CHUNKS=triton.cdiv(n_cols, launch.block),
            BF16_RNE_BY_BITS=bf16_rne_by_bits,
            num_warps=launch.num_warps,
            **options,
        )
    else:
        raise ValueError(f"unknown kernel {launch.kernel!r}")
    return out


def _launch_gelu_mul(
    gate: torch.Tensor, ple: torch.Tensor, launch: TileLaunch | None, bf16_rne_by_bits: bool
) -> torch.Tensor:
    out = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
    n_rows, n_cols = gate.shape
    launch = launch or gelu_launch(n_rows, n_cols)
    _check_launch(launch)
    grid = (triton.cdiv(n_rows, launch.block_rows), triton.cdiv(n_cols, launch.block_cols))
    _gelu_tanh_mul_kernel[grid](
        gate, ple, out,
        n_rows, n_cols,
        gate.stride(0), ple.stride(0), out.stride(0),
        BLOCK_ROWS=launch.block_rows,
        BLOCK_COLS=launch.block_cols,
        ACT_EVICT="evict_first" if launch.stream_hints else "",
        BF16_RNE_BY_BITS=bf16_rne_by_bits,
        num_warps=launch.num_warps,
        **launch_kwargs(gate, "ple_tail", n_rows, n_cols),
    )
    return out


def rmsnorm_add(
    x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor, eps: float, *, launch: NormLaunch | None = None
) -> torch.Tensor:
    """``round(round(x * rsqrt(mean(x^2) + eps) * weight) + residual)``, row-wise, in one launch.

    The post-FFN norm and residual add of the PLE tail. ``x`` and ``residual`` are
    ``[T, H]`` with unit last stride (rows may be spaced), same dtype; ``weight``
    is ``[H]``. Returns a new contiguous ``[T, H]`` tensor of ``x``'s dtype;
    ``round`` is rounding to that dtype. ``launch`` overrides :func:`norm_launch`
    (benchmark sweeps).
    """
    _require(_norm_problem(x, weight, residual))
    return _launch_norm(x, weight, residual, None, eps, launch, _bf16_rne_by_bits(x))


def gelu_tanh_mul(gate: torch.Tensor, ple: torch.Tensor, *, launch: TileLaunch | None = None) -> torch.Tensor:
    """``round(round(gelu_tanh(gate)) * ple)``, elementwise, in one launch.

    ``gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``. ``gate``
    and ``ple`` are ``[T, P]`` with unit last stride; ``ple`` is typically the
    view ``per_layer_inputs[:, layer, :]`` and is read in place. Returns a new
    contiguous ``[T, P]`` tensor of ``gate``'s dtype. ``launch`` overrides
    :func:`gelu_launch`.
    """
    _require(_gelu_mul_problem(gate, ple))
    return _launch_gelu_mul(gate, ple, launch, _bf16_rne_by_bits(gate))


def rmsnorm_add_scale(
    x: torch.Tensor,
    weight: torch.Tensor,
    residual: torch.Tensor,
    scale: torch.Tensor,
    eps: float,
    *,
    launch: NormLaunch | None = None,
) -> torch.Tensor:
    """``round(round(round(x * rsqrt(mean(x^2) + eps) * weight) + residual) * scale)``, row-wise.

    The post-PLE norm, the add of the stream and the layer scalar, in one launch.
    Shapes and ``launch`` as in :func:`rmsnorm_add`; ``scale`` is a 1-element
    tensor of ``x``'s dtype on ``x``'s device, loaded by the kernel (CUDA-graph safe).
    """
    _require(_norm_problem(x, weight, residual) or _scale_problem(scale, x))
    return _launch_norm(x, weight, residual, scale, eps, launch, _bf16_rne_by_bits(x))


# --------------------------------------------------------------------------- references


def _rounded(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` (fp32) rounded to ``dtype`` and back: one eager op's output rounding."""
    return t.to(dtype).float()


def _rmsnorm_fp32(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps) * weight.float()


def rmsnorm_add_reference(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor, eps: float) -> torch.Tensor:
    """fp32 reference of :func:`rmsnorm_add`, rounding where the eager ops do."""
    normed = _rounded(_rmsnorm_fp32(x, weight, eps), x.dtype)
    return (normed + residual.float()).to(x.dtype)


def gelu_tanh_mul_reference(gate: torch.Tensor, ple: torch.Tensor) -> torch.Tensor:
    """fp32 reference of :func:`gelu_tanh_mul`, rounding where the eager ops do."""
    activated = _rounded(torch.nn.functional.gelu(gate.float(), approximate="tanh"), gate.dtype)
    return (activated * ple.float()).to(gate.dtype)


def rmsnorm_add_scale_reference(
    x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor, scale: torch.Tensor, eps: float
) -> torch.Tensor:
    """fp32 reference of :func:`rmsnorm_add_scale`, rounding where the eager ops do."""
    normed = _rounded(_rmsnorm_fp32(x, weight, eps), x.dtype)
    summed = _rounded(normed + residual.float(), x.dtype)
    return (summed * scale.float().reshape(())).to(x.dtype)


def ple_tail_reference(
    x: torch.Tensor,
    residual: torch.Tensor,
    per_layer_input: torch.Tensor,
    *,
    post_ff_weight: torch.Tensor,
    post_ff_eps: float,
    gate_gemm: Callable[[torch.Tensor], torch.Tensor],
    projection_gemm: Callable[[torch.Tensor], torch.Tensor],
    post_ple_weight: torch.Tensor,
    post_ple_eps: float,
    layer_scalar: torch.Tensor,
) -> torch.Tensor:
    """The whole PLE tail, eager rounding points included::

        h   = rmsnorm(x, post_ff_weight) + residual
        g   = gelu_tanh(gate_gemm(h)) * per_layer_input
        out = (rmsnorm(projection_gemm(g), post_ple_weight) + h) * layer_scalar

    The GEMMs are callables so a caller can pass the layer's own projections,
    ``F.linear`` closures, or precomputed outputs (the benchmark times the
    non-GEMM part only).
    """
    h = rmsnorm_add_reference(x, post_ff_weight, residual, post_ff_eps)
    g = gelu_tanh_mul_reference(gate_gemm(h), per_layer_input)
    return rmsnorm_add_scale_reference(projection_gemm(g), post_ple_weight, h, layer_scalar, post_ple_eps)
