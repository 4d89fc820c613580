"""The triple-RMSNorm reference rounds where SGLang 0.5.23's four launches do.

No Triton kernel runs here. Two independent checks of
``triple_rmsnorm_reference``: against SGLang's own ``RMSNorm.forward_native``
(the CPU path, whose rounding points are those of the CUDA kernels, see the
kernel module's docstring), and against a float64 model of each CUDA kernel.
"""

import pytest
import torch

from sglang_gemma4.kernels import support
from sglang_gemma4.kernels.triple_rmsnorm import (
    post_attn_norm_add_reference,
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


def _sglang_native_sequence(attn_out, residual, w_post, w_pre_ff, w_router, w_pre_ff_2):
    """SGLang's op sequence through ``RMSNorm.forward_native``.

    The router's norm is built as an ``RMSNorm`` carrying the folded weight:
    that is what ``Gemma4RMSNorm.forward_cuda`` computes (``rmsnorm(x, weight)``);
    its ``forward_native`` drops the weight (DESIGN.md section 5).
    """
    from sglang.srt.layers.layernorm import RMSNorm

    def norm(weight):
        module = RMSNorm(weight.numel(), eps=EPS).to(weight.dtype)
        module.weight.data.copy_(weight)
        return module

    post_attn = norm(w_post).forward_native(attn_out)
    dense_in, r = norm(w_pre_ff).forward_native(post_attn, residual.clone())
    router_in = norm(w_router).forward_native(r)
    moe_in = norm(w_pre_ff_2).forward_native(r)
    return r, dense_in, router_in, moe_in


def _cuda_kernels_in_float64(attn_out, residual, w_post, w_pre_ff, w_router, w_pre_ff_2):
    """Each FlashInfer kernel SGLang launches, in float64, storing in the activation dtype."""
    dtype = attn_out.dtype

    def rmsnorm(x64, w):
        return x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + EPS) * w.double()

    a = rmsnorm(attn_out.double(), w_post).to(dtype)  # rmsnorm: output stored
    s = a.double() + residual.double()  # fused_add_rmsnorm: add in fp32 registers
    r = s.to(dtype)  # ...residual stored rounded
    dense_in = rmsnorm(s, w_pre_ff).to(dtype)  # ...normalizes the unrounded sum
    router_in = rmsnorm(r.double(), w_router).to(dtype)  # rmsnorm reads stored r
    moe_in = rmsnorm(r.double(), w_pre_ff_2).to(dtype)
    return r, dense_in, router_in, moe_in


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("hidden", [128, 1000, 2816])
def test_reference_equals_sglang_native_sequence(dtype, hidden):
    attn_out, residual, weights = triple_norm_inputs(64, hidden, dtype, zero_row=True)
    ours = triple_rmsnorm_reference(attn_out, residual, *weights, EPS)
    theirs = _sglang_native_sequence(attn_out, residual, *weights)
    for name, a, b in zip(OUTPUT_NAMES, ours, theirs):
        assert a.dtype == dtype
        assert torch.equal(a, b), f"{name}: {(a.float() - b.float()).abs().max()}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_norm_add_reference_equals_sglang_native_pair(dtype):
    """The 2-output reference (dense/PLE layers: rmsnorm, then fused_add_rmsnorm)."""
    attn_out, residual, weights = triple_norm_inputs(64, 1000, dtype, zero_row=True, seed=9)
    ours = post_attn_norm_add_reference(attn_out, residual, *weights[:2], EPS)
    theirs = _sglang_native_sequence(attn_out, residual, *weights)[:2]
    assert len(ours) == 2
    for name, a, b in zip(OUTPUT_NAMES, ours, theirs):
        assert a.dtype == dtype
        assert torch.equal(a, b), f"{name}: {(a.float() - b.float()).abs().max()}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scale", SCALES.values(), ids=SCALES.keys())
def test_reference_matches_float64_kernels(dtype, scale):
    """fp32 vs float64 arithmetic only moves rare values across a rounding boundary."""
    attn_out, residual, weights = triple_norm_inputs(256, 1000, dtype, seed=3, scale=scale)
    ours = triple_rmsnorm_reference(attn_out, residual, *weights, EPS)
    exact = _cuda_kernels_in_float64(attn_out, residual, *weights)
    for name, a, b in zip(OUTPUT_NAMES, ours, exact):
        assert_within_one_rounding(a, b, name)


def test_rounding_points_matter_in_bf16():
    """Normalizing the router input from the unrounded sum instead of the stored
    residual changes bf16 outputs: the test above would see a misplaced rounding."""
    attn_out, residual, weights = triple_norm_inputs(256, 1000, torch.bfloat16, seed=5)
    _, _, router_in, _ = triple_rmsnorm_reference(attn_out, residual, *weights, EPS)
    x = attn_out.float()
    a = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * weights[0].float()).bfloat16()
    s = a.float() + residual.float()
    from_sum = (s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + EPS) * weights[2].float()).bfloat16()
    with pytest.raises(AssertionError, match="elements differ"):
        assert_within_one_rounding(from_sum, router_in, "router_in from the unrounded sum")


@pytest.mark.skipif(support.triton_interpreting(), reason="checks the compiled-Triton device rule")
def test_cpu_tensors_need_the_interpreter():
    attn_out, residual, weights = triple_norm_inputs(4, 128, torch.bfloat16)
    assert not supports(attn_out, residual, weights)
