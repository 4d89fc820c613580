"""End-of-layer kernels (next layer's input norm folded in) on the GPU at the real shapes.

Runs on a CUDA machine with torch + triton and no sglang::

    PYTHONPATH=python python3 -m pytest tests/gpu/test_end_of_layer_norm_gpu.py -q

Outputs are compared with the fp32 references (torch ops on the same GPU) to
within one final rounding (tests/end_of_layer_norm_checks.py).
"""

import pytest
import torch

from sglang_gemma4.kernels import end_of_layer_norm as eol
from sglang_gemma4.kernels.row_segments import power_of_two_segments
from tests.end_of_layer_norm_checks import (
    KINDS,
    SCALES,
    check_case,
    check_strided_over_residual,
    end_of_layer_case,
)

pytestmark = pytest.mark.gpu

# E2B/E4B (PLE layers), 26B-A4B (MoE), 31B (dense); 1000: a row that is no power of two.
HIDDENS = {"ple": [1536, 2560, 1000], "moe": [2816, 1000], "dense": [5376, 1000]}
TOKENS = [1, 3, 17, 256, 4096]
DTYPES = [torch.bfloat16, torch.float16, torch.float32]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("kind,hidden", [(k, h) for k in KINDS for h in HIDDENS[k]])
def test_kernel_matches_reference(kind, hidden, tokens, dtype):
    check_case(end_of_layer_case(kind, tokens, hidden, dtype, seed=tokens, device="cuda"))


@pytest.mark.parametrize("scale", SCALES.values(), ids=SCALES.keys())
@pytest.mark.parametrize("kind", KINDS)
def test_magnitudes_and_zero_row(kind, scale):
    hidden = HIDDENS[kind][0]
    h, next_in = check_case(
        end_of_layer_case(kind, 33, hidden, torch.bfloat16, scale=scale, zero_row=True, seed=4, device="cuda")
    )
    assert torch.count_nonzero(h[16]) == 0 and torch.count_nonzero(next_in[16]) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_every_element_written(kind):
    """``out`` poisoned with NaN before the call: no element is left unwritten."""
    case = end_of_layer_case(kind, 300, HIDDENS[kind][0], torch.bfloat16, seed=8, device="cuda")
    out = torch.full_like(case.residual, float("nan"))
    h, next_in = case.run(out=out)
    assert h.data_ptr() == out.data_ptr()
    assert not h.isnan().any() and not next_in.isnan().any()


@pytest.mark.parametrize("kind", KINDS)
def test_cuda_graph_reads_scalar_on_device(kind):
    """Captured once, replayed after the inputs and ``layer_scalar`` change in place:
    the replay computes with the new values (nothing was read on the host)."""
    case = end_of_layer_case(kind, 8, HIDDENS[kind][0], torch.bfloat16, seed=1, device="cuda")
    case.run()  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        h, next_in = case.run()
    fresh = end_of_layer_case(kind, 8, HIDDENS[kind][0], torch.bfloat16, seed=2, device="cuda")
    for dst, src in zip(case.args, fresh.args):
        dst.copy_(src)
    graph.replay()
    torch.cuda.synchronize()
    want_h, want_next = fresh.expected()
    torch.testing.assert_close(h.float(), want_h.float(), rtol=2**-7, atol=2**-7)
    torch.testing.assert_close(next_in.float(), want_next.float(), rtol=2**-7, atol=2**-7)


@pytest.mark.parametrize("tokens", [1, 192, 384, 700, 1000, 2000, 5000, 20000])
@pytest.mark.parametrize("kind,hidden", [("ple", 1536), ("ple", 2560), ("moe", 2816), ("dense", 5376)])
def test_launch_table_matches_reference(kind, hidden, tokens):
    """Whatever launch_config picks at each size (the chunked kernel from PREFILL_TABLE's row counts) computes the reference."""
    check_case(end_of_layer_case(kind, tokens, hidden, torch.bfloat16, seed=tokens, device="cuda"))


REAL_WIDTHS = [("ple", 1536), ("ple", 2560), ("moe", 2816), ("dense", 5376)]
# The chunked kernel's launches the sweep times (benchmarks/sweep_end_of_layer_norm.py):
# (chunk columns, warps, unroll of passes 2-4, eviction hints), and with the residual prefetched.
CHUNKED = [eol.EndOfLayerLaunch(chunk, 1, warps, "chunked", unroll, stream_hints=hints) for chunk, warps, unroll, hints in (
    (1024, 4, 0, False), (1024, 8, 0, False), (2048, 8, 0, False), (1024, 4, 1, False), (1024, 4, 2, False),
    (1024, 8, 1, False), (2048, 8, 1, False), (512, 4, 0, False), (512, 4, 1, False), (2048, 4, 0, False),
    (2048, 16, 0, False), (1024, 4, 0, True), (2048, 8, 0, True), (2048, 4, 0, True), (1024, 8, 1, True))] + [
    eol.EndOfLayerLaunch(1024, 1, 4, "chunked", prefetch="L2"),
    eol.EndOfLayerLaunch(1024, 1, 4, "chunked", 1, prefetch="L2"),
    eol.EndOfLayerLaunch(2048, 1, 4, "chunked", 0, stream_hints=True, prefetch="L1"),
]


def _launch_id(launch: eol.EndOfLayerLaunch) -> str:
    return (f"c{launch.block_h}w{launch.num_warps}u{launch.unroll}{'h' if launch.stream_hints else ''}"
            f"{'p' + launch.prefetch if launch.prefetch else ''}")


KIND_OF_WIDTH = {1536: "ple", 2560: "ple", 2816: "moe", 5376: "dense"}
TABLE_ROLLED = sorted(
    {(hidden, launch) for hidden, buckets in eol.PREFILL_TABLE.items() for _, launch in buckets if launch.unroll}
)


@pytest.mark.parametrize("hidden,launch", TABLE_ROLLED, ids=lambda v: str(v) if isinstance(v, int) else _launch_id(v))
def test_table_rolled_launches_give_the_unrolled_bits(hidden, launch):
    """The table's rolled launches give the bits of the same launch unrolled (bf16,
    4096 rows): every lane adds its chunks in the same order. Not every rolled
    shape does: on the H200 (2026-11-29) the MoE kernel at 1024 columns x 8
    warps and at 512 x 4 differed from their unrolled forms in the last bits
    (the loop body compiles to other instruction sequences), within the
    reference bound the tests above check for every sweep launch."""
    case = end_of_layer_case(KIND_OF_WIDTH[hidden], 4096, hidden, torch.bfloat16, seed=12, device="cuda")
    for a, b in zip(case.run(launch=launch), case.run(launch=launch._replace(unroll=0))):
        assert torch.equal(a, b)


TABLE_HINTED = sorted(
    {(hidden, launch) for hidden, buckets in eol.PREFILL_TABLE.items() for _, launch in buckets if launch.stream_hints}
)


@pytest.mark.parametrize("hidden,launch", TABLE_HINTED, ids=lambda v: str(v) if isinstance(v, int) else _launch_id(v))
def test_table_hinted_launches_give_the_unhinted_bits(hidden, launch):
    """Eviction hints move where the rows are cached, not what is computed:
    the table's hinted launches give the bits of the same launch without them
    (bf16, 384 rows, ``out`` over ``residual`` too)."""
    case = end_of_layer_case(KIND_OF_WIDTH[hidden], 384, hidden, torch.bfloat16, seed=14, device="cuda")
    for a, b in zip(case.run(launch=launch), case.run(launch=launch._replace(stream_hints=False))):
        assert torch.equal(a, b)
    check_strided_over_residual(KIND_OF_WIDTH[hidden], 300, hidden, launch, seed=15, device="cuda")


@pytest.mark.parametrize("launch", CHUNKED, ids=_launch_id)
@pytest.mark.parametrize("kind,hidden", REAL_WIDTHS)
def test_chunked_kernel_at_real_widths(kind, hidden, launch):
    """Forced chunked launches at 4096 rows (bf16) and 300 rows (fp16, fp32; one
    also strided, written over its residual)."""
    check_case(end_of_layer_case(kind, 4096, hidden, torch.bfloat16, seed=6, device="cuda"), launch=launch)
    for dtype in (torch.float16, torch.float32):
        check_case(end_of_layer_case(kind, 300, hidden, dtype, seed=7, device="cuda"), launch=launch)
    check_strided_over_residual(kind, 257, hidden, launch, seed=9, device="cuda")


def _persistent_launches(hidden: int) -> list[eol.EndOfLayerLaunch]:
    """The persistent kernel's launches the sweep times at this width, at 1 and 4
    programs per SM; exact rows in 8 warps also with the activations cached in L2 only."""
    padded = 1 << (hidden - 1).bit_length()
    blocks = [padded] + ([hidden] if hidden != padded and power_of_two_segments(hidden, 3) else [])
    launches = [
        eol.EndOfLayerLaunch(block, 1, warps, "persistent", programs_per_sm=programs)
        for block in blocks
        for warps in (4, 8, 16)
        if 4 <= padded // (32 * warps) <= 32
        for programs in (1, 4)
    ]
    if blocks[-1] == hidden != padded:
        launches.append(eol.EndOfLayerLaunch(hidden, 1, 8, "persistent", programs_per_sm=2, act_cache=".cg"))
    return launches


PERSISTENT = [(kind, hidden, launch) for kind, hidden in REAL_WIDTHS for launch in _persistent_launches(hidden)]


@pytest.mark.parametrize(
    "kind,hidden,launch", PERSISTENT,
    ids=[f"{k}{h}-b{lc.block_h}w{lc.num_warps}p{lc.programs_per_sm}{lc.act_cache}" for k, h, lc in PERSISTENT],
)
def test_persistent_kernel_at_real_widths(kind, hidden, launch):
    """The persistent kernel at 5000 rows (each program walks several rows; bf16),
    at 300 rows in fp16 and fp32, and at 1000 strided rows written over their
    residual with a zero row."""
    check_case(end_of_layer_case(kind, 5000, hidden, torch.bfloat16, seed=6, device="cuda"), launch=launch)
    for dtype in (torch.float16, torch.float32):
        check_case(end_of_layer_case(kind, 300, hidden, dtype, seed=7, device="cuda"), launch=launch)
    check_strided_over_residual(kind, 1000, hidden, launch, seed=9, device="cuda")


# --------------------------------------------------------------------------- the experts' rows summed in the kernel


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens", [1, 2, 8, 17, 32, 64, 256])
@pytest.mark.parametrize("hidden", [2816, 1000])
def test_expert_sum_matches_reference(hidden, tokens, dtype):
    check_case(end_of_layer_case("moe_experts", tokens, hidden, dtype, seed=tokens, device="cuda"))


@pytest.mark.parametrize("scale", SCALES.values(), ids=SCALES.keys())
def test_expert_sum_magnitudes(scale):
    check_case(end_of_layer_case("moe_experts", 9, 2816, torch.bfloat16, scale=scale, zero_row=True, device="cuda"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("tokens", [1, 8, 32])
def test_expert_sum_is_the_topk_sum_then_the_moe_end(tokens, dtype):
    """Bit for bit: the rows summed as SGLang's moe_sum_reduce_triton does (fp32 from
    zero, routing order, one rounding; here the fp32 reference), then the
    plugin's MoE end-of-layer kernel of that sum."""
    case = end_of_layer_case("moe_experts", tokens, 2816, dtype, seed=3, device="cuda")
    h_dense, w1, rows, w2, w3, residual, scalar, w_next = case.args
    want = eol.moe_end_of_layer_norm(
        h_dense, w1, eol.moe_expert_sum_reference(rows), w2, w3, residual, scalar, w_next, 1e-6,
        launch=eol.row_launch(2816),
    )
    got = case.run()
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
