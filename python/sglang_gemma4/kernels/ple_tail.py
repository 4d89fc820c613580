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
out the same arithmetic with PyTorch ops in fp32.

``layer_scalar`` is read on the device (never ``.item()``), so a captured CUDA
graph sees the loaded value. It must have the activation dtype: the buffer is a
1-element tensor (not 0-dim), so eager ``bf16 * fp32[1]`` would promote the
whole output to fp32, which a fused kernel writing the activation dtype would
not reproduce.

Imports torch and triton only (the GPU benchmark machine has no sglang).
"""

from __future__ import annotations

from typing import Callable

import torch
import triton
import triton.language as tl

from sglang_gemma4.kernels.support import (
    FUSED_DTYPES,
    MAX_FUSED_ROW,
    is_rowmajor_2d,
    triton_can_run_on,
)

# Elements per program of the pointwise kernel: enough bytes in flight per SM at
# prefill sizes, small enough that decode (1 row of 256) stays one program.
_POINTWISE_TILE = 2048


# --------------------------------------------------------------------------- kernels


@triton.jit
def _round_to(value, act_dtype: tl.constexpr):
    """``value`` (fp32) rounded to ``act_dtype`` (round to nearest even), returned as fp32.

    bf16 is rounded by hand because Triton's interpreter truncates fp32 -> bf16
    casts; the bit trick below is what the GPU's converting instruction computes
    (NaN kept as NaN), so the CPU tests check the same rounding the GPU does.
    """
    if act_dtype == tl.bfloat16:
        bits = value.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return tl.where(value != value, value, bits.to(tl.float32, bitcast=True))
    else:
        return value.to(act_dtype).to(tl.float32)


@triton.jit
def _rmsnorm_add_kernel(
    x_ptr,
    weight_ptr,
    residual_ptr,
    out_ptr,
    x_row_stride,
    residual_row_stride,
    out_row_stride,
    n_cols,
    eps,
    BLOCK: tl.constexpr,
):
    # One row per program: the row's sum of squares needs the whole row anyway.
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    act_dtype = out_ptr.dtype.element_ty

    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(residual_ptr + row * residual_row_stride + cols, mask=mask, other=0.0).to(tl.float32)

    inv_rms = tl.rsqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    # Round where the eager norm returns the activation dtype, then add.
    normed = _round_to(x * inv_rms * w, act_dtype)
    tl.store(out_ptr + row * out_row_stride + cols, _round_to(normed + r, act_dtype).to(act_dtype), mask=mask)


@triton.jit
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
):
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.program_id(1) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    rows64 = rows.to(tl.int64)[:, None]
    act_dtype = out_ptr.dtype.element_ty

    gate = tl.load(gate_ptr + rows64 * gate_row_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    # ple may be a column slice of per_layer_inputs[T, L, P]: read through its row stride, no copy.
    ple = tl.load(ple_ptr + rows64 * ple_row_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)

    # gelu_tanh(x) = 0.5 x (1 + tanh(u)) = x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3).
    # The sigmoid form needs only exp (spelled alike in triton 3.6 and 3.8, unlike
    # tanh) and stays exact in both tails: for very negative x, exp overflows to
    # inf and x / inf = -0, as 0.5 x (1 + tanh(-inf)) gives.
    u = 0.7978845608028654 * (gate + 0.044715 * gate * gate * gate)
    activated = _round_to(gate / (1.0 + tl.exp(-2.0 * u)), act_dtype)
    tl.store(out_ptr + rows64 * out_row_stride + cols[None, :], _round_to(activated * ple, act_dtype).to(act_dtype), mask=mask)


@triton.jit
def _rmsnorm_add_scale_kernel(
    x_ptr,
    weight_ptr,
    residual_ptr,
    scale_ptr,
    out_ptr,
    x_row_stride,
    residual_row_stride,
    out_row_stride,
    n_cols,
    eps,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    act_dtype = out_ptr.dtype.element_ty

    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(residual_ptr + row * residual_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    scale = tl.load(scale_ptr).to(tl.float32)

    inv_rms = tl.rsqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    normed = _round_to(x * inv_rms * w, act_dtype)
    summed = _round_to(normed + r, act_dtype)
    tl.store(out_ptr + row * out_row_stride + cols, _round_to(summed * scale, act_dtype).to(act_dtype), mask=mask)


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


def _row_launch(n_cols: int, element_size: int) -> tuple[int, int]:
    """(BLOCK, num_warps) for one row per program: ~16-byte vectors per thread, 1-8 warps."""
    block = triton.next_power_of_2(n_cols)
    num_warps = max(1, min(8, block * element_size // 512))
    return block, num_warps


def _tile_launch(n_rows: int, n_cols: int) -> tuple[int, int, int]:
    """(BLOCK_ROWS, BLOCK_COLS, num_warps) for the pointwise kernel's 2-D tiles."""
    block_cols = min(triton.next_power_of_2(n_cols), _POINTWISE_TILE)
    block_rows = min(triton.next_power_of_2(n_rows), max(1, _POINTWISE_TILE // block_cols))
    num_warps = max(1, min(4, block_rows * block_cols // 256))
    return block_rows, block_cols, num_warps


# --------------------------------------------------------------------------- wrappers


def rmsnorm_add(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor, eps: float) -> torch.Tensor:
    """``round(round(x * rsqrt(mean(x^2) + eps) * weight) + residual)``, row-wise, in one launch.

    The post-FFN norm and residual add of the PLE tail. ``x`` and ``residual`` are
    ``[T, H]`` with unit last stride (rows may be spaced), same dtype; ``weight``
    is ``[H]``. Returns a new contiguous ``[T, H]`` tensor of ``x``'s dtype;
    ``round`` is rounding to that dtype.
    """
    _require(_norm_problem(x, weight, residual))
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    block, num_warps = _row_launch(x.shape[1], x.element_size())
    _rmsnorm_add_kernel[(x.shape[0],)](
        x, weight, residual, out,
        x.stride(0), residual.stride(0), out.stride(0),
        x.shape[1], eps,
        BLOCK=block, num_warps=num_warps,
    )
    return out


def gelu_tanh_mul(gate: torch.Tensor, ple: torch.Tensor) -> torch.Tensor:
    """``round(round(gelu_tanh(gate)) * ple)``, elementwise, in one launch.

    ``gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``. ``gate``
    and ``ple`` are ``[T, P]`` with unit last stride; ``ple`` is typically the
    view ``per_layer_inputs[:, layer, :]`` and is read in place. Returns a new
    contiguous ``[T, P]`` tensor of ``gate``'s dtype.
    """
    _require(_gelu_mul_problem(gate, ple))
    out = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
    n_rows, n_cols = gate.shape
    block_rows, block_cols, num_warps = _tile_launch(n_rows, n_cols)
    grid = (triton.cdiv(n_rows, block_rows), triton.cdiv(n_cols, block_cols))
    _gelu_tanh_mul_kernel[grid](
        gate, ple, out,
        n_rows, n_cols,
        gate.stride(0), ple.stride(0), out.stride(0),
        BLOCK_ROWS=block_rows, BLOCK_COLS=block_cols, num_warps=num_warps,
    )
    return out


def rmsnorm_add_scale(
    x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor, scale: torch.Tensor, eps: float
) -> torch.Tensor:
    """``round(round(round(x * rsqrt(mean(x^2) + eps) * weight) + residual) * scale)``, row-wise.

    The post-PLE norm, the add of the stream and the layer scalar, in one launch.
    Shapes as in :func:`rmsnorm_add`; ``scale`` is a 1-element tensor of ``x``'s
    dtype on ``x``'s device, loaded by the kernel (CUDA-graph safe).
    """
    _require(_norm_problem(x, weight, residual) or _scale_problem(scale, x))
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    block, num_warps = _row_launch(x.shape[1], x.element_size())
    _rmsnorm_add_scale_kernel[(x.shape[0],)](
        x, weight, residual, scale, out,
        x.stride(0), residual.stride(0), out.stride(0),
        x.shape[1], eps,
        BLOCK=block, num_warps=num_warps,
    )
    return out


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
