"""The triple-RMSNorm Triton kernels against their fp32 references, on CPU
tensors under Triton's interpreter (``TRITON_INTERPRET=1``), with tiny shapes:
the 4-output mode (``post_attn_triple_rmsnorm``) and the 2-output mode
(``post_attn_norm_add``); and which inputs the ``supports`` predicates send to
the original path.

The GPU twin (tests/gpu/test_triple_rmsnorm_gpu.py) runs the real shapes.
"""

from functools import partial

import pytest
import torch
import triton

from sglang_gemma4.kernels.row_segments import exact_chunks
from sglang_gemma4.kernels.support import MAX_FUSED_ROW
from sglang_gemma4.kernels.triple_rmsnorm import (
    _LAUNCH_TABLE,
    TripleNormLaunch,
    launch_config,
    post_attn_norm_add,
    post_attn_triple_rmsnorm,
    row_lanes,
    row_segments,
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

pytestmark = pytest.mark.interpret

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
# (tokens, hidden): every token count at the narrow row, the wider rows at the
# token counts the interpreter runs in well under a second.
SHAPES = [(t, 128) for t in (0, 1, 3, 17, 256)] + [(t, 1000) for t in (1, 3, 17)] + [(t, 2816) for t in (1, 3)]


# Besides launch_config's choice, both kernels with small blocks: several rows
# per program, several chunks per row (a partial last one).
LAUNCHES = {
    "default": None,
    "row_4x": TripleNormLaunch("row", 0, 4, 2),
    "chunked_256": TripleNormLaunch("chunked", 256, 1, 2),
    "chunked_64": TripleNormLaunch("chunked", 64, 1, 1),
}


def _launch(name, hidden):
    launch = LAUNCHES[name]
    if launch is not None and launch.kernel == "row":
        launch = launch._replace(block=triton.next_power_of_2(hidden))
    return launch


_check = check_post_attn
_check_norm_add = partial(check_post_attn, outputs=2)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens,hidden", SHAPES)
def test_kernel_matches_reference(tokens, hidden, dtype):
    _check(tokens, hidden, dtype, seed=tokens + hidden)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "launch,tokens,hidden",
    [("row_4x", 17, 128), ("chunked_64", 17, 128), ("row_4x", 5, 1000), ("chunked_256", 5, 1000)],
)
def test_each_kernel_matches_reference(launch, tokens, hidden, dtype):
    _check(tokens, hidden, dtype, launch=_launch(launch, hidden), seed=3)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scale", SCALES.values(), ids=SCALES.keys())
@pytest.mark.parametrize("hidden", [128, 1000])
def test_kernel_magnitudes_and_zero_row(hidden, scale, dtype):
    for launch in (None, _launch("chunked_256", hidden)):
        outputs = _check(5, hidden, dtype, launch=launch, scale=scale, zero_row=True, seed=7)
        # rsqrt(0 + eps) is finite: an all-zero row normalizes to zeros.
        for out in outputs:
            assert torch.count_nonzero(out[2]) == 0


# Exact rows (a row held as power-of-two segments, no idle lanes): one, two and
# three segments, one and two rows per program, with and without hints; and
# lanes fewer than a segment's columns (2816 in 2 warps: 64 lanes).
EXACT_ROWS = [
    (384, TripleNormLaunch("row", 384, 1, 4)),
    (896, TripleNormLaunch("row", 896, 2, 2, stream_hints=True)),
    (896, TripleNormLaunch("row", 896, 1, 8)),
    (2816, TripleNormLaunch("row", 2816, 1, 2)),
    (2560, TripleNormLaunch("row", 2560, 2, 4, stream_hints=True)),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden,launch", EXACT_ROWS, ids=lambda v: str(v) if isinstance(v, int) else "-".join(map(str, v[2:])))
def test_exact_rows_match_reference(hidden, launch, dtype):
    _check(3, hidden, dtype, launch=launch, seed=hidden)
    _check_norm_add(3, hidden, dtype, launch, in_place=True, seed=hidden)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_hints_change_nothing(dtype):
    """Eviction hints of both kernels, in both modes: same bits as without."""
    attn_out, residual, weights = triple_norm_inputs(5, 896, dtype, seed=6)
    for launch in (TripleNormLaunch("row", 1024, 2, 4), TripleNormLaunch("chunked", 256, 1, 2)):
        plain = post_attn_triple_rmsnorm(attn_out, residual, *weights, EPS, launch=launch)
        hinted = post_attn_triple_rmsnorm(attn_out, residual, *weights, EPS, launch=launch._replace(stream_hints=True))
        assert all(torch.equal(a, b) for a, b in zip(plain, hinted))


# The rolled chunk loops and the paired sums of s and r: chunks that divide the
# row or not, padded and exact rows, 1 and 2 rows per program.
LOOP_AND_SUM_VARIANTS = {
    "chunked_rolled": (1000, TripleNormLaunch("chunked", 256, 1, 2, rolled=True)),
    "chunked_rolled_paired": (1000, TripleNormLaunch("chunked", 64, 1, 1, rolled=True, paired_sums=True)),
    "chunked_rolled_one_chunk": (128, TripleNormLaunch("chunked", 256, 1, 2, rolled=True, stream_hints=True)),
    "chunked_paired": (1000, TripleNormLaunch("chunked", 256, 1, 2, paired_sums=True)),
    "row_padded_paired": (1000, TripleNormLaunch("row", 1024, 1, 4, paired_sums=True)),
    "row_exact_paired_2x": (896, TripleNormLaunch("row", 896, 2, 2, paired_sums=True)),
}


# The segmented kernel (whole chunks, then up to two power-of-two tails, no
# masked lane): one and two tails, a row shorter than one chunk (tails only),
# lanes fewer than the threads (352 in 2 warps: a 32-column tail), rolled and
# unrolled, hinted, paired.
SEGMENTED = {
    "two_tails": (1344, TripleNormLaunch("segmented", 512, 1, 2)),
    "two_tails_rolled_paired": (352, TripleNormLaunch("segmented", 128, 1, 2, rolled=True, paired_sums=True)),
    "one_tail_hinted_paired": (896, TripleNormLaunch("segmented", 256, 1, 4, stream_hints=True, paired_sums=True)),
    "no_whole_chunk": (128, TripleNormLaunch("segmented", 256, 1, 2)),
}


VARIANTS = {**LOOP_AND_SUM_VARIANTS, **{"segmented_" + name: v for name, v in SEGMENTED.items()}}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("variant", VARIANTS)
def test_rolled_paired_and_segmented_variants_match_reference(variant, dtype):
    hidden, launch = VARIANTS[variant]
    _check(5, hidden, dtype, launch=launch, scale=300.0, zero_row=True, seed=hidden)
    _check_norm_add(5, hidden, dtype, launch, in_place=True, seed=hidden)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize(
    "kernel,chunk,hidden",
    [("chunked", 256, 1000), ("chunked", 64, 128), ("chunked", 256, 128), ("segmented", 256, 1344)],
)
def test_rolled_chunks_are_the_unrolled_bits(kernel, chunk, hidden, dtype):
    """Rolling the passes changes no addition's order: same bits in both modes,
    also with ``r`` written over the residual."""
    attn_out, residual, weights = triple_norm_inputs(3, hidden, dtype, seed=chunk)
    unrolled = TripleNormLaunch(kernel, chunk, 1, 2)
    rolled = unrolled._replace(rolled=True)
    for fn, n_weights in ((post_attn_triple_rmsnorm, 4), (post_attn_norm_add, 2)):
        expected = fn(attn_out, residual, *weights[:n_weights], EPS, launch=unrolled)
        residual_out = residual.clone()
        actual = fn(attn_out, residual_out, *weights[:n_weights], EPS, residual_out=residual_out, launch=rolled)
        assert all(torch.equal(a, e) for a, e in zip(actual, expected))


@pytest.mark.parametrize(
    "hidden,launch",
    [(1000, TripleNormLaunch("segmented", 256, 1, 2)), (896, TripleNormLaunch("segmented", 384, 1, 2)),
     (896, TripleNormLaunch("segmented", 256, 2, 2))],
)
def test_segmented_launch_checks(hidden, launch):
    """1000 - 3 x 256 = 232 needs four tails; 384 is no power of two; one row per program only."""
    attn_out, residual, weights = triple_norm_inputs(2, hidden, torch.float32, seed=1)
    with pytest.raises(ValueError, match="segmented kernel"):
        post_attn_triple_rmsnorm(attn_out, residual, *weights, EPS, launch=launch)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_paired_sums_leave_r_and_the_two_output_mode_alone(dtype):
    """Pairing only reorders the sums of s and r, which ``r`` does not depend
    on; the 2-output mode has no sum of r and ignores the flag."""
    attn_out, residual, weights = triple_norm_inputs(5, 1000, dtype, seed=9)
    for launch in (TripleNormLaunch("row", 1024, 2, 4), TripleNormLaunch("chunked", 256, 1, 2, rolled=True)):
        paired = launch._replace(paired_sums=True)
        triple = post_attn_triple_rmsnorm(attn_out, residual, *weights, EPS, launch=launch)
        triple_paired = post_attn_triple_rmsnorm(attn_out, residual, *weights, EPS, launch=paired)
        assert torch.equal(triple[0], triple_paired[0])
        pair = post_attn_norm_add(attn_out, residual, *weights[:2], EPS, launch=launch)
        pair_paired = post_attn_norm_add(attn_out, residual, *weights[:2], EPS, launch=paired)
        assert all(torch.equal(a, b) for a, b in zip(pair, pair_paired))


# The persistent kernel: exact and padded rows, grids of 1-2 programs per
# "SM" (1 under the interpreter), so each program walks several rows (its
# last prefetch past the end, masked), and grids capped by the row count.
PERSISTENT = {
    "exact_1x": (896, TripleNormLaunch("persistent", 896, 1, 2, programs_per_sm=1)),
    "exact_2x_paired": (896, TripleNormLaunch("persistent", 896, 1, 4, paired_sums=True, programs_per_sm=2)),
    "padded_2x_hints": (1000, TripleNormLaunch("persistent", 1024, 1, 4, stream_hints=True, programs_per_sm=2)),
    "padded_one_segment": (128, TripleNormLaunch("persistent", 128, 1, 1, programs_per_sm=3)),
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("variant", PERSISTENT)
def test_persistent_rows_are_the_row_kernels_bits(variant, dtype):
    """Same operations per row as the row kernel: same bits in both modes, at
    row counts below, at and above the grid; also with ``r`` written over
    the residual (each row read before its program writes)."""
    hidden, launch = PERSISTENT[variant]
    row = launch._replace(kernel="row", programs_per_sm=0)
    for tokens in (1, 2, 7):
        attn_out, residual, weights = triple_norm_inputs(tokens, hidden, dtype, scale=30.0, seed=tokens)
        for fn, n_weights in ((post_attn_triple_rmsnorm, 4), (post_attn_norm_add, 2)):
            expected = fn(attn_out, residual, *weights[:n_weights], EPS, launch=row)
            residual_out = residual.clone()
            actual = fn(attn_out, residual_out, *weights[:n_weights], EPS, residual_out=residual_out, launch=launch)
            assert actual[0].data_ptr() == residual_out.data_ptr()
            assert all(torch.equal(a, e) for a, e in zip(actual, expected)), (fn.__name__, tokens)


def test_persistent_launch_checks():
    attn_out, residual, weights = triple_norm_inputs(3, 128, torch.float32, seed=1)
    for bad in (
        TripleNormLaunch("persistent", 128, 1, 1),  # no programs per SM
        TripleNormLaunch("persistent", 128, 2, 1, programs_per_sm=1),
        TripleNormLaunch("persistent", 128, 1, 1, rolled=True, programs_per_sm=1),
    ):
        with pytest.raises(ValueError):
            post_attn_triple_rmsnorm(attn_out, residual, *weights, EPS, launch=bad)


def test_row_segments_and_lanes():
    assert row_segments(2816) == (2048, 512, 256)
    assert row_segments(5376) == (4096, 1024, 256)
    assert row_segments(1536) == (1024, 512, 0)
    assert row_segments(2560) == (2048, 512, 0)
    assert row_segments(4096) == (4096, 0, 0)
    assert row_segments(1000) is None  # 512 + 256 + 128 + 64 + 32 + 8
    assert row_lanes((2048, 512, 256), 8) == 256
    assert row_lanes((2048, 512, 256), 2) == 64
    assert row_lanes((4096, 0, 0), 16) == 512
    # The segmented kernel's tiles: (whole chunks, tail0, tail1, lanes).
    assert exact_chunks(5376, 2048, 256) == (2, 1024, 256, 256)
    assert exact_chunks(5376, 1024, 128) == (5, 256, 0, 128)
    assert exact_chunks(2816, 1024, 128) == (2, 512, 256, 128)
    assert exact_chunks(2816, 1024, 512) == (2, 512, 256, 256)  # lanes: at most the smallest tile
    assert exact_chunks(1536, 2048, 256) == (0, 1024, 512, 256)  # no whole chunk: tails only
    assert exact_chunks(4096, 1024, 96) == (4, 0, 0, 64)  # threads rounded down to a power of two
    assert exact_chunks(1000, 256, 64) is None  # 232 = 128 + 64 + 32 + 8
    assert exact_chunks(1024, 384, 64) is None  # no power-of-two chunk


@pytest.mark.parametrize("launch", ["default", "chunked_256"])
def test_residual_updated_in_place(launch):
    attn_out, residual, weights = triple_norm_inputs(5, 1000, torch.bfloat16, seed=11)
    expected = triple_rmsnorm_reference(attn_out, residual, *weights, EPS)
    outputs = post_attn_triple_rmsnorm(
        attn_out, residual, *weights, EPS, residual_out=residual, launch=_launch(launch, 1000)
    )
    assert outputs[0].data_ptr() == residual.data_ptr()
    for name, a, e in zip(OUTPUT_NAMES, outputs, expected):
        assert_within_one_rounding(a, e, name)


def test_launch_config_by_width_and_batch():
    # The measured widths (the table), per mode.
    assert launch_config(2816, 1) == TripleNormLaunch("row", 2816, 1, 8, paired_sums=True)
    assert launch_config(2816, 256) == TripleNormLaunch("row", 2816, 1, 8, paired_sums=True)
    assert launch_config(2816, 257) == TripleNormLaunch("row", 2816, 1, 8, stream_hints=True, paired_sums=True)
    assert launch_config(2816, 1024) == TripleNormLaunch("row", 2816, 1, 8, stream_hints=True, paired_sums=True)
    assert launch_config(2816, 1025) == TripleNormLaunch("row", 2816, 1, 8)
    assert launch_config(2816, 4095) == TripleNormLaunch("row", 2816, 1, 8)
    assert launch_config(2816, 4096) == TripleNormLaunch("segmented", 1024, 1, 4, stream_hints=True, paired_sums=True)
    assert launch_config(5376, 128) == TripleNormLaunch("row", 8192, 1, 8, paired_sums=True)
    assert launch_config(5376, 256) == TripleNormLaunch("row", 5376, 1, 8, stream_hints=True, paired_sums=True)
    assert launch_config(5376, 257) == TripleNormLaunch("segmented", 2048, 1, 8, paired_sums=True)
    assert launch_config(5376, 528) == TripleNormLaunch("segmented", 2048, 1, 8, paired_sums=True)
    assert launch_config(5376, 768) == TripleNormLaunch("segmented", 1024, 1, 4, paired_sums=True)
    assert launch_config(5376, 1024) == TripleNormLaunch("segmented", 2048, 1, 8, paired_sums=True)
    assert launch_config(5376, 1025) == TripleNormLaunch("chunked", 2048, 1, 8, stream_hints=True, paired_sums=True)
    assert launch_config(5376, 4095) == TripleNormLaunch("chunked", 2048, 1, 8, stream_hints=True, paired_sums=True)
    assert launch_config(5376, 4096) == TripleNormLaunch("segmented", 2048, 1, 8, paired_sums=True, prefetch="L1")
    assert launch_config(5376, 16384) == TripleNormLaunch("segmented", 2048, 1, 8, paired_sums=True, prefetch="L1")
    assert launch_config(5376, 4095, moe_outputs=False) == TripleNormLaunch("row", 8192, 1, 16)
    assert launch_config(5376, 4096, moe_outputs=False) == TripleNormLaunch(
        "persistent", 5376, 1, 8, programs_per_sm=4
    )
    assert launch_config(1536, 16384, moe_outputs=False) == TripleNormLaunch("row", 1536, 1, 4)
    assert launch_config(2560, 1, moe_outputs=False) == TripleNormLaunch("row", 2560, 1, 8)
    assert launch_config(2560, 4095, moe_outputs=False) == TripleNormLaunch("row", 2560, 1, 8)
    assert launch_config(2560, 16384, moe_outputs=False) == TripleNormLaunch(
        "persistent", 2560, 1, 8, programs_per_sm=4
    )
    # Elsewhere the general rule.
    assert launch_config(1536, 1) == TripleNormLaunch("row", 2048, 1, 8)
    assert launch_config(128, 1) == TripleNormLaunch("row", 128, 16, 8)
    assert launch_config(1000, 4096) == TripleNormLaunch("row", 1024, 2, 8)
    assert launch_config(3072, 129, moe_outputs=False) == TripleNormLaunch("chunked", 1024, 1, 4)


@pytest.mark.parametrize("outputs,hidden", sorted(_LAUNCH_TABLE))
def test_table_launches_run(outputs, hidden):
    """Every launch of the table is valid for its width and computes the
    reference, on one row under the interpreter."""
    for _, launch in _LAUNCH_TABLE[outputs, hidden]:
        if outputs == 4:
            _check(1, hidden, torch.bfloat16, launch=launch, seed=1)
        else:
            _check_norm_add(1, hidden, torch.bfloat16, launch, seed=1)


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
    for bad in (
        TripleNormLaunch("row", 128, 3, 4),
        TripleNormLaunch("row", 64, 1, 4),
        TripleNormLaunch("row", 96, 1, 4),  # neither a power of two nor the row
        TripleNormLaunch("row", 128, 0, 4),
        TripleNormLaunch("chunked", 100, 1, 4),
        TripleNormLaunch("chunked", 64, 2, 4),
        TripleNormLaunch("looped", 64, 1, 4),
        TripleNormLaunch("row", 128, 1, 4, rolled=True),  # no loop to roll
        TripleNormLaunch("row", 128, 1, 4, prefetch="L2"),  # the segmented kernel's option
        TripleNormLaunch("segmented", 64, 1, 2, prefetch="L3"),
    ):
        with pytest.raises(ValueError):
            post_attn_triple_rmsnorm(attn_out, residual, *weights, EPS, launch=bad)
    wide, wide_residual, wide_weights = triple_norm_inputs(1, 1000, torch.bfloat16)
    with pytest.raises(ValueError, match="at most three powers of two"):  # 1000 needs six
        post_attn_triple_rmsnorm(wide, wide_residual, *wide_weights, EPS, launch=TripleNormLaunch("row", 1000, 1, 4))
    outputs = post_attn_triple_rmsnorm(attn_out[:0], residual[:0], *weights, EPS)
    assert [tuple(o.shape) for o in outputs] == [(0, 128)] * 4


# --------------------------------------------------------------------------- 2-output mode

NORM_ADD_NAMES = OUTPUT_NAMES[:2]
# 333: odd, so no row is a multiple of any vector width.
NORM_ADD_SHAPES = [(t, h) for h in (128, 1000, 333) for t in (0, 1, 3, 17)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens,hidden", NORM_ADD_SHAPES)
def test_norm_add_matches_reference(tokens, hidden, dtype):
    _check_norm_add(tokens, hidden, dtype, seed=tokens + hidden)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "launch,hidden",
    [("row_4x", 128), ("chunked_64", 128), ("row_4x", 1000), ("chunked_256", 1000), ("row_4x", 333), ("chunked_64", 333)],
)
def test_norm_add_each_kernel_matches_reference(launch, hidden, dtype):
    _check_norm_add(17, hidden, dtype, _launch(launch, hidden), seed=hidden)


@pytest.mark.parametrize("launch", ["default", "row_4x", "chunked_64"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_norm_add_residual_in_place(dtype, launch):
    _check_norm_add(17, 333, dtype, _launch(launch, 333), in_place=True, scale=300.0, zero_row=True, seed=2)


@pytest.mark.parametrize("launch", ["default", "row_4x", "chunked_256"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_norm_add_is_the_triple_without_its_last_two_outputs(dtype, launch):
    """Same kernel, same launch: the two modes agree bit for bit on r and dense_in."""
    attn_out, residual, weights = triple_norm_inputs(9, 1000, dtype, seed=4)
    pair = post_attn_norm_add(attn_out, residual, *weights[:2], EPS, launch=_launch(launch, 1000))
    triple = post_attn_triple_rmsnorm(attn_out, residual, *weights, EPS, launch=_launch(launch, 1000))
    for name, a, b in zip(NORM_ADD_NAMES, pair, triple):
        assert torch.equal(a, b), name


def test_supports_norm_add_takes_two_weights():
    attn_out, residual, weights = triple_norm_inputs(4, 128, torch.bfloat16)
    assert supports_norm_add(attn_out, residual, weights[:2])
    assert not supports_norm_add(attn_out, residual, weights)
    assert not supports(attn_out, residual, weights[:2])
    assert not supports_norm_add(attn_out, residual, weights[:2], dtypes=(torch.float16,))
    assert not supports_norm_add(attn_out, residual, [weights[0], weights[1][:64]])
    assert not supports_norm_add(attn_out[None], residual[None], weights[:2])
    with pytest.raises(ValueError, match="post_attn_norm_add: unsupported inputs"):
        post_attn_norm_add(attn_out, residual[:, :64], *weights[:2], EPS)
    outputs = post_attn_norm_add(attn_out[:0], residual[:0], *weights[:2], EPS)
    assert [tuple(o.shape) for o in outputs] == [(0, 128)] * 2
