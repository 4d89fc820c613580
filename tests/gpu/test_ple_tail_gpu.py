"""The fused PLE-tail kernels on CUDA: the full shape/dtype grid against the fp32 references.

Runs on the GPU machine (torch + triton + CUDA, no sglang):
``PYTHONPATH=python python3 -m pytest tests/gpu/test_ple_tail_gpu.py -q``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sglang_gemma4.kernels import ple_tail as pt
from tests.ple_tail_checks import EPS, whole_tail

pytestmark = pytest.mark.gpu

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
ULP = {torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10, torch.float32: 2.0**-22}
TOKENS = [1, 3, 17, 256, 4096]
HIDDEN = [128, 1536, 2560, 1001]


def assert_matches_reference(out: torch.Tensor, ref: torch.Tensor, *, magnitude: float, max_mismatch: float = 0.01) -> None:
    """Within one ulp (of ``magnitude``, the size of the last add's operands), and for
    half dtypes bit-identical on all but ``max_mismatch`` of the elements."""
    assert out.shape == ref.shape and out.dtype == ref.dtype and out.is_contiguous()
    ulp = ULP[out.dtype]
    torch.testing.assert_close(out.float(), ref.float(), rtol=ulp, atol=ulp * magnitude, equal_nan=True)
    if out.dtype != torch.float32:
        differs = (out != ref) & ~(out.isnan() & ref.isnan())
        assert differs.sum().item() <= max(2, max_mismatch * out.numel()), f"{differs.sum().item()} of {out.numel()} differ"


def magnitude(*tensors: torch.Tensor) -> float:
    return sum(t.float().abs().max().item() for t in tensors)


def norm_inputs(tokens: int, hidden: int, dtype: torch.dtype, *, adversarial: bool, seed: int):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(tokens, hidden, device="cuda", generator=gen)
    residual = torch.randn(tokens, hidden, device="cuda", generator=gen)
    weight = 1 + 0.1 * torch.randn(hidden, device="cuda", generator=gen)
    if adversarial:
        big = 1e3 if dtype == torch.float16 else 1e4
        row_scale = torch.tensor([1.0, 1e-4, big, 0.0], device="cuda").repeat(tokens // 4 + 1)[:tokens]
        x = x * row_scale[:, None]
        residual, weight = residual * 3, weight * 40
    return x.to(dtype), weight.to(dtype), residual.to(dtype)


@pytest.mark.parametrize("adversarial", [False, True], ids=["normal", "adversarial"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("tokens", TOKENS)
def test_rmsnorm_add(tokens: int, hidden: int, dtype: torch.dtype, adversarial: bool) -> None:
    x, weight, residual = norm_inputs(tokens, hidden, dtype, adversarial=adversarial, seed=tokens + hidden)
    out = pt.rmsnorm_add(x, weight, residual, EPS)
    ref = pt.rmsnorm_add_reference(x, weight, residual, EPS)
    assert_matches_reference(out, ref, magnitude=magnitude(ref.float() - residual.float(), residual))


@pytest.mark.parametrize("adversarial", [False, True], ids=["normal", "adversarial"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("tokens", TOKENS)
def test_rmsnorm_add_scale(tokens: int, hidden: int, dtype: torch.dtype, adversarial: bool) -> None:
    x, weight, residual = norm_inputs(tokens, hidden, dtype, adversarial=adversarial, seed=7 * tokens + hidden)
    scale = torch.tensor([11.5 if adversarial else 0.37], dtype=dtype, device="cuda")
    out = pt.rmsnorm_add_scale(x, weight, residual, scale, EPS)
    ref = pt.rmsnorm_add_scale_reference(x, weight, residual, scale, EPS)
    normed = pt.rmsnorm_add_reference(x, weight, torch.zeros_like(residual), EPS)
    assert_matches_reference(out, ref, magnitude=scale.float().item() * magnitude(normed, residual))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("hidden", [1536, 2560, 1001])
@pytest.mark.parametrize("tokens", [600, 2049, 8192])
def test_norm_kernels_in_every_table_bucket(tokens: int, hidden: int, dtype: torch.dtype) -> None:
    """The launches the table gives above the default grid's sizes: four rows per
    program (600), two (2049, a partly empty last program) and the looped kernel (8192)."""
    x, weight, residual = norm_inputs(tokens, hidden, dtype, adversarial=True, seed=3 * tokens + hidden)
    scale = torch.tensor([0.37], dtype=dtype, device="cuda")
    out = pt.rmsnorm_add(x, weight, residual, EPS)
    ref = pt.rmsnorm_add_reference(x, weight, residual, EPS)
    assert_matches_reference(out, ref, magnitude=magnitude(ref.float() - residual.float(), residual))
    out = pt.rmsnorm_add_scale(x, weight, residual, scale, EPS)
    normed = pt.rmsnorm_add_reference(x, weight, torch.zeros_like(residual), EPS)
    ref = pt.rmsnorm_add_scale_reference(x, weight, residual, scale, EPS)
    assert_matches_reference(out, ref, magnitude=0.37 * magnitude(normed, residual))


@pytest.mark.parametrize(
    "launch",
    [
        pt.NormLaunch("row", 2048, 1, 4),
        pt.NormLaunch("row", 2048, 8, 16),
        pt.NormLaunch("looped", 512, 1, 1),
        pt.NormLaunch("looped", 256, 1, 1),
        pt.NormLaunch("looped", 1024, 1, 4, stream_hints=True),
    ],
    ids=str,
)
def test_norm_kernels_under_other_launches(launch: pt.NormLaunch) -> None:
    """Launches the table does not pick today (sweep candidates) still compute the same."""
    x, weight, residual = norm_inputs(1003, 1536, torch.bfloat16, adversarial=True, seed=11)
    out = pt.rmsnorm_add(x, weight, residual, EPS, launch=launch)
    ref = pt.rmsnorm_add_reference(x, weight, residual, EPS)
    assert_matches_reference(out, ref, magnitude=magnitude(ref.float() - residual.float(), residual))


# The exact kernel at the sweep's shapes: E2B/E4B widths, 1/2/4 rows per program
# (1003 rows: the last program partly empty), 4/8/16 warps, derived and explicit lanes.
EXACT_LAUNCHES = [
    pt.NormLaunch("exact", hidden, rows, warps, stream_hints=hints, lanes=lanes)
    for hidden in (1536, 2560)
    for rows, warps, hints, lanes in ((1, 4, False, 0), (1, 8, True, 0), (2, 8, False, 0), (2, 4, True, 0),
                                      (4, 16, False, 0), (2, 8, False, 64), (1, 16, False, 512))
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("launch", EXACT_LAUNCHES, ids=str)
def test_norm_kernels_exact_rows(launch: pt.NormLaunch, dtype: torch.dtype) -> None:
    """Rows as power-of-two segments (no idle lanes) compute what the padded rows do."""
    x, weight, residual = norm_inputs(1003, launch.block, dtype, adversarial=True, seed=13)
    out = pt.rmsnorm_add(x, weight, residual, EPS, launch=launch)
    ref = pt.rmsnorm_add_reference(x, weight, residual, EPS)
    assert_matches_reference(out, ref, magnitude=magnitude(ref.float() - residual.float(), residual))
    scale = torch.tensor([0.37], dtype=dtype, device="cuda")
    out = pt.rmsnorm_add_scale(x, weight, residual, scale, EPS, launch=launch)
    normed = pt.rmsnorm_add_reference(x, weight, torch.zeros_like(residual), EPS)
    ref = pt.rmsnorm_add_scale_reference(x, weight, residual, scale, EPS)
    assert_matches_reference(out, ref, magnitude=0.37 * magnitude(normed, residual))


@pytest.mark.parametrize("tokens", [4096, 16384])
def test_norm_kernels_exact_rows_match_padded_rows(tokens: int) -> None:
    """At prefill sizes (bf16) the exact and padded kernels round alike: they differ
    only in the fp32 summation order of the sum of squares."""
    x, weight, residual = norm_inputs(tokens, 1536, torch.bfloat16, adversarial=False, seed=17)
    exact = pt.rmsnorm_add(x, weight, residual, EPS, launch=pt.NormLaunch("exact", 1536, 2, 8))
    padded = pt.rmsnorm_add(x, weight, residual, EPS, launch=pt.NormLaunch("row", 2048, 2, 8))
    assert (exact != padded).float().mean().item() <= 1e-3


@pytest.mark.parametrize(
    "launch",
    [pt.TileLaunch(16, 256, 8), pt.TileLaunch(32, 256, 16), pt.TileLaunch(64, 256, 16, stream_hints=True)],
    ids=str,
)
def test_gelu_tanh_mul_sweep_tiles(launch: pt.TileLaunch) -> None:
    """The sweep's larger gelu tiles (up to 64 rows, 16 warps) on a strided per_layer_input."""
    gen = torch.Generator(device="cuda").manual_seed(19)
    gate = torch.randn(4099, 256, device="cuda", generator=gen).clamp(-3, 3).to(torch.bfloat16)
    ple = torch.randn(4099, 35, 256, device="cuda", generator=gen).to(torch.bfloat16)[:, 7, :]
    out = pt.gelu_tanh_mul(gate, ple, launch=launch)
    assert_matches_reference(out, pt.gelu_tanh_mul_reference(gate, ple), magnitude=magnitude(ple))


@pytest.mark.parametrize("strided", [True, False], ids=["strided", "contiguous"])
@pytest.mark.parametrize("per_layer_dim", [256, 77])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens", TOKENS)
def test_gelu_tanh_mul(tokens: int, per_layer_dim: int, dtype: torch.dtype, strided: bool) -> None:
    gen = torch.Generator(device="cuda").manual_seed(tokens + per_layer_dim)
    # |gate| <= ~3 keeps clear of the far negative tail, where eager tanh-GELU
    # loses precision to cancellation and bits may legitimately differ.
    gate = (torch.randn(tokens, per_layer_dim, device="cuda", generator=gen)).clamp(-3, 3).to(dtype)
    if strided:
        per_layer_inputs = torch.randn(tokens, 35, per_layer_dim, device="cuda", generator=gen).to(dtype)
        ple = per_layer_inputs[:, 17, :]
    else:
        ple = torch.randn(tokens, per_layer_dim, device="cuda", generator=gen).to(dtype)
    out = pt.gelu_tanh_mul(gate, ple)
    ref = pt.gelu_tanh_mul_reference(gate, ple)
    assert_matches_reference(out, ref, magnitude=magnitude(ple))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gelu_tanh_mul_tails_and_specials(dtype: torch.dtype) -> None:
    big = 6e4 if dtype == torch.float16 else 3e38
    specials = [0.0, -0.0, 1e-30, -1e-30, 1e4, -1e4, 12.0, -12.0, big, -big, float("inf"), float("-inf"), float("nan")]
    gen = torch.Generator(device="cuda").manual_seed(1)
    gate = torch.cat([torch.tensor(specials, device="cuda"), 8 * torch.randn(4096 - len(specials), device="cuda", generator=gen)])
    gate = gate.reshape(16, 256).to(dtype)
    ple = (3 * torch.randn(16, 256, device="cuda", generator=gen)).to(dtype)
    out = pt.gelu_tanh_mul(gate, ple)
    ref = pt.gelu_tanh_mul_reference(gate, ple)
    torch.testing.assert_close(out.float(), ref.float(), rtol=ULP[dtype], atol=1e-6 * magnitude(ple), equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_gelu_tanh_mul_matches_torch_cuda_gelu(dtype: torch.dtype) -> None:
    """Against the eager CUDA ops SGLang runs (F.gelu on the device, then the mul)."""
    gen = torch.Generator(device="cuda").manual_seed(2)
    gate = (torch.randn(512, 256, device="cuda", generator=gen)).clamp(-3, 3).to(dtype)
    ple = torch.randn(512, 8, 256, device="cuda", generator=gen).to(dtype)[:, 5, :]
    eager = F.gelu(gate, approximate="tanh") * ple
    assert_matches_reference(pt.gelu_tanh_mul(gate, ple), eager, magnitude=magnitude(ple))


@pytest.mark.parametrize("hidden", [1536, 2560])
@pytest.mark.parametrize("tokens", [1, 256, 4096])
def test_whole_tail_matches_reference(tokens: int, hidden: int) -> None:
    x, post_ff_weight, residual = norm_inputs(tokens, hidden, torch.bfloat16, adversarial=False, seed=tokens)
    gen = torch.Generator(device="cuda").manual_seed(tokens + hidden)
    out, ref, h, post_ple_weight = whole_tail(
        x, post_ff_weight, residual, per_layer_dim=256, num_layers=35, layer=4, gen=gen
    )
    # A rare flip in h changes a GEMM input, which can move several outputs of that row.
    assert_matches_reference(out, ref, magnitude=0.25 * magnitude(h, post_ple_weight), max_mismatch=0.05)


def test_layer_scalar_is_read_on_device_under_cuda_graph() -> None:
    """A captured graph must see the scalar's current value, not the one at capture."""
    x, weight, residual = norm_inputs(8, 1536, torch.bfloat16, adversarial=False, seed=3)
    scale = torch.tensor([1.0], dtype=torch.bfloat16, device="cuda")
    pt.rmsnorm_add_scale(x, weight, residual, scale, EPS)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = pt.rmsnorm_add_scale(x, weight, residual, scale, EPS)
    scale.fill_(0.5)
    graph.replay()
    torch.cuda.synchronize()
    ref = pt.rmsnorm_add_scale_reference(x, weight, residual, scale, EPS)
    assert_matches_reference(out, ref, magnitude=0.5 * magnitude(weight, residual))
