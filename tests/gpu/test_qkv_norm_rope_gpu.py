"""The q/k/v-norm + RoPE kernel on the GPU at Gemma-4's attention shapes.

Runs on a CUDA machine with torch + triton and no sglang::

    PYTHONPATH=python python3 -m pytest tests/gpu/test_qkv_norm_rope_gpu.py -q
"""

import pytest
import torch

from tests.qkv_norm_rope_checks import check, qkv_case

pytestmark = pytest.mark.gpu

# (q heads, kv heads, head_dim, rotated dims): sliding and full-attention layers
# of E2B, E4B, 26B-A4B and 31B (full attention: proportional RoPE on a quarter).
SHAPES = {
    "E2B-sliding": (8, 1, 256, None),
    "E2B-full": (8, 1, 512, 128),
    "E4B-sliding": (8, 2, 256, None),
    "26B-sliding": (16, 8, 256, None),
    "26B-full": (16, 2, 512, 128),
    "31B-sliding": (32, 16, 256, None),
    "31B-full": (32, 4, 512, 128),
}
TOKENS = [1, 3, 17, 256, 4096]
DTYPES = [torch.bfloat16, torch.float16, torch.float32]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("q_only", [False, True], ids=["qkv", "q_only"])
def test_kernel_matches_reference(shape, tokens, dtype, q_only):
    heads, kv_heads, head_dim, rotated = SHAPES[shape]
    check(qkv_case(tokens, heads, kv_heads, head_dim, dtype, q_only=q_only, rotated=rotated, seed=tokens, device="cuda"))


def test_large_values_and_cuda_graph_replay():
    """Captured once, replayed on new inputs copied in place: reads positions on the device."""
    case = qkv_case(8, 8, 2, 256, torch.bfloat16, scale=300.0, seed=1, device="cuda")
    check(case)
    case.run()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        case.run()
    fresh = qkv_case(8, 8, 2, 256, torch.bfloat16, seed=2, device="cuda")
    want_q, want_k, want_v = fresh.expected()
    case.q.copy_(fresh.q), case.k.copy_(fresh.k), case.v.copy_(fresh.v), case.positions.copy_(fresh.positions)
    case.w_q.copy_(fresh.w_q), case.w_k.copy_(fresh.w_k)
    graph.replay()
    torch.cuda.synchronize()
    for got, want in ((case.q, want_q), (case.k, want_k), (case.v, want_v)):
        torch.testing.assert_close(got.float(), want.float(), rtol=2**-7, atol=2**-7)
