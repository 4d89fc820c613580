"""End-of-layer kernels (next layer's input norm folded in) against their fp32
references, on CPU tensors under Triton's interpreter, tiny shapes; and which
inputs the ``supports_*`` predicates turn away.

The GPU twin (tests/gpu/test_end_of_layer_norm_gpu.py) runs the real shapes.
"""

import dataclasses

import pytest
import torch

from sglang_gemma4.kernels import end_of_layer_norm as eol
from sglang_gemma4.kernels.support import MAX_FUSED_ROW
from tests.end_of_layer_norm_checks import (
    EPS,
    KINDS,
    SCALES,
    assert_within_one_rounding,
    check_case,
    check_strided_over_residual,
    end_of_layer_case,
)

pytestmark = pytest.mark.interpret

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
SHAPES = [(1, 128), (3, 128), (17, 128), (3, 1000), (1, 2816)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens,hidden", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_kernel_matches_reference(kind, tokens, hidden, dtype):
    check_case(end_of_layer_case(kind, tokens, hidden, dtype, seed=tokens + hidden))


@pytest.mark.parametrize("scale", SCALES.values(), ids=SCALES.keys())
@pytest.mark.parametrize("kind", KINDS)
def test_magnitudes_and_zero_row(kind, scale):
    case = end_of_layer_case(kind, 9, 128, torch.bfloat16, scale=scale, zero_row=True, seed=5)
    h, next_in = check_case(case)
    # rsqrt(0 + eps) is finite: an all-zero row (residual included) stays zero.
    assert torch.count_nonzero(h[4]) == 0 and torch.count_nonzero(next_in[4]) == 0


def test_fp32_scalar_with_bf16_activations():
    # SGLang's fused dense/MoE kernels read the scalar as fp32 whatever its dtype.
    for kind in ("dense", "moe"):
        check_case(end_of_layer_case(kind, 5, 128, torch.bfloat16, scalar_dtype=torch.float32, seed=3))


@pytest.mark.parametrize("kind", KINDS)
def test_rounding_points_are_observable(kind):
    """The bf16 comparison would catch a misplaced rounding: the PLE layer's
    three roundings and the dense layer's single rounding disagree on far more
    elements than :func:`assert_within_one_rounding` allows."""
    case = end_of_layer_case(kind if kind != "moe" else "dense", 64, 128, torch.bfloat16, seed=9)
    x, w, residual, scalar, _ = case.args
    once = eol.dense_end_of_layer_reference(x, w, residual, scalar, EPS)
    thrice = eol.ple_end_of_layer_reference(x, w, residual, scalar, EPS)
    with pytest.raises(AssertionError, match="elements differ"):
        assert_within_one_rounding(once, thrice, "dense vs ple rounding")


def test_next_in_normalizes_the_rounded_stream():
    """``next_in`` is the norm of the *stored* bf16 ``h``: the norm of the unrounded
    fp32 stream differs on many elements."""
    case = end_of_layer_case("dense", 64, 128, torch.bfloat16, seed=21)
    x, w, residual, scalar, w_next = case.args
    _, next_in = case.run()
    unrounded = (eol._rmsnorm_fp32(x, w, EPS) + residual.float()) * scalar.float()
    from_unrounded = eol._rmsnorm_fp32(unrounded, w_next, EPS).to(torch.bfloat16)
    assert (next_in != from_unrounded).float().mean().item() > 0.01


@pytest.mark.parametrize("kind", KINDS)
def test_written_in_place_over_residual(kind):
    case = end_of_layer_case(kind, 5, 128, torch.bfloat16, seed=11)
    want_h, want_next = case.expected()
    residual = case.residual
    h, next_in = case.run(out=residual)
    assert h.data_ptr() == residual.data_ptr()
    assert_within_one_rounding(h, want_h, "h")
    assert_within_one_rounding(next_in, want_next, "next_in")


def test_row_strided_inputs():
    case = end_of_layer_case("moe", 6, 128, torch.float16, seed=2)
    wide = torch.randn(6, 200, dtype=torch.float16)
    args = list(case.args)
    wide[:, :128] = args[0]
    args[0] = wide[:, :128]  # rows spaced 200 apart, as a split GEMM output would be
    assert args[0].stride(0) == 200
    check_case(dataclasses.replace(case, args=tuple(args)))


# (1, 8): one row per program in 8 warps (the wide rows' shape) on a tiny row.
@pytest.mark.parametrize("rows_per_program,num_warps", [(1, 1), (4, 2), (16, 8), (1, 8)])
def test_launch_overrides_do_not_change_results(rows_per_program, num_warps):
    case = end_of_layer_case("moe", 17, 128, torch.bfloat16, seed=13)
    default = case.run()
    launch = eol.row_launch(128)._replace(rows_per_program=rows_per_program, num_warps=num_warps)
    other = case.run(launch=launch)
    for a, b in zip(default, other):
        assert torch.equal(a, b)


def test_launch_config():
    L = eol.EndOfLayerLaunch
    # Few rows: whole rows in registers, padded to a power of two.
    assert eol.launch_config(128, 1) == L(128, 16, 4, "row")
    assert eol.launch_config(1536, 1) == L(2048, 1, 8, "row")
    assert eol.launch_config(2816, 1) == L(4096, 1, 16, "row")
    assert eol.launch_config(2816, 256) == L(4096, 1, 16, "row")
    assert eol.launch_config(5376, 128) == L(8192, 1, 32, "row")
    # Many rows: each width's measured launches from their row counts, each bucket up to the next.
    for hidden, buckets in eol.PREFILL_TABLE.items():
        assert eol.launch_config(hidden, buckets[0][0] - 1) == eol.row_launch(hidden)
        for (min_rows, launch), (next_min, _) in zip(buckets, buckets[1:] + ((1 << 62, None),)):
            assert eol.launch_config(hidden, min_rows) == launch
            assert eol.launch_config(hidden, min(next_min - 1, 1 << 20)) == launch
    assert eol.launch_config(2816, 384) == L(1024, 1, 4, "chunked", stream_hints=True)
    assert eol.launch_config(2816, 1023) == L(1024, 1, 4, "chunked")
    assert eol.launch_config(2816, 4095) == L(2816, 1, 8, "persistent", programs_per_sm=2)
    assert eol.launch_config(2816, 16384) == L(1024, 1, 4, "chunked", prefetch="L2")
    assert eol.launch_config(5376, 192) == L(8192, 1, 16, "row")
    assert eol.launch_config(5376, 512) == L(2048, 1, 8, "chunked", stream_hints=True)
    assert eol.launch_config(5376, 1024) == L(2048, 1, 4, "chunked", stream_hints=True)
    assert eol.launch_config(5376, 2048) == L(2048, 1, 4, "chunked")
    assert eol.launch_config(5376, 16384) == L(2048, 1, 4, "chunked", stream_hints=True)
    assert eol.launch_config(1536, 4096).kernel == "row"
    # Other widths: the default rule; rows narrower than half a chunk stay whole.
    ((min_rows, default),) = eol.PREFILL_DEFAULT
    assert eol.launch_config(4096, min_rows) == default
    assert eol.launch_config(4096, min_rows - 1).kernel == "row"
    assert eol.launch_config(default.block_h // 2, 16384).kernel == "row"
    # The row kernel: a warp per 256 lanes of the padded row, up to 32.
    assert eol.row_launch(2816) == L(4096, 1, 16, "row")
    assert eol.row_launch(5376) == L(8192, 1, 32, "row")


def _chunked(chunk: int, num_warps: int = 2, unroll: int = 0) -> eol.EndOfLayerLaunch:
    return eol.EndOfLayerLaunch(chunk, 1, num_warps, "chunked", unroll)


# (tokens, hidden, chunk): several chunks with a partial last one (1000, 333),
# chunks that tile the row exactly (128 / 32), and a single chunk.
CHUNKED_SHAPES = [(3, 128, 32), (2, 1000, 256), (3, 333, 128), (2, 128, 128)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens,hidden,chunk", CHUNKED_SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_chunked_kernel_matches_reference(kind, tokens, hidden, chunk, dtype):
    check_case(end_of_layer_case(kind, tokens, hidden, dtype, seed=tokens * hidden), launch=_chunked(chunk))


# (hidden, chunk, unroll): 6 chunks, the last partial, looped 1, 4 (a remainder
# of 2) and 8 (more than the chunks) at a time; 2 chunks; a single chunk.
UNROLLED_SHAPES = [(333, 64, 1), (333, 64, 4), (333, 64, 8), (200, 128, 1), (100, 128, 2)]


@pytest.mark.parametrize("hidden,chunk,unroll", UNROLLED_SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_rolled_passes_match_reference_and_unrolled_bits(kind, hidden, chunk, unroll):
    """Passes 2-4 as loops: the reference within one rounding, and the very bits
    of the unrolled passes (each lane adds its chunks in the same order)."""
    case = end_of_layer_case(kind, 5, hidden, torch.bfloat16, seed=hidden + unroll)
    rolled = check_case(case, launch=_chunked(chunk, 2, unroll))
    for a, b in zip(rolled, case.run(launch=_chunked(chunk, 2, 0))):
        assert torch.equal(a, b)


@pytest.mark.parametrize("unroll", [0, 1])
@pytest.mark.parametrize("kind", KINDS)
def test_stream_hints_give_the_same_bits(kind, unroll):
    """Eviction hints change where the data is cached, not what is computed:
    the reference within one rounding, and the bits of the unhinted launch
    (``out`` over ``residual`` too)."""
    case = end_of_layer_case(kind, 5, 333, torch.bfloat16, seed=41 + unroll)
    hinted = _chunked(64, 2, unroll)._replace(stream_hints=True)
    got = check_case(case, launch=hinted)
    for a, b in zip(got, case.run(launch=_chunked(64, 2, unroll))):
        assert torch.equal(a, b)
    check_strided_over_residual(kind, 5, 200, hinted, seed=43)


@pytest.mark.parametrize("kind", KINDS)
def test_rolled_passes_over_residual_fp32_and_zero_row(kind):
    """``out`` aliasing ``residual`` (each chunk reads it before storing), fp32, a zero row."""
    case = end_of_layer_case(kind, 5, 333, torch.float32, zero_row=True, seed=31)
    want_h, want_next = case.expected()
    residual = case.residual
    h, next_in = case.run(out=residual, launch=_chunked(64, 2, 1))
    assert h.data_ptr() == residual.data_ptr()
    assert_within_one_rounding(h, want_h, "h")
    assert_within_one_rounding(next_in, want_next, "next_in")
    assert torch.count_nonzero(h[2]) == 0 and torch.count_nonzero(next_in[2]) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_chunked_kernel_matches_row_kernel(kind):
    """Same rounding points as the row kernel: only the fp32 sums' order differs,
    so nearly every element is equal."""
    case = end_of_layer_case(kind, 16, 333, torch.bfloat16, seed=17)
    row_launch = eol.row_launch(333)._replace(rows_per_program=1, num_warps=4)
    for row, chunked in zip(case.run(launch=row_launch), case.run(launch=_chunked(64))):
        assert_within_one_rounding(chunked, row, f"{kind} chunked vs row")


@pytest.mark.parametrize("kind", KINDS)
def test_chunked_kernel_over_residual_zero_rows_and_strides(kind):
    """``out`` aliasing ``residual``, a zero row, tiny magnitudes (eps dominates),
    rows spaced wider than ``hidden``."""
    check_strided_over_residual(kind, 5, 200, _chunked(64, 1), scale=SCALES["tiny"], seed=23)


def _persistent(block_h: int, num_warps: int, programs_per_sm: int) -> eol.EndOfLayerLaunch:
    return eol.EndOfLayerLaunch(block_h, 1, num_warps, "persistent", programs_per_sm=programs_per_sm)


# Exact rows of three and two segments and one, a padded row; 1-3 programs
# (one "SM" under the interpreter), so programs walk several rows. The
# interpreter ignores the cache modifier of ".cg" loads: what runs there is
# the code path that takes it.
PERSISTENT = {
    "exact_3_segments": (896, _persistent(896, 2, 2)),
    "exact_3_segments_l2_only": (896, _persistent(896, 2, 2)._replace(act_cache=".cg")),
    "exact_2_segments": (640, _persistent(640, 4, 1)),
    "exact_1_segment": (128, _persistent(128, 1, 3)),
    "padded": (200, _persistent(256, 2, 2)),
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("variant", PERSISTENT)
@pytest.mark.parametrize("kind", KINDS)
def test_persistent_kernel_matches_reference(kind, variant, dtype):
    hidden, launch = PERSISTENT[variant]
    # Fewer rows than programs, and more (enough elements that one final
    # rounding falling the other way stays within check_case's share).
    for tokens in (1, 9) if hidden > 256 else (9,):
        check_case(end_of_layer_case(kind, tokens, hidden, dtype, seed=tokens), launch=launch)


@pytest.mark.parametrize("kind", KINDS)
def test_persistent_kernel_over_residual_zero_rows_and_strides(kind):
    """``out`` aliasing ``residual`` (each row's residual is prefetched before
    its ``h`` is stored), a zero row, tiny magnitudes, rows spaced wider than
    ``hidden``, more rows than programs."""
    check_strided_over_residual(kind, 7, 640, _persistent(640, 4, 2), scale=SCALES["tiny"], seed=29)


def test_bad_launches_raise():
    case = end_of_layer_case("moe", 4, 128, torch.bfloat16)
    bad = {
        "one row per program": _chunked(32)._replace(rows_per_program=2),
        "power of two": _chunked(48),
        "block_h >= hidden": eol.EndOfLayerLaunch(64, 1, 4, "row"),
        "unknown kernel": eol.EndOfLayerLaunch(128, 1, 4, "segments"),
        "unroll must be >= 0": _chunked(32, 2, -1),
        "0 for the row kernel": eol.EndOfLayerLaunch(128, 1, 4, "row", 1),
        "programs_per_sm >= 1": eol.EndOfLayerLaunch(128, 1, 4, "persistent"),
        "at most three powers": eol.EndOfLayerLaunch(64, 1, 4, "persistent", programs_per_sm=1),
        "act_cache must be": eol.EndOfLayerLaunch(128, 1, 4, "persistent", programs_per_sm=1, act_cache=".cs"),
        "except for the persistent kernel": _chunked(32)._replace(act_cache=".cg"),
        "stream_hints is an option of the chunked kernel": eol.EndOfLayerLaunch(128, 1, 4, "row", stream_hints=True),
        "only for the chunked kernel": eol.EndOfLayerLaunch(128, 1, 4, "row", prefetch="L2"),
        "prefetch is one of": _chunked(32)._replace(prefetch="L3"),
    }
    for message, launch in bad.items():
        with pytest.raises(ValueError, match=message):
            case.run(launch=launch)


def _unsupported(kind: str) -> dict[str, tuple]:
    case = end_of_layer_case(kind, 4, 128, torch.bfloat16)
    a = case.args
    x = a[0]
    w_next = a[-1]
    return {
        "transposed_x": (x.t().contiguous().t(), *a[1:]),
        "3d_x": (x[None], *a[1:]),
        "float64": tuple(t.double() for t in a),
        "int": tuple(t.to(torch.int32) for t in a),
        "mixed_residual_dtype": (*a[:-3], a[-3].half(), *a[-2:]),
        "hidden_over_max": tuple(
            torch.zeros(*t.shape[:-1], MAX_FUSED_ROW + 128, dtype=t.dtype) if t.numel() > 1 else t for t in a
        ),
        "short_next_weight": (*a[:-1], w_next[:64]),
        "two_element_scalar": (*a[:-2], torch.ones(2, dtype=x.dtype), w_next),
        "meta_device": tuple(t.to("meta") for t in a),
    }


@pytest.mark.parametrize("kind", KINDS)
def test_supports_rejects_and_wrapper_raises(kind):
    case = end_of_layer_case(kind, 4, 128, torch.bfloat16)
    assert case.supports(*case.args)
    for name, args in _unsupported(kind).items():
        assert not case.supports(*args), name
        with pytest.raises(ValueError, match="unsupported inputs"):
            case.fused(*args, EPS)


def test_ple_scalar_must_match_activation_dtype():
    case = end_of_layer_case("ple", 4, 128, torch.bfloat16, scalar_dtype=torch.float32)
    assert not case.supports(*case.args)
    dense = end_of_layer_case("dense", 4, 128, torch.bfloat16, scalar_dtype=torch.float32)
    assert dense.supports(*dense.args)


def test_empty_batch_and_bad_overrides():
    case = end_of_layer_case("dense", 0, 128, torch.bfloat16)
    h, next_in = case.run()
    assert h.shape == next_in.shape == (0, 128)
    case = end_of_layer_case("dense", 4, 128, torch.bfloat16)
    with pytest.raises(ValueError, match="power of two"):
        case.run(launch=eol.row_launch(128)._replace(rows_per_program=3))
    with pytest.raises(ValueError, match="out must be"):
        case.run(out=torch.empty(4, 128, dtype=torch.float16))


# --------------------------------------------------------------------------- the experts' rows summed in the kernel


@pytest.mark.parametrize("top_k", [1, 3, 8])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens,hidden", [(1, 128), (17, 128), (3, 1000), (1, 2816)])
def test_expert_sum_matches_reference(tokens, hidden, dtype, top_k):
    check_case(end_of_layer_case("moe_experts", tokens, hidden, dtype, top_k=top_k, seed=tokens + top_k))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_expert_sum_is_the_topk_sum_then_the_moe_end(dtype):
    """Same bits as SGLang's order: the rows summed (fp32, routing order, rounded)
    into the MoE output, then the MoE end of layer of that output."""
    case = end_of_layer_case("moe_experts", 7, 256, dtype, seed=2)
    h_dense, w1, rows, w2, w3, residual, scalar, w_next = case.args
    summed = eol.moe_expert_sum_reference(rows)
    want_h, want_next = eol.moe_end_of_layer_norm(h_dense, w1, summed, w2, w3, residual, scalar, w_next, EPS)
    h, next_in = case.run()
    assert torch.equal(h, want_h) and torch.equal(next_in, want_next)


def test_expert_sum_rounding_is_observable():
    """The MoE output is rounded before its norm: an fp32 sum normalized without
    that rounding gives other bf16 outputs on many elements."""
    case = end_of_layer_case("moe_experts", 64, 128, torch.bfloat16, seed=4)
    h_dense, w1, rows, w2, w3, residual, scalar, w_next = case.args
    h, _ = case.run()
    unrounded = rows.float().sum(dim=1)
    want = eol.moe_end_of_layer_reference(h_dense.float(), w1, unrounded, w2, w3, residual.float(), scalar, EPS)
    assert (h != want.to(torch.bfloat16)).float().mean().item() > 2e-3


def test_expert_sum_zero_row_and_empty_batch():
    case = end_of_layer_case("moe_experts", 9, 128, torch.bfloat16, zero_row=True, seed=6)
    h, next_in = check_case(case)
    assert torch.count_nonzero(h[4]) == 0 and torch.count_nonzero(next_in[4]) == 0
    empty = end_of_layer_case("moe_experts", 0, 128, torch.bfloat16)
    h, next_in = empty.run()
    assert h.shape == next_in.shape == (0, 128)


def test_expert_sum_unsupported_inputs():
    case = end_of_layer_case("moe_experts", 4, 128, torch.bfloat16, top_k=4)
    h_dense, w1, rows, w2, w3, residual, scalar, w_next = case.args

    def supported(**change) -> bool:
        args = dict(h_dense=h_dense, w_post_ff_1=w1, expert_rows=rows, w_post_ff_2=w2, w_post_ff=w3,
                    residual=residual, layer_scalar=scalar, w_next=w_next)
        args.update(change)
        return eol.supports_moe_expert_sum(**args)

    assert supported()
    assert not supported(expert_rows=rows.transpose(0, 1).contiguous().transpose(0, 1))  # not contiguous
    assert not supported(expert_rows=rows.sum(dim=1))  # already summed: 2-D
    assert not supported(expert_rows=rows[:, :0])  # no expert
    assert not supported(expert_rows=rows.repeat(1, 5, 1))  # 20 rows > MAX_EXPERT_ROWS
    assert not supported(expert_rows=rows.half())
    assert not supported(expert_rows=rows[:3])
    assert not supported(h_dense=h_dense.half())
    with pytest.raises(ValueError, match="unsupported inputs"):
        eol.moe_expert_sum_end_of_layer_norm(h_dense, w1, rows.sum(dim=1), w2, w3, residual, scalar, w_next, EPS)
    with pytest.raises(ValueError, match="row kernel only"):
        case.run(launch=eol.EndOfLayerLaunch(128, 1, 4, "chunked"))
