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

Two kernels, both reading each row once (attn_out, residual) and writing it
four times, the minimum DRAM traffic: for few rows (decode), whole rows held in
registers with every load issued at once; for many rows (prefill), one row per
program walked in chunks over three passes, re-reading from cache, so that
small register footprints keep many rows in flight per SM.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from sglang_gemma4.kernels.rounding import round_to
from sglang_gemma4.kernels.support import MAX_FUSED_ROW, triton_can_run_on, triton_interpreting

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
    BLOCK: tl.constexpr,
    MOE_OUTPUTS: tl.constexpr,
    BF16_RNE_BY_BITS: tl.constexpr,
):
    """``ROWS`` whole rows per program, held in registers: each element is loaded
    once and every load is issued up front (the latency-bound decode sizes).
    Without ``MOE_OUTPUTS`` only ``r`` and ``dense_in`` (the router/expert
    pointers are not touched)."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    col_ok = cols < hidden
    mask = (rows[:, None] < n_rows) & col_ok[None, :]
    # int64: rows * hidden passes 2**31 for prefills of ~760k tokens at hidden 2816.
    offs = rows.to(tl.int64)[:, None] * hidden + cols[None, :]
    act = r_ptr.dtype.element_ty

    x = tl.load(attn_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    res = tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    w_post = _load_weight(w_post_ptr, cols, col_ok)[None, :]
    w_pre_ff = _load_weight(w_pre_ff_ptr, cols, col_ok)[None, :]

    inv_x = tl.rsqrt(tl.sum(x * x, axis=1) / hidden + eps)[:, None]
    s, r = _residual_sum(x, res, inv_x, w_post, act, BF16_RNE_BY_BITS)
    tl.store(r_ptr + offs, r, mask=mask)
    # fused_add_rmsnorm normalizes the unrounded fp32 sum; the router's norm and
    # pre_feedforward_layernorm_2 read the stored residual.
    inv_s = tl.rsqrt(tl.sum(s * s, axis=1) / hidden + eps)[:, None]
    tl.store(dense_ptr + offs, round_to((s * inv_s) * w_pre_ff, act, BF16_RNE_BY_BITS).to(act), mask=mask)
    if MOE_OUTPUTS:
        w_router = _load_weight(w_router_ptr, cols, col_ok)[None, :]
        w_pre_ff_2 = _load_weight(w_pre_ff_2_ptr, cols, col_ok)[None, :]
        r32 = r.to(tl.float32)
        r_normed = r32 * tl.rsqrt(tl.sum(r32 * r32, axis=1) / hidden + eps)[:, None]
        tl.store(router_ptr + offs, round_to(r_normed * w_router, act, BF16_RNE_BY_BITS).to(act), mask=mask)
        tl.store(moe_ptr + offs, round_to(r_normed * w_pre_ff_2, act, BF16_RNE_BY_BITS).to(act), mask=mask)


@triton.jit
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
    MOE_OUTPUTS: tl.constexpr,
    BF16_RNE_BY_BITS: tl.constexpr,
):
    """One row per program, ``CHUNK`` columns at a time, in three passes (each
    unrolled, so that a pass has all its chunks' loads in flight at once): the
    sum of squares of attn_out; the sums of squares of ``s`` and ``r``; all four
    outputs. Few registers per program, so many rows are in flight per SM (the
    bandwidth-bound sizes). Passes 2 and 3 re-read the row from L1/L2, so DRAM
    still sees each element once; pass 3 recomputes ``s`` and ``r`` with the same
    operations on the same inputs (bit-identical), and is the only pass that
    stores, so ``r`` may overwrite the residual it is computed from. Without
    ``MOE_OUTPUTS`` only ``r`` and ``dense_in``, and no sum of squares of ``r``."""
    base = tl.program_id(0).to(tl.int64) * hidden
    lanes = tl.arange(0, CHUNK)
    act = r_ptr.dtype.element_ty

    sum_x = tl.zeros([CHUNK], dtype=tl.float32)
    for c in tl.static_range(NUM_CHUNKS):
        cols = c * CHUNK + lanes
        x = tl.load(attn_ptr + base + cols, mask=cols < hidden, other=0.0).to(tl.float32)
        sum_x += x * x
    inv_x = tl.rsqrt(tl.sum(sum_x, axis=0) / hidden + eps)

    sum_s = tl.zeros([CHUNK], dtype=tl.float32)
    sum_r = tl.zeros([CHUNK], dtype=tl.float32)
    for c in tl.static_range(NUM_CHUNKS):
        cols = c * CHUNK + lanes
        col_ok = cols < hidden
        x = tl.load(attn_ptr + base + cols, mask=col_ok, other=0.0).to(tl.float32)
        res = tl.load(res_ptr + base + cols, mask=col_ok, other=0.0).to(tl.float32)
        s, r = _residual_sum(x, res, inv_x, _load_weight(w_post_ptr, cols, col_ok), act, BF16_RNE_BY_BITS)
        sum_s += s * s
        if MOE_OUTPUTS:
            r32 = r.to(tl.float32)
            sum_r += r32 * r32
    # fused_add_rmsnorm normalizes the unrounded fp32 sum; the router's norm and
    # pre_feedforward_layernorm_2 read the stored residual.
    inv_s = tl.rsqrt(tl.sum(sum_s, axis=0) / hidden + eps)
    inv_r = tl.rsqrt(tl.sum(sum_r, axis=0) / hidden + eps)

    for c in tl.static_range(NUM_CHUNKS):
        cols = c * CHUNK + lanes
        col_ok = cols < hidden
        x = tl.load(attn_ptr + base + cols, mask=col_ok, other=0.0).to(tl.float32)
        res = tl.load(res_ptr + base + cols, mask=col_ok, other=0.0).to(tl.float32)
        s, r = _residual_sum(x, res, inv_x, _load_weight(w_post_ptr, cols, col_ok), act, BF16_RNE_BY_BITS)
        tl.store(r_ptr + base + cols, r, mask=col_ok)
        dense = (s * inv_s) * _load_weight(w_pre_ff_ptr, cols, col_ok)
        tl.store(dense_ptr + base + cols, round_to(dense, act, BF16_RNE_BY_BITS).to(act), mask=col_ok)
        if MOE_OUTPUTS:
            r_normed = r.to(tl.float32) * inv_r
            router = r_normed * _load_weight(w_router_ptr, cols, col_ok)
            tl.store(router_ptr + base + cols, round_to(router, act, BF16_RNE_BY_BITS).to(act), mask=col_ok)
            moe = r_normed * _load_weight(w_pre_ff_2_ptr, cols, col_ok)
            tl.store(moe_ptr + base + cols, round_to(moe, act, BF16_RNE_BY_BITS).to(act), mask=col_ok)


class TripleNormLaunch(NamedTuple):
    """``kernel`` "row": ``rows_per_program`` whole rows of ``block`` (a power of
    two >= hidden) lanes per program; "chunked": one row per program, ``block``
    columns at a time."""

    kernel: str
    block: int
    rows_per_program: int
    num_warps: int


# Up to about one row per SM (H200: 132 SMs), the row kernel's single wave
# beats the chunked kernel's longer per-row latency.
ROW_KERNEL_MAX_ROWS = 128
CHUNK = 1024
# Elements of each live tensor per thread: one 16-byte vector of bf16.
ELEMENTS_PER_THREAD = 8


def launch_config(hidden: int, n_rows: int) -> TripleNormLaunch:
    """How to launch the kernel for ``n_rows`` rows of ``hidden`` elements.

    Few rows: the row kernel, every load issued at once; narrow rows batched
    several to a program. Many rows: the chunked kernel, whose small register
    footprint lets many programs share an SM. Either way each thread holds
    ``ELEMENTS_PER_THREAD`` elements of each tensor it works on (sm_90 ptxas:
    86 registers for a 2816-wide row in 16 warps, 64 for 5376 in 32; 94 and
    124 for the chunked kernel at 1024 columns in 4 warps).
    """
    if n_rows > ROW_KERNEL_MAX_ROWS and hidden > CHUNK:
        return TripleNormLaunch("chunked", CHUNK, 1, CHUNK // (32 * ELEMENTS_PER_THREAD))
    block = triton.next_power_of_2(hidden)
    rows = max(1, min(16, 2048 // block))
    return TripleNormLaunch("row", block, rows, max(4, min(32, rows * block // (32 * ELEMENTS_PER_THREAD))))


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
    launch = launch or launch_config(hidden, n_rows)
    if launch.block & (launch.block - 1) or launch.rows_per_program & (launch.rows_per_program - 1):
        raise ValueError(f"block and rows_per_program must be powers of two: {launch}")
    # Without the router/expert outputs their pointer arguments are never read:
    # any tensor fills the slots.
    kernel_weights = weights if moe_outputs else weights + weights
    kernel_outputs = outputs if moe_outputs else outputs + outputs
    args = (attn_out, residual, *kernel_weights, *kernel_outputs, n_rows, hidden, eps)
    rne_by_bits = triton_interpreting() and attn_out.dtype == torch.bfloat16
    if launch.kernel == "row":
        if launch.block < hidden:
            raise ValueError(f"the row kernel needs block >= hidden ({hidden}): {launch}")
        _triple_norm_row_kernel[(triton.cdiv(n_rows, launch.rows_per_program),)](
            *args,
            ROWS=launch.rows_per_program,
            BLOCK=launch.block,
            MOE_OUTPUTS=moe_outputs,
            BF16_RNE_BY_BITS=rne_by_bits,
            num_warps=launch.num_warps,
        )
    elif launch.kernel == "chunked":
        if launch.rows_per_program != 1:
            raise ValueError(f"the chunked kernel takes one row per program: {launch}")
        _triple_norm_chunked_kernel[(n_rows,)](
            *args,
            CHUNK=launch.block,
            NUM_CHUNKS=triton.cdiv(hidden, launch.block),
            MOE_OUTPUTS=moe_outputs,
            BF16_RNE_BY_BITS=rne_by_bits,
            num_warps=launch.num_warps,
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
