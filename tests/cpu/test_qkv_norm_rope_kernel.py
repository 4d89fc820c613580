"""The q/k/v-norm + RoPE kernel against its fp32 reference on CPU tensors under
Triton's interpreter (tiny shapes), and what ``supports`` turns away.

The GPU twin (tests/gpu/test_qkv_norm_rope_gpu.py) runs the real shapes.
"""

import pytest
import torch

from sglang_gemma4.kernels.qkv_norm_rope import qkv_norm_rope, qkv_norm_rope_reference, supports
from tests.qkv_norm_rope_checks import EPS, assert_close_to_reference, check, cos_sin_cache, qkv_case

pytestmark = pytest.mark.interpret

DTYPES = [torch.bfloat16, torch.float16, torch.float32]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("q_only", [False, True], ids=["qkv", "q_only"])
@pytest.mark.parametrize("tokens,heads,kv_heads,head_dim", [(1, 2, 1, 32), (5, 4, 2, 64), (3, 2, 1, 256)])
def test_kernel_matches_reference(tokens, heads, kv_heads, head_dim, q_only, dtype):
    check(qkv_case(tokens, heads, kv_heads, head_dim, dtype, q_only=q_only, seed=tokens + head_dim))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_partial_rope_leaves_the_unrotated_part_normalized_only(dtype):
    """Proportional RoPE: zero frequencies past the rotated quarter; those
    elements come out as the rounded norm (cos 1, sin 0), the others do not."""
    case = qkv_case(4, 2, 1, 64, dtype, rotated=16, seed=3)
    q_before = case.q.clone()
    check(case)
    normed = (
        q_before.float().reshape(4, 2, 64)
        * torch.rsqrt(q_before.float().reshape(4, 2, 64).pow(2).mean(-1, keepdim=True) + EPS)
        * case.w_q.float()
    ).to(dtype)
    got = case.q.reshape(4, 2, 64)
    # Angles 8..31 of each half are not rotated.
    assert_close_to_reference(got[..., 8:32], normed[..., 8:32], "unrotated first half")
    assert_close_to_reference(got[..., 40:64], normed[..., 40:64], "unrotated second half")
    assert (got[..., :8] - normed[..., :8]).abs().max() > 1e-2


def test_int32_positions_and_strided_views_stay_in_place():
    case = qkv_case(6, 4, 2, 32, torch.bfloat16, positions_dtype=torch.int32, seed=9)
    ptrs = (case.q.data_ptr(), case.k.data_ptr(), case.v.data_ptr())
    assert case.k.stride(0) == 4 * 32 + 2 * 2 * 32
    check(case)
    assert (case.q.data_ptr(), case.k.data_ptr(), case.v.data_ptr()) == ptrs


def test_rounding_after_the_norm_is_observable():
    """Skipping the rounding between norm and RoPE changes many bf16 outputs: the
    comparison would catch a kernel that fuses without it."""
    case = qkv_case(64, 4, 2, 64, torch.bfloat16, seed=5)
    want_q, _, _ = case.expected()
    from sglang_gemma4.kernels import qkv_norm_rope as mod

    normed = mod._head_rmsnorm(case.q, case.w_q, 4, 64, EPS)
    unrounded = mod._rope(normed, case.positions, case.cache, 64).to(torch.bfloat16).reshape(case.q.shape)
    with pytest.raises(AssertionError, match="differ"):
        assert_close_to_reference(unrounded, want_q, "q")


def test_supports_and_errors():
    case = qkv_case(3, 2, 1, 32, torch.bfloat16)
    args = (case.q, case.k, case.v, case.positions, case.cache, case.w_q, case.w_k)
    heads = case.heads
    assert supports(*args, **heads)
    bad = {
        "head_dim_not_pow2": (args, dict(heads, head_dim=24)),
        "k_without_v": ((case.q, case.k, None, *args[3:]), heads),
        "k_without_weight": ((*args[:6], None), heads),
        "float64": ((case.q.double(), *args[1:]), heads),
        "short_positions": ((*args[:3], case.positions[:2], *args[4:]), heads),
        "float_positions": ((*args[:3], case.positions.float(), *args[4:]), heads),
        "cache_too_narrow": ((*args[:4], cos_sin_cache(16, 16), *args[5:]), heads),
        "wrong_head_count": (args, dict(heads, num_q_heads=3)),
        "meta": (tuple(a.to("meta") for a in args), heads),
    }
    for name, (a, h) in bad.items():
        assert not supports(*a, **h), name
        with pytest.raises(ValueError, match="unsupported inputs"):
            qkv_norm_rope(*a, EPS, **h)
    empty = qkv_case(0, 2, 1, 32, torch.bfloat16)
    empty.run()  # no launch, no error


def test_reference_leaves_inputs_untouched():
    case = qkv_case(3, 2, 1, 32, torch.float32)
    before = case.q.clone()
    q, k, v = qkv_norm_rope_reference(
        case.q, case.k, case.v, case.positions, case.cache, case.w_q, case.w_k, EPS, **case.heads
    )
    assert torch.equal(case.q, before) and q.shape == case.q.shape and k.shape == v.shape == case.k.shape
