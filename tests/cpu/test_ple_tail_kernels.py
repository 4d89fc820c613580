"""The fused PLE-tail kernels against their fp32 references, on CPU under Triton's interpreter.

Shapes stay tiny (the interpreter costs ~10 ms per program); the full grid runs
on the GPU machine (tests/gpu/test_ple_tail_gpu.py).
"""

from __future__ import annotations

import pytest
import torch

from sglang_gemma4.kernels import ple_tail as pt
from sglang_gemma4.kernels.row_segments import block_segments, lanes_per_row, power_of_two_segments
from sglang_gemma4.kernels.support import MAX_FUSED_ROW
from tests.ple_tail_checks import EPS, whole_tail

pytestmark = [
    pytest.mark.interpret,
    # the interpreter evaluates with numpy, which warns where exp overflows to inf and -inf / inf is nan (both intended)
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
# Relative size of one unit in the last place (upper bound) per activation dtype.
ULP = {torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10, torch.float32: 2.0**-22}


def assert_matches_reference(out: torch.Tensor, ref: torch.Tensor, *, magnitude: float) -> None:
    """Within one ulp, and (half dtypes) bit-identical on almost every element.

    ``magnitude`` bounds the operands of the last add: a rounding flip at an
    earlier rounding point can move the result by one ulp of *that*, even when
    the result itself cancels to something small. Rounding at the wrong points
    instead (or not at all) changes 10-40% of bf16/fp16 elements, which the
    mismatch count catches.
    """
    assert out.shape == ref.shape and out.dtype == ref.dtype and out.is_contiguous()
    ulp = ULP[out.dtype]
    torch.testing.assert_close(out.float(), ref.float(), rtol=ulp, atol=ulp * magnitude, equal_nan=True)
    if out.dtype != torch.float32:
        differs = (out != ref) & ~(out.isnan() & ref.isnan())
        assert differs.sum().item() <= max(2, 0.01 * out.numel()), f"{differs.sum().item()} of {out.numel()} differ"


def adversarial_rows(tokens: int, hidden: int, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """Rows of very different scales: tiny, huge, all-zero, one spike over a flat floor."""
    x = torch.randn(tokens, hidden, generator=gen)
    big = 1e3 if dtype == torch.float16 else 1e4
    scales = [1.0, 1e-4, big, 0.0, 1.0]
    for i in range(tokens):
        x[i] *= scales[i % len(scales)]
        if i % len(scales) == 4:
            x[i] = 1e-2
            x[i, hidden // 2] = big
    return x.to(dtype)


def make_norm_inputs(tokens: int, hidden: int, dtype: torch.dtype, *, adversarial: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    if adversarial:
        x = adversarial_rows(tokens, hidden, dtype, gen)
        residual = (torch.randn(tokens, hidden, generator=gen) * 3).to(dtype)
        weight = (torch.randn(hidden, generator=gen) * 4).to(dtype)
    else:
        x = torch.randn(tokens, hidden, generator=gen).to(dtype)
        residual = torch.randn(tokens, hidden, generator=gen).to(dtype)
        weight = (1 + 0.1 * torch.randn(hidden, generator=gen)).to(dtype)
    return x, weight, residual


def operand_magnitude(*tensors: torch.Tensor) -> float:
    return sum(t.float().abs().max().item() for t in tensors)


NORM_CASES = [
    # (tokens, hidden, adversarial)
    (1, 128, False),
    (3, 1536, False),
    (1, 2560, False),
    (17, 1001, False),
    (17, 128, True),
    (5, 2560, True),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens,hidden,adversarial", NORM_CASES)
def test_rmsnorm_add(tokens: int, hidden: int, adversarial: bool, dtype: torch.dtype) -> None:
    x, weight, residual = make_norm_inputs(tokens, hidden, dtype, adversarial=adversarial)
    out = pt.rmsnorm_add(x, weight, residual, EPS)
    ref = pt.rmsnorm_add_reference(x, weight, residual, EPS)
    normed = ref.float() - residual.float()
    assert_matches_reference(out, ref, magnitude=operand_magnitude(normed, residual))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens,hidden,adversarial", NORM_CASES)
def test_rmsnorm_add_scale(tokens: int, hidden: int, adversarial: bool, dtype: torch.dtype) -> None:
    x, weight, residual = make_norm_inputs(tokens, hidden, dtype, adversarial=adversarial, seed=1)
    scale = torch.tensor([0.37 if not adversarial else 11.5], dtype=dtype)
    out = pt.rmsnorm_add_scale(x, weight, residual, scale, EPS)
    ref = pt.rmsnorm_add_scale_reference(x, weight, residual, scale, EPS)
    normed = pt.rmsnorm_add_reference(x, weight, torch.zeros_like(residual), EPS)
    assert_matches_reference(out, ref, magnitude=scale.float().item() * operand_magnitude(normed, residual))


@pytest.mark.parametrize("kernel", ["rmsnorm_add", "rmsnorm_add_scale"])
def test_norm_kernels_at_256_tokens(kernel: str) -> None:
    x, weight, residual = make_norm_inputs(256, 128, torch.bfloat16, adversarial=True, seed=2)
    if kernel == "rmsnorm_add":
        out, ref = pt.rmsnorm_add(x, weight, residual, EPS), pt.rmsnorm_add_reference(x, weight, residual, EPS)
    else:
        scale = torch.tensor([0.5], dtype=torch.bfloat16)
        out = pt.rmsnorm_add_scale(x, weight, residual, scale, EPS)
        ref = pt.rmsnorm_add_scale_reference(x, weight, residual, scale, EPS)
    normed = pt.rmsnorm_add_reference(x, weight, torch.zeros_like(residual), EPS)
    assert_matches_reference(out, ref, magnitude=operand_magnitude(normed, residual))


def test_norm_kernels_read_spaced_rows() -> None:
    """x and residual may be column slices of wider buffers (row stride > hidden)."""
    gen = torch.Generator().manual_seed(3)
    wide_x = torch.randn(4, 200, generator=gen).to(torch.bfloat16)
    wide_r = torch.randn(4, 300, generator=gen).to(torch.bfloat16)
    x, residual = wide_x[:, 10:138], wide_r[:, :128]
    weight = torch.randn(128, generator=gen).to(torch.bfloat16)
    scale = torch.tensor([2.0], dtype=torch.bfloat16)
    out = pt.rmsnorm_add_scale(x, weight, residual, scale, EPS)
    ref = pt.rmsnorm_add_scale_reference(x.contiguous(), weight, residual.contiguous(), scale, EPS)
    assert_matches_reference(out, ref, magnitude=2 * operand_magnitude(weight, residual))


# Launches other than the ones the tiny shapes above get from the table: several
# rows per program with a partly empty last program, and the looped kernel with
# whole and partial chunks.
NORM_LAUNCHES = [
    # (hidden, tokens, launch)
    (1536, 6, pt.NormLaunch("row", 2048, 4, 16)),
    (2560, 3, pt.NormLaunch("row", 4096, 2, 4, stream_hints=True)),
    (1001, 5, pt.NormLaunch("row", 1024, 2, 2)),
    (1536, 3, pt.NormLaunch("looped", 512, 1, 2)),
    (2560, 2, pt.NormLaunch("looped", 1024, 1, 4, stream_hints=True)),
    (1001, 5, pt.NormLaunch("looped", 1024, 1, 4)),
    # exact rows: 1024 + 512, 2048 + 512, 64 + 32 (a partly empty last program),
    # one segment, lanes derived and explicit
    (1536, 6, pt.NormLaunch("exact", 1536, 4, 16)),
    (2560, 3, pt.NormLaunch("exact", 2560, 2, 4, stream_hints=True)),
    (96, 5, pt.NormLaunch("exact", 96, 2, 1)),
    (128, 3, pt.NormLaunch("exact", 128, 1, 2, lanes=16)),
    (1536, 2, pt.NormLaunch("exact", 1536, 1, 8, lanes=512)),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(
    "hidden,tokens,launch",
    NORM_LAUNCHES,
    ids=[f"{h}x{t}-{l.kernel}-b{l.block}-r{l.rows_per_program}-w{l.num_warps}" for h, t, l in NORM_LAUNCHES],
)
def test_norm_kernels_under_every_launch_kind(hidden: int, tokens: int, launch: pt.NormLaunch, dtype: torch.dtype) -> None:
    x, weight, residual = make_norm_inputs(tokens, hidden, dtype, adversarial=True, seed=hidden + tokens)
    scale = torch.tensor([0.37], dtype=dtype)
    out = pt.rmsnorm_add(x, weight, residual, EPS, launch=launch)
    assert_matches_reference(
        out, pt.rmsnorm_add_reference(x, weight, residual, EPS), magnitude=operand_magnitude(out, residual)
    )
    out = pt.rmsnorm_add_scale(x, weight, residual, scale, EPS, launch=launch)
    normed = pt.rmsnorm_add_reference(x, weight, torch.zeros_like(residual), EPS)
    assert_matches_reference(
        out,
        pt.rmsnorm_add_scale_reference(x, weight, residual, scale, EPS),
        magnitude=0.37 * operand_magnitude(normed, residual),
    )


@pytest.mark.parametrize("n_cols", [1, 77, 128, 1001, 1536, 2560, 4096, 5376, MAX_FUSED_ROW])
def test_norm_launch_table(n_cols: int) -> None:
    """Every width and batch gets a launch the kernels take, with a bounded register footprint."""
    for n_rows in (1, 256, 512, 513, 2048, 2049, 8191, 8192, 16383, 16384, 100_000):
        launch = pt.norm_launch(n_cols, n_rows)
        pt._check_launch(launch)
        threads = 32 * launch.num_warps
        if launch.kernel == "row":
            assert launch.block >= n_cols and launch.rows_per_program * launch.block <= 64 * threads, launch
        elif launch.kernel == "exact":
            assert launch.block == n_cols and pt.exact_row_segments(n_cols) is not None, launch
            assert launch.rows_per_program * launch.block <= 64 * threads, launch
        else:
            assert launch.kernel == "looped" and launch.rows_per_program == 1 and launch.block <= 64 * threads
        # the looped kernel exactly where it was measured to win: many rows, wider than one chunk
        assert (launch.kernel == "looped") == (n_rows >= pt.looped_min_rows(n_cols) and n_cols > pt.LOOP_CHUNK)


def test_norm_launch_crossovers() -> None:
    """Where the measured tables switch kernels: 1536-wide rows take exact rows at 257-1024
    rows and stay on row tiles up to 16383 rows (measured faster at 8192); 2560-wide rows
    take exact rows at every size but 513-1024 and never loop; unmeasured widths loop from
    8192. Eviction hints from 257 rows up to the largest measured buckets."""
    assert pt.norm_launch(1536, 256) == pt.NormLaunch("row", 2048, 1, 8)
    assert pt.norm_launch(1536, 257) == pt.NormLaunch("exact", 1536, 2, 8, stream_hints=True)
    assert pt.norm_launch(2560, 256) == pt.NormLaunch("exact", 2560, 1, 8)
    assert pt.norm_launch(2560, 257) == pt.NormLaunch("exact", 2560, 1, 8, stream_hints=True)
    assert pt.norm_launch(2560, 1024) == pt.NormLaunch("row", 4096, 4, 16, stream_hints=True)
    assert pt.norm_launch(1536, 1025) == pt.NormLaunch("row", 2048, 4, 8, stream_hints=True)
    assert pt.norm_launch(1536, 8192) == pt.NormLaunch("row", 2048, 2, 4, stream_hints=True)
    assert pt.norm_launch(1536, 16384).kernel == "looped"
    assert pt.norm_launch(2560, 1) == pt.NormLaunch("exact", 2560, 1, 8)
    assert pt.norm_launch(2560, 4096) == pt.NormLaunch("exact", 2560, 1, 8, stream_hints=True)
    assert pt.norm_launch(2560, 1 << 20) == pt.NormLaunch("exact", 2560, 1, 8)
    assert pt.looped_min_rows(4096) == pt.LOOPED_MIN_ROWS


@pytest.mark.parametrize("n_cols", [1, 77, 256, 2048])
def test_gelu_launch_table(n_cols: int) -> None:
    for n_rows in (1, 3, 256, 2048, 2049, 100_000):
        launch = pt.gelu_launch(n_rows, n_cols)
        pt._check_launch(launch)
        per_thread = launch.block_rows * launch.block_cols // (32 * launch.num_warps)
        assert launch.block_cols <= max(256, n_cols) and per_thread <= 16, launch
    assert pt.gelu_launch(1, 256) == pt.TileLaunch(1, 256, 1)
    assert pt.gelu_launch(2048, 256) == pt.TileLaunch(4, 256, 4)
    assert pt.gelu_launch(100_000, 256) == pt.TileLaunch(8, 256, 8)


@pytest.mark.parametrize(
    "launch",
    [
        pt.NormLaunch("row", 64, 1, 1),  # narrower than the row
        pt.NormLaunch("row", 128, 3, 1),  # rows not a power of two
        pt.NormLaunch("looped", 64, 2, 1),  # the looped kernel takes one row per program
        pt.NormLaunch("blocked", 128, 1, 1),
        pt.NormLaunch("exact", 256, 1, 1),  # exact rows must be the row's width
        pt.NormLaunch("exact", 128, 1, 1, lanes=256),  # more lanes than the segment has columns
        pt.NormLaunch("exact", 128, 1, 1, lanes=24),  # lanes not a power of two
    ],
    ids=str,
)
def test_bad_norm_launch_rejected(launch: pt.NormLaunch) -> None:
    x, weight, residual = make_norm_inputs(2, 128, torch.bfloat16, adversarial=False)
    with pytest.raises(ValueError):
        pt.rmsnorm_add(x, weight, residual, EPS, launch=launch)


def test_exact_rows_need_at_most_two_segments() -> None:
    """1001 = 512 + 256 + 128 + ...: no exact launch; 1536 and 2560 split in two."""
    x, weight, residual = make_norm_inputs(2, 1001, torch.bfloat16, adversarial=False)
    with pytest.raises(ValueError, match="powers of two"):
        pt.rmsnorm_add(x, weight, residual, EPS, launch=pt.NormLaunch("exact", 1001, 1, 4))
    assert pt.exact_row_segments(1001) is None
    assert pt.exact_row_segments(1536) == (1024, 512)
    assert pt.exact_row_segments(2560) == (2048, 512)
    assert pt.exact_row_segments(128) == (128, 0)


@pytest.mark.parametrize(
    "launch,lanes",
    [
        (pt.NormLaunch("exact", 1536, 1, 4), 128),  # one lane per thread: 8 + 4 columns each
        (pt.NormLaunch("exact", 1536, 2, 8), 128),  # 256 threads over two rows
        (pt.NormLaunch("exact", 1536, 1, 16), 512),  # capped by the 512 segment
        # 32 threads a row, but 2048 / 32 columns would be 4 loads' worth per lane
        (pt.NormLaunch("exact", 2560, 4, 4), 256),
        (pt.NormLaunch("exact", 1536, 2, 8, lanes=64), 64),  # explicit
    ],
    ids=str,
)
def test_exact_row_lanes(launch: pt.NormLaunch, lanes: int) -> None:
    assert pt.exact_row_lanes(launch, launch.block, element_size=2) == lanes


def test_power_of_two_segments() -> None:
    assert power_of_two_segments(1536, 2) == (1024, 512)
    assert power_of_two_segments(2816, 3) == (2048, 512, 256)
    assert power_of_two_segments(2816, 2) is None
    assert power_of_two_segments(4096, 1) == (4096,)
    assert power_of_two_segments(0, 3) is None
    assert lanes_per_row((1024, 512), 96, 16) == 64  # threads rounded down to a power of two
    assert lanes_per_row((1024, 512), 32, 8) == 128  # at most 8 adjacent columns per lane
    assert lanes_per_row((2048, 512), 1024, 8) == 512  # at most the smallest segment


def test_block_segments() -> None:
    assert block_segments(2816, 2816, 3) == (2048, 512, 256)  # exact
    assert block_segments(2816, 4096, 3) == (4096, 0, 0)  # padded
    assert block_segments(4096, 4096, 3) == (4096, 0, 0)
    assert block_segments(1000, 1000, 3) is None  # six powers of two, not a power itself
    assert block_segments(1000, 1024, 2) == (1024, 0)
    assert block_segments(2816, 2048, 3) is None  # narrower than the row
    assert block_segments(200, 384, 3) is None  # not a power of two
    assert lanes_per_row((64, 32), 0, 64) == 1


@pytest.mark.parametrize(
    "launch", [pt.TileLaunch(2, 64, 1), pt.TileLaunch(4, 32, 4, stream_hints=True), pt.TileLaunch(1, 128, 1)], ids=str
)
def test_gelu_tanh_mul_tiles(launch: pt.TileLaunch) -> None:
    """Tiles narrower than the row (several programs per row) and partly empty ones."""
    gate, ple = make_gate_and_ple(5, 77, torch.bfloat16, strided=True, scale=1.0)
    out = pt.gelu_tanh_mul(gate, ple, launch=launch)
    assert_matches_reference(out, pt.gelu_tanh_mul_reference(gate, ple), magnitude=operand_magnitude(ple))


def make_gate_and_ple(tokens: int, per_layer_dim: int, dtype: torch.dtype, *, strided: bool, scale: float):
    gen = torch.Generator().manual_seed(tokens * 1000 + per_layer_dim)
    gate = (torch.randn(tokens, per_layer_dim, generator=gen) * scale).to(dtype)
    if strided:
        # per_layer_inputs[T, num_layers, P][:, layer, :], as Gemma4TextModel hands it to each layer
        per_layer_inputs = torch.randn(tokens, 5, per_layer_dim, generator=gen).to(dtype)
        ple = per_layer_inputs[:, 3, :]
        assert ple.stride(0) == 5 * per_layer_dim
    else:
        ple = torch.randn(tokens, per_layer_dim, generator=gen).to(dtype)
    return gate, ple


@pytest.mark.parametrize("strided", [True, False], ids=["strided", "contiguous"])
@pytest.mark.parametrize("per_layer_dim", [256, 77])
@pytest.mark.parametrize("tokens", [1, 3, 17, 256])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gelu_tanh_mul(tokens: int, per_layer_dim: int, strided: bool, dtype: torch.dtype) -> None:
    gate, ple = make_gate_and_ple(tokens, per_layer_dim, dtype, strided=strided, scale=1.0)
    out = pt.gelu_tanh_mul(gate, ple)
    ref = pt.gelu_tanh_mul_reference(gate, ple)
    assert_matches_reference(out, ref, magnitude=operand_magnitude(ple))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gelu_tanh_mul_tails(dtype: torch.dtype) -> None:
    """Large and special gate values.

    Only closeness is checked: below x ~ -4, eager ``0.5 x (1 + tanh(u))`` loses
    its relative precision to cancellation (the result is ~1e-7 |x| there),
    while the kernel's ``x * sigmoid(2u)`` keeps it, so the bits may differ.
    """
    big = 6e4 if dtype == torch.float16 else 3e38
    specials = torch.tensor(
        [0.0, -0.0, 1e-30, -1e-30, 1e4, -1e4, 12.0, -12.0, big, -big, float("inf"), float("-inf"), float("nan")]
    )
    gen = torch.Generator().manual_seed(4)
    gate = torch.cat([specials, torch.randn(51, generator=gen) * 8]).reshape(2, 32).to(dtype)
    ple = (torch.randn(2, 32, generator=gen) * 3).to(dtype)
    out = pt.gelu_tanh_mul(gate, ple)
    ref = pt.gelu_tanh_mul_reference(gate, ple)
    ulp = ULP[dtype]
    torch.testing.assert_close(out.float(), ref.float(), rtol=ulp, atol=1e-6 * operand_magnitude(ple), equal_nan=True)


def test_whole_tail_matches_reference() -> None:
    """The three kernels between the layer's two GEMMs reproduce the eager tail."""
    x, post_ff_weight, residual = make_norm_inputs(3, 1536, torch.bfloat16, adversarial=False, seed=5)
    out, ref, h, post_ple_weight = whole_tail(
        x, post_ff_weight, residual, per_layer_dim=256, num_layers=4, layer=1, gen=torch.Generator().manual_seed(5)
    )
    assert_matches_reference(out, ref, magnitude=0.25 * operand_magnitude(h, post_ple_weight))


# ----------------------------------------------------------------------------- what falls back


def bf16(*shape: int) -> torch.Tensor:
    return torch.randn(*shape).to(torch.bfloat16)


def test_supported_baseline() -> None:
    x, r, w = bf16(4, 64), bf16(4, 64), bf16(64)
    s = torch.ones(1, dtype=torch.bfloat16)
    ple = bf16(4, 3, 16)[:, 1, :]
    assert pt.supports_rmsnorm_add(x, w, r)
    assert pt.supports_rmsnorm_add_scale(x, w, r, s)
    assert pt.supports_gelu_tanh_mul(bf16(4, 16), ple)
    assert pt.supports_ple_tail(x, r, ple, w, w, s)


@pytest.mark.parametrize(
    "case",
    [
        "transposed_x",
        "3d_x",
        "float64",
        "int32",
        "empty_batch",
        "huge_row",
        "residual_dtype",
        "residual_shape",
        "weight_length",
        "meta_device",
    ],
)
def test_norm_kernels_reject(case: str) -> None:
    x, r, w = bf16(4, 64), bf16(4, 64), bf16(64)
    s = torch.ones(1, dtype=torch.bfloat16)
    if case == "transposed_x":
        x = bf16(64, 4).t()
    elif case == "3d_x":
        x, r = bf16(2, 2, 64), bf16(2, 2, 64)
    elif case == "float64":
        x, r, w = x.double(), r.double(), w.double()
    elif case == "int32":
        x, r = torch.ones(4, 64, dtype=torch.int32), torch.ones(4, 64, dtype=torch.int32)
    elif case == "empty_batch":
        x, r = bf16(0, 64), bf16(0, 64)
    elif case == "huge_row":
        x, r, w = bf16(1, MAX_FUSED_ROW + 1), bf16(1, MAX_FUSED_ROW + 1), bf16(MAX_FUSED_ROW + 1)
    elif case == "residual_dtype":
        r = r.half()
    elif case == "residual_shape":
        r = bf16(3, 64)
    elif case == "weight_length":
        w = bf16(63)
    elif case == "meta_device":
        x, r, w, s = (t.to("meta") for t in (x, r, w, s))
    assert not pt.supports_rmsnorm_add(x, w, r)
    assert not pt.supports_rmsnorm_add_scale(x, w, r, s)
    with pytest.raises(ValueError):
        pt.rmsnorm_add(x, w, r, EPS)
    with pytest.raises(ValueError):
        pt.rmsnorm_add_scale(x, w, r, s, EPS)


@pytest.mark.parametrize("case", ["fp32_scale", "two_elements"])
def test_scale_must_be_one_element_of_the_activation_dtype(case: str) -> None:
    """An fp32 ``layer_scalar`` with bf16 activations makes eager promote to fp32: fall back."""
    x, r, w = bf16(4, 64), bf16(4, 64), bf16(64)
    s = torch.ones(1) if case == "fp32_scale" else torch.ones(2, dtype=torch.bfloat16)
    assert pt.supports_rmsnorm_add(x, w, r)
    assert not pt.supports_rmsnorm_add_scale(x, w, r, s)
    assert not pt.supports_ple_tail(x, r, bf16(4, 16), w, w, s)
    with pytest.raises(ValueError):
        pt.rmsnorm_add_scale(x, w, r, s, EPS)


@pytest.mark.parametrize("case", ["ple_last_stride", "ple_dtype", "ple_rows", "gate_3d", "empty_batch"])
def test_gelu_tanh_mul_rejects(case: str) -> None:
    gate, ple = bf16(4, 16), bf16(4, 16)
    if case == "ple_last_stride":
        ple = bf16(4, 32)[:, ::2]
    elif case == "ple_dtype":
        ple = ple.half()
    elif case == "ple_rows":
        ple = bf16(5, 16)
    elif case == "gate_3d":
        gate, ple = bf16(2, 2, 16), bf16(2, 2, 16)
    elif case == "empty_batch":
        gate, ple = bf16(0, 16), bf16(0, 16)
    assert not pt.supports_gelu_tanh_mul(gate, ple)
    with pytest.raises(ValueError):
        pt.gelu_tanh_mul(gate, ple)


@pytest.mark.parametrize("case", ["ple_rows", "ple_dtype", "ple_3d", "post_ple_weight", "empty_batch"])
def test_ple_tail_predicate_rejects(case: str) -> None:
    x, r, w = bf16(4, 64), bf16(4, 64), bf16(64)
    s = torch.ones(1, dtype=torch.bfloat16)
    ple, post_ple_w = bf16(4, 3, 16)[:, 0, :], w
    if case == "ple_rows":
        ple = bf16(5, 16)
    elif case == "ple_dtype":
        ple = ple.float()
    elif case == "ple_3d":
        ple = bf16(4, 3, 16)
    elif case == "post_ple_weight":
        post_ple_w = bf16(65)
    elif case == "empty_batch":
        x, r, ple = bf16(0, 64), bf16(0, 64), bf16(0, 16)
    assert not pt.supports_ple_tail(x, r, ple, w, post_ple_w, s)
