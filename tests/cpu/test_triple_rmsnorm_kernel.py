"""The triple-RMSNorm Triton kernel against its fp32 reference, on CPU tensors
under Triton's interpreter (``TRITON_INTERPRET=1``), with tiny shapes; and which
inputs its ``supports`` predicate sends to the original path.

The GPU twin (tests/gpu/test_triple_rmsnorm_gpu.py) runs the real shapes.
"""

import pytest
import torch

from sglang_gemma4.kernels.support import MAX_FUSED_ROW
from sglang_gemma4.kernels.triple_rmsnorm import (
    post_attn_triple_rmsnorm,
    supports,
    triple_rmsnorm_reference,
)
from tests.triple_rmsnorm_checks import (
    EPS,
    OUTPUT_NAMES,
    SCALES,
    assert_within_one_rounding,
    triple_norm_inputs,
)

pytestmark = pytest.mark.interpret

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
# (tokens, hidden): every token count at the narrow row, the wider rows at the
# token counts the interpreter runs in well under a second.
SHAPES = [(t, 128) for t in (0, 1, 3, 17, 256)] + [(t, 1000) for t in (1, 3, 17)] + [(t, 2816) for t in (1, 3)]


def _check(tokens, hidden, dtype, **input_kwargs):
    attn_out, residual, weights = triple_norm_inputs(tokens, hidden, dtype, **input_kwargs)
    expected = triple_rmsnorm_reference(attn_out, residual, *weights, EPS)
    actual = post_attn_triple_rmsnorm(attn_out, residual, *weights, EPS)
    for name, a, e in zip(OUTPUT_NAMES, actual, expected):
        assert_within_one_rounding(a, e, name)
    return actual


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens,hidden", SHAPES)
def test_kernel_matches_reference(tokens, hidden, dtype):
    _check(tokens, hidden, dtype, seed=tokens + hidden)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scale", SCALES.values(), ids=SCALES.keys())
@pytest.mark.parametrize("hidden", [128, 1000])
def test_kernel_magnitudes_and_zero_row(hidden, scale, dtype):
    r, dense_in, router_in, moe_in = _check(17, hidden, dtype, scale=scale, zero_row=True, seed=7)
    # rsqrt(0 + eps) is finite: an all-zero row normalizes to zeros.
    for out in (r, dense_in, router_in, moe_in):
        assert torch.count_nonzero(out[8]) == 0


def test_residual_updated_in_place():
    attn_out, residual, weights = triple_norm_inputs(5, 1000, torch.bfloat16, seed=11)
    expected = triple_rmsnorm_reference(attn_out, residual, *weights, EPS)
    r, *_ = post_attn_triple_rmsnorm(attn_out, residual, *weights, EPS, residual_out=residual)
    assert r.data_ptr() == residual.data_ptr()
    assert_within_one_rounding(r, expected[0], "r")


@pytest.mark.parametrize("rows_per_program,num_warps", [(1, 1), (4, 2), (16, 8)])
def test_launch_overrides_do_not_change_results(rows_per_program, num_warps):
    attn_out, residual, weights = triple_norm_inputs(17, 128, torch.bfloat16, seed=13)
    default = post_attn_triple_rmsnorm(attn_out, residual, *weights, EPS)
    other = post_attn_triple_rmsnorm(
        attn_out, residual, *weights, EPS, rows_per_program=rows_per_program, num_warps=num_warps
    )
    for name, a, b in zip(OUTPUT_NAMES, default, other):
        assert torch.equal(a, b), name


def _unsupported_cases():
    attn_out, residual, weights = triple_norm_inputs(4, 128, torch.bfloat16)
    wide = triple_norm_inputs(1, MAX_FUSED_ROW + 128, torch.bfloat16)
    return {
        "transposed": (attn_out.t().contiguous().t(), residual, weights),
        "row_slice": (attn_out[:, :64], residual[:, :64], [w[:64] for w in weights]),
        "3d": (attn_out[None], residual[None], weights),
        "float64": (attn_out.double(), residual.double(), weights),
        "int": (attn_out.to(torch.int32), residual.to(torch.int32), weights),
        "mixed_dtypes": (attn_out, residual.half(), weights),
        "empty_batch": (attn_out[:0], residual[:0], weights),
        "hidden_over_max": wide,
        "short_weight": (attn_out, residual, [*weights[:3], weights[3][:64]]),
        "three_weights": (attn_out, residual, weights[:3]),
        "meta_device": (attn_out.to("meta"), residual.to("meta"), [w.to("meta") for w in weights]),
    }


@pytest.mark.parametrize("case", list(_unsupported_cases()))
def test_supports_rejects(case):
    attn_out, residual, weights = _unsupported_cases()[case]
    assert not supports(attn_out, residual, weights)


def test_supports_accepts_and_restricts_dtypes():
    attn_out, residual, weights = triple_norm_inputs(4, 128, torch.float32)
    assert supports(attn_out, residual, weights)
    assert not supports(attn_out, residual, weights, dtypes=(torch.bfloat16, torch.float16))


def test_unsupported_inputs_raise_and_empty_batch_returns_empty():
    attn_out, residual, weights = triple_norm_inputs(4, 128, torch.bfloat16)
    with pytest.raises(ValueError, match="unsupported inputs"):
        post_attn_triple_rmsnorm(attn_out[None], residual[None], *weights, EPS)
    with pytest.raises(ValueError, match="power of two"):
        post_attn_triple_rmsnorm(attn_out, residual, *weights, EPS, rows_per_program=3)
    outputs = post_attn_triple_rmsnorm(attn_out[:0], residual[:0], *weights, EPS)
    assert [tuple(o.shape) for o in outputs] == [(0, 128)] * 4
