"""The triple-RMSNorm kernel on the GPU at the real shapes, and routing stability.

Runs on a CUDA machine with torch + triton and no sglang::

    PYTHONPATH=python python3 -m pytest tests/gpu/test_triple_rmsnorm_gpu.py -q

Outputs are compared with the fp32 reference (torch ops on the same GPU) to
within one final rounding (tests/triple_rmsnorm_checks.py): Triton and torch sum
the squares in different orders and compute rsqrt differently, which moves a
rare value across a bf16/fp16 rounding boundary; the share of bitwise-identical
elements is recorded in the routing JSON. With ``$OUT`` set, the routing figure
is written to ``$OUT/triple_rmsnorm_routing.json``.
"""

import json
import os
from pathlib import Path

import pytest
import torch

from sglang_gemma4.kernels.triple_rmsnorm import (
    ROW_KERNEL_MAX_ROWS,
    launch_config,
    post_attn_norm_add,
    post_attn_norm_add_reference,
    post_attn_triple_rmsnorm,
    supports,
    supports_norm_add,
    triple_rmsnorm_reference,
)
from tests.triple_rmsnorm_checks import (
    EPS,
    OUTPUT_NAMES,
    SCALES,
    assert_within_one_rounding,
    triple_norm_inputs,
)

pytestmark = pytest.mark.gpu

HIDDENS = [2816, 5376]  # 26B-A4B, 31B
TOKENS = [0, 1, 3, 17, 256, 4096]
DTYPES = [torch.bfloat16, torch.float16, torch.float32]

NUM_EXPERTS, TOP_K = 128, 8
ROUTING_TOKENS = 65536
ROUTING_AGREEMENT_MIN = 0.999


def _run(tokens, hidden, dtype, launch=None, **input_kwargs):
    attn_out, residual, weights = triple_norm_inputs(tokens, hidden, dtype, device="cuda", **input_kwargs)
    expected = triple_rmsnorm_reference(attn_out, residual, *weights, EPS)
    actual = post_attn_triple_rmsnorm(attn_out, residual, *weights, EPS, launch=launch)
    for name, a, e in zip(OUTPUT_NAMES, actual, expected):
        assert_within_one_rounding(a, e, name)
    return actual


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("hidden", HIDDENS)
def test_kernel_matches_reference(hidden, tokens, dtype):
    _run(tokens, hidden, dtype, seed=tokens)


@pytest.mark.parametrize("kernel", ["row", "chunked"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", HIDDENS)
def test_both_kernels_at_any_batch(hidden, dtype, kernel):
    """launch_config picks by batch size; each kernel is right on the other's sizes too."""
    few, many = 3, ROW_KERNEL_MAX_ROWS + 1
    launch = launch_config(hidden, few if kernel == "row" else many)
    assert launch.kernel == kernel
    for tokens in (few, many):
        _run(tokens, hidden, dtype, launch=launch, seed=tokens)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scale", SCALES.values(), ids=SCALES.keys())
@pytest.mark.parametrize("hidden", HIDDENS)
def test_kernel_magnitudes_and_zero_row(hidden, scale, dtype):
    outputs = _run(257, hidden, dtype, scale=scale, zero_row=True, seed=3)
    for out in outputs:
        assert torch.count_nonzero(out[128]) == 0


@pytest.mark.parametrize("tokens", [33, 4096])  # the row and the chunked kernel
def test_residual_updated_in_place(tokens):
    attn_out, residual, weights = triple_norm_inputs(tokens, 2816, torch.bfloat16, device="cuda", seed=5)
    expected = triple_rmsnorm_reference(attn_out, residual, *weights, EPS)
    outputs = post_attn_triple_rmsnorm(attn_out, residual, *weights, EPS, residual_out=residual)
    assert outputs[0].data_ptr() == residual.data_ptr()
    for name, a, e in zip(OUTPUT_NAMES, outputs, expected):
        assert_within_one_rounding(a, e, name)


def test_supports_cuda_rejects_what_it_should():
    attn_out, residual, weights = triple_norm_inputs(4, 2816, torch.bfloat16, device="cuda")
    assert supports(attn_out, residual, weights)
    assert not supports(attn_out.t(), residual.t(), weights)
    assert not supports(attn_out[None], residual[None], weights)
    assert not supports(attn_out.cpu(), residual.cpu(), [w.cpu() for w in weights])
    assert not supports(attn_out, residual, [w.cpu() for w in weights])
    assert not supports(attn_out[:0], residual[:0], weights)


# --------------------------------------------------------------------------- 2-output mode

NORM_ADD_HIDDENS = [1536, 2560, 5376]  # E2B, E4B, 31B


def _run_norm_add(tokens, hidden, dtype, launch=None, *, in_place=False, **input_kwargs):
    attn_out, residual, weights = triple_norm_inputs(tokens, hidden, dtype, device="cuda", **input_kwargs)
    expected = post_attn_norm_add_reference(attn_out, residual, *weights[:2], EPS)
    residual_out = residual if in_place else None
    actual = post_attn_norm_add(attn_out, residual, *weights[:2], EPS, residual_out=residual_out, launch=launch)
    if in_place:
        assert actual[0].data_ptr() == residual.data_ptr()
    for name, a, e in zip(OUTPUT_NAMES[:2], actual, expected):
        assert_within_one_rounding(a, e, name)
    return actual


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("hidden", NORM_ADD_HIDDENS)
def test_norm_add_matches_reference(hidden, tokens, dtype):
    _run_norm_add(tokens, hidden, dtype, seed=tokens)


@pytest.mark.parametrize("kernel", ["row", "chunked"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", NORM_ADD_HIDDENS)
def test_norm_add_both_kernels_at_any_batch(hidden, dtype, kernel):
    few, many = 3, ROW_KERNEL_MAX_ROWS + 1
    launch = launch_config(hidden, few if kernel == "row" else many)
    assert launch.kernel == kernel
    for tokens in (few, many):
        _run_norm_add(tokens, hidden, dtype, launch=launch, seed=tokens)


@pytest.mark.parametrize("scale", SCALES.values(), ids=SCALES.keys())
@pytest.mark.parametrize("tokens", [33, 4096])
@pytest.mark.parametrize("hidden", NORM_ADD_HIDDENS)
def test_norm_add_in_place_magnitudes_and_zero_row(hidden, tokens, scale):
    outputs = _run_norm_add(tokens, hidden, torch.bfloat16, in_place=True, scale=scale, zero_row=True, seed=3)
    for out in outputs:
        assert torch.count_nonzero(out[tokens // 2]) == 0


@pytest.mark.parametrize("tokens", [3, 4096])
@pytest.mark.parametrize("hidden", [2816, 5376])
def test_norm_add_is_the_triple_without_its_last_two_outputs(hidden, tokens):
    attn_out, residual, weights = triple_norm_inputs(tokens, hidden, torch.bfloat16, device="cuda", seed=8)
    launch = launch_config(hidden, tokens)
    pair = post_attn_norm_add(attn_out, residual, *weights[:2], EPS, launch=launch)
    triple = post_attn_triple_rmsnorm(attn_out, residual, *weights, EPS, launch=launch)
    for name, a, b in zip(OUTPUT_NAMES[:2], pair, triple):
        assert torch.equal(a, b), name


def test_supports_norm_add_cuda():
    attn_out, residual, weights = triple_norm_inputs(4, 2560, torch.bfloat16, device="cuda")
    assert supports_norm_add(attn_out, residual, weights[:2])
    assert not supports_norm_add(attn_out, residual, weights)
    assert not supports_norm_add(attn_out.cpu(), residual.cpu(), [w.cpu() for w in weights[:2]])


def _top_k_ids(router_in: torch.Tensor, proj_weight: torch.Tensor) -> torch.Tensor:
    """The router GEMM as SGLang runs it (bf16 in, bf16 logits), then the top-k
    expert ids, sorted so that two selections compare as sets."""
    logits = torch.nn.functional.linear(router_in, proj_weight)
    return torch.topk(logits, TOP_K, dim=-1).indices.sort(dim=-1).values


def test_routing_stability_bf16():
    """Fused and unfused router inputs select the same top-8 of 128 experts.

    The unfused side is the reference, i.e. SGLang's four-launch rounding built
    from torch ops. For scale, the same figure for a fusion that normalizes the
    router input from the unrounded fp32 sum (one rsqrt for all three outputs)
    is recorded too.
    """
    hidden = 2816
    attn_out, residual, weights = triple_norm_inputs(ROUTING_TOKENS, hidden, torch.bfloat16, device="cuda", seed=17)
    gen = torch.Generator(device="cuda").manual_seed(23)
    proj_weight = (torch.randn(NUM_EXPERTS, hidden, device="cuda", generator=gen) * hidden**-0.5).bfloat16()

    _, _, unfused_router_in, _ = triple_rmsnorm_reference(attn_out, residual, *weights, EPS)
    unfused_ids = _top_k_ids(unfused_router_in, proj_weight)
    agreement, identical = {}, {}
    # Both kernels, whichever launch_config picks for this many tokens.
    for kernel, rows in (("row", 1), ("chunked", ROUTING_TOKENS)):
        launch = launch_config(hidden, rows)
        _, _, fused_router_in, _ = post_attn_triple_rmsnorm(attn_out, residual, *weights, EPS, launch=launch)
        fused_ids = _top_k_ids(fused_router_in, proj_weight)
        agreement[kernel] = (fused_ids == unfused_ids).all(dim=-1).float().mean().item()
        identical[kernel] = (fused_router_in == unfused_router_in).float().mean().item()

    x = attn_out.float()
    a = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * weights[0].float()).bfloat16()
    s = a.float() + residual.float()
    router_from_sum = (s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + EPS) * weights[2].float()).bfloat16()
    from_sum_ids = _top_k_ids(router_from_sum, proj_weight)
    agreement_from_sum = (from_sum_ids == unfused_ids).all(dim=-1).float().mean().item()

    result = {
        "tokens": ROUTING_TOKENS,
        "hidden": hidden,
        "num_experts": NUM_EXPERTS,
        "top_k": TOP_K,
        "dtype": "bfloat16",
        "device": torch.cuda.get_device_name(),
        "fused_vs_unfused_topk_agreement": min(agreement.values()),
        "fused_vs_unfused_topk_agreement_by_kernel": agreement,
        "router_in_bitwise_identical_share_by_kernel": identical,
        "router_from_unrounded_sum_vs_unfused_topk_agreement": agreement_from_sum,
        "threshold": ROUTING_AGREEMENT_MIN,
    }
    print(json.dumps(result))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "triple_rmsnorm_routing.json").write_text(json.dumps(result, indent=1) + "\n")
    assert min(agreement.values()) >= ROUTING_AGREEMENT_MIN, result
