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
from functools import partial
from pathlib import Path

import pytest
import torch
import triton

from sglang_gemma4.kernels.triple_rmsnorm import (
    TripleNormLaunch,
    launch_config,
    post_attn_norm_add,
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
    check_post_attn,
    triple_norm_inputs,
)

pytestmark = pytest.mark.gpu

HIDDENS = [2816, 5376]  # 26B-A4B, 31B
TOKENS = [0, 1, 3, 17, 256, 4096]
DTYPES = [torch.bfloat16, torch.float16, torch.float32]

NUM_EXPERTS, TOP_K = 128, 8
ROUTING_TOKENS = 65536
ROUTING_AGREEMENT_MIN = 0.999


def variants(hidden: int) -> dict[str, TripleNormLaunch]:
    """Every kernel variant: padded and exact rows (1 and 2 per program, the
    launch table's warps and others), chunks dividing the row or not, hints;
    chunk loops rolled (Inductor's 1024 x 8 warps and 2048 x 16) and unrolled,
    the sums of s and r paired in one reduction; the segmented kernel's whole
    chunks and exact tails (2816 = 2048 + 512 + 256 or 2 x 1024 + 512 + 256,
    5376 = 2 x 2048 + 1024 + 256 or 5 x 1024 + 256), its residual prefetched
    into L1 or L2 or not."""
    padded = triton.next_power_of_2(hidden)
    return {
        "row_padded": TripleNormLaunch("row", padded, 1, 16),
        "row_padded_2x_hints": TripleNormLaunch("row", padded, 2, 32, stream_hints=True),
        "row_exact": TripleNormLaunch("row", hidden, 1, 8),
        "row_exact_w4": TripleNormLaunch("row", hidden, 1, 4),
        "row_exact_2x_hints": TripleNormLaunch("row", hidden, 2, 16, stream_hints=True),
        "chunked_256_hints": TripleNormLaunch("chunked", 256, 1, 1, stream_hints=True),
        "chunked_512": TripleNormLaunch("chunked", 512, 1, 2),
        "chunked_1024": TripleNormLaunch("chunked", 1024, 1, 4),
        "chunked_2048_w8": TripleNormLaunch("chunked", 2048, 1, 8),
        "chunked_1024_w8_rolled": TripleNormLaunch("chunked", 1024, 1, 8, rolled=True),
        "chunked_2048_w16_rolled_paired": TripleNormLaunch("chunked", 2048, 1, 16, rolled=True, paired_sums=True),
        "chunked_2048_w8_hints_paired": TripleNormLaunch("chunked", 2048, 1, 8, stream_hints=True, paired_sums=True),
        "row_exact_paired": TripleNormLaunch("row", hidden, 1, 8, paired_sums=True),
        "row_padded_w8_paired": TripleNormLaunch("row", padded, 1, 8, paired_sums=True),
        "persistent_exact_2x": TripleNormLaunch("persistent", hidden, 1, 8, programs_per_sm=2),
        "persistent_padded_hints": TripleNormLaunch("persistent", padded, 1, 16, stream_hints=True, programs_per_sm=1),
        "segmented_2048_w8_hints_paired": TripleNormLaunch(
            "segmented", 2048, 1, 8, stream_hints=True, paired_sums=True
        ),
        "segmented_1024_w4_rolled": TripleNormLaunch("segmented", 1024, 1, 4, rolled=True),
        "segmented_1024_w4_paired": TripleNormLaunch("segmented", 1024, 1, 4, paired_sums=True),
        "segmented_1024_w4_prefetch_l2": TripleNormLaunch("segmented", 1024, 1, 4, paired_sums=True, prefetch="L2"),
        "segmented_2048_w8_prefetch_l1": TripleNormLaunch("segmented", 2048, 1, 8, stream_hints=True, prefetch="L1"),
    }


VARIANTS = list(variants(2816))
# Each variant in bf16 (the sweep has compiled those), one of each code path in
# every dtype (each dtype is a compilation: keep the device run short).
VARIANT_DTYPES = [(v, torch.bfloat16) for v in VARIANTS] + [
    (v, d)
    for v in ("row_padded", "row_exact", "chunked_256_hints", "chunked_1024_w8_rolled", "row_exact_paired",
              "segmented_1024_w4_rolled")
    for d in (torch.float16, torch.float32)
]


_run = partial(check_post_attn, device="cuda")
_run_norm_add = partial(check_post_attn, outputs=2, device="cuda")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("hidden", HIDDENS)
def test_kernel_matches_reference(hidden, tokens, dtype):
    _run(tokens, hidden, dtype, seed=tokens)


@pytest.mark.parametrize("variant,dtype", VARIANT_DTYPES, ids=str)
@pytest.mark.parametrize("hidden", HIDDENS)
def test_every_variant_at_any_batch(hidden, dtype, variant):
    """launch_config picks by batch size; each variant is right at any size, a
    partial last program included."""
    for tokens in (3, 129):
        _run(tokens, hidden, dtype, launch=variants(hidden)[variant], seed=tokens)


# (variant, the same launch without the rolled loops or the paired sums)
SAME_BITS = [
    ("chunked_1024_w8_rolled", TripleNormLaunch("chunked", 1024, 1, 8)),
    ("chunked_2048_w16_rolled_paired", TripleNormLaunch("chunked", 2048, 1, 16, rolled=True)),
    ("chunked_2048_w8_hints_paired", TripleNormLaunch("chunked", 2048, 1, 8, stream_hints=True)),
    ("row_exact_paired", TripleNormLaunch("row", 0, 1, 8)),
    ("row_padded_w8_paired", TripleNormLaunch("row", 0, 1, 8)),
    ("segmented_1024_w4_rolled", TripleNormLaunch("segmented", 1024, 1, 4)),
    ("segmented_1024_w4_prefetch_l2", TripleNormLaunch("segmented", 1024, 1, 4, paired_sums=True)),
    ("segmented_2048_w8_prefetch_l1", TripleNormLaunch("segmented", 2048, 1, 8, stream_hints=True)),
]


@pytest.mark.parametrize("variant,plain", SAME_BITS, ids=[v for v, _ in SAME_BITS])
@pytest.mark.parametrize("hidden", HIDDENS)
def test_rolled_loops_and_paired_sums_keep_the_bits(hidden, variant, plain):
    """Rolling adds the chunks in the same order; a paired reduction combines
    each operand as its own tl.sum would (same tree); a prefetch computes
    nothing: bf16 outputs bit for bit."""
    launch = variants(hidden)[variant]
    if plain.kernel == "row":
        plain = plain._replace(block=launch.block)
    attn_out, residual, weights = triple_norm_inputs(257, hidden, torch.bfloat16, device="cuda", seed=11)
    expected = post_attn_triple_rmsnorm(attn_out, residual, *weights, EPS, launch=plain)
    actual = post_attn_triple_rmsnorm(attn_out, residual, *weights, EPS, launch=launch)
    for name, a, e in zip(OUTPUT_NAMES, actual, expected):
        assert torch.equal(a, e), name


@pytest.mark.parametrize("variant", ["persistent_exact_2x", "persistent_padded_hints"])
@pytest.mark.parametrize("hidden", HIDDENS)
def test_persistent_rows_agree_with_the_row_kernel(hidden, variant):
    """At a batch where each persistent program walks several rows, both modes
    agree with the row kernel of the same row shape: the same operations per
    row, though not always the same bits (on the H200, 5376 exact rows in 8
    warps: ptxas contracted another multiply-add of a sum of squares into an
    FMA; the CPU tests, which have no FMA, compare bits)."""
    launch = variants(hidden)[variant]
    row = launch._replace(kernel="row", programs_per_sm=0)
    attn_out, residual, weights = triple_norm_inputs(3001, hidden, torch.bfloat16, device="cuda", seed=11)
    for fn, n_weights in ((post_attn_triple_rmsnorm, 4), (post_attn_norm_add, 2)):
        expected = fn(attn_out, residual, *weights[:n_weights], EPS, launch=row)
        actual = fn(attn_out, residual, *weights[:n_weights], EPS, launch=launch)
        for name, a, e in zip(OUTPUT_NAMES, actual, expected):
            assert_within_one_rounding(a, e, name)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scale", SCALES.values(), ids=SCALES.keys())
@pytest.mark.parametrize("hidden", HIDDENS)
def test_kernel_magnitudes_and_zero_row(hidden, scale, dtype):
    outputs = _run(257, hidden, dtype, scale=scale, zero_row=True, seed=3)
    for out in outputs:
        assert torch.count_nonzero(out[128]) == 0


# The table's row (33 rows) and segmented (4096) kernels, and the persistent
# one with several rows per program.
@pytest.mark.parametrize("tokens,variant", [(33, None), (4096, None), (3001, "persistent_exact_2x")])
def test_residual_updated_in_place(tokens, variant):
    attn_out, residual, weights = triple_norm_inputs(tokens, 2816, torch.bfloat16, device="cuda", seed=5)
    expected = triple_rmsnorm_reference(attn_out, residual, *weights, EPS)
    launch = variants(2816)[variant] if variant else None
    outputs = post_attn_triple_rmsnorm(attn_out, residual, *weights, EPS, residual_out=residual, launch=launch)
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


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("hidden", NORM_ADD_HIDDENS)
def test_norm_add_matches_reference(hidden, tokens, dtype):
    _run_norm_add(tokens, hidden, dtype, seed=tokens)


@pytest.mark.parametrize("variant,dtype", VARIANT_DTYPES, ids=str)
@pytest.mark.parametrize("hidden", NORM_ADD_HIDDENS)
def test_norm_add_every_variant_at_any_batch(hidden, dtype, variant):
    for tokens in (3, 129):
        _run_norm_add(tokens, hidden, dtype, launch=variants(hidden)[variant], seed=tokens)


@pytest.mark.parametrize("scale", SCALES.values(), ids=SCALES.keys())
@pytest.mark.parametrize("tokens", [33, 4096])
@pytest.mark.parametrize("hidden", NORM_ADD_HIDDENS)
def test_norm_add_in_place_magnitudes_and_zero_row(hidden, tokens, scale):
    outputs = _run_norm_add(tokens, hidden, torch.bfloat16, in_place=True, scale=scale, zero_row=True, seed=3)
    for out in outputs:
        assert torch.count_nonzero(out[tokens // 2]) == 0


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("tokens", [3, 4096])
@pytest.mark.parametrize("hidden", [2816, 5376])
def test_norm_add_is_the_triple_without_its_last_two_outputs(hidden, tokens, variant):
    """Same launch, the two modes: r and dense_in agree to within one final
    rounding. Not bit for bit: the compiler may order a mode's fp32 row sums
    differently (seen on the H200 for 2816 x 4096, exact rows, 2 per program,
    16 warps: dense_in differed)."""
    attn_out, residual, weights = triple_norm_inputs(tokens, hidden, torch.bfloat16, device="cuda", seed=8)
    launch = variants(hidden)[variant]
    pair = post_attn_norm_add(attn_out, residual, *weights[:2], EPS, launch=launch)
    triple = post_attn_triple_rmsnorm(attn_out, residual, *weights, EPS, launch=launch)
    for name, a, b in zip(OUTPUT_NAMES[:2], pair, triple):
        assert_within_one_rounding(a, b, name)


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
    # Every variant, and launch_config's choice for decode and for this many tokens.
    launches = {**variants(hidden), "table_1": launch_config(hidden, 1), "table_all": launch_config(hidden, ROUTING_TOKENS)}
    for kernel, launch in launches.items():
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
