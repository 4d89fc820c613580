"""Programmatic dependent launch on CUDA: the same bits with it as without it.

A chain in which every kernel reads what the GEMM or kernel before it wrote
(GEMM -> norm -> GEMM -> gelu -> GEMM -> norm -> triple -> end of layer ->
GEMM -> q/k/v norm + RoPE), so a kernel that read its input before its
predecessor had finished would change the result. Run eagerly and captured in
a CUDA graph, with PDL on and off; on an sm_90+ GPU the PDL runs must use it.

Runs on the GPU machine (torch + triton + CUDA, no sglang):
``PYTHONPATH=python python3 -m pytest tests/gpu/test_dependent_launch_gpu.py -q``.
"""

from __future__ import annotations

import pytest
import torch

from sglang_gemma4.kernels import dependent_launch as dl
from sglang_gemma4.kernels import end_of_layer_norm as eol
from sglang_gemma4.kernels import ple_tail as pt
from sglang_gemma4.kernels import qkv_norm_rope as qnr
from sglang_gemma4.kernels import triple_rmsnorm as tri
from tests.qkv_norm_rope_checks import cos_sin_cache

pytestmark = pytest.mark.gpu

EPS = 1e-6
HEAD_DIM, Q_HEADS, KV_HEADS, PLE_DIM = 256, 8, 2, 256


class Chain:
    def __init__(self, tokens: int, hidden: int, dtype: torch.dtype, seed: int = 0) -> None:
        gen = torch.Generator(device="cuda").manual_seed(seed)

        def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
            return (scale * torch.randn(*shape, device="cuda", generator=gen)).to(dtype)

        self.x = randn(tokens, hidden)
        self.residual = randn(tokens, hidden)
        self.w_in = randn(hidden, hidden, scale=hidden**-0.5)
        self.w_gate = randn(hidden, PLE_DIM, scale=hidden**-0.5)
        self.w_proj = randn(PLE_DIM, hidden, scale=PLE_DIM**-0.5)
        qkv = (Q_HEADS + 2 * KV_HEADS) * HEAD_DIM
        self.w_qkv = randn(hidden, qkv, scale=hidden**-0.5)
        self.ple = randn(tokens, 4, PLE_DIM)[:, 1, :]
        self.norms = [randn(hidden, scale=0.1) + 1 for _ in range(8)]
        self.w_q, self.w_k = randn(HEAD_DIM, scale=0.1) + 1, randn(HEAD_DIM, scale=0.1) + 1
        self.scalar = torch.tensor([0.7], device="cuda", dtype=dtype)
        self.positions = torch.randint(0, 4096, (tokens,), device="cuda", generator=gen)
        self.cos_sin_cache = cos_sin_cache(4096, HEAD_DIM).cuda()

    def run(self) -> list[torch.Tensor]:
        w = self.norms
        h = pt.rmsnorm_add(self.x @ self.w_in, w[0], self.residual, EPS)
        g = pt.gelu_tanh_mul(h @ self.w_gate, self.ple)
        s = pt.rmsnorm_add_scale(g @ self.w_proj, w[1], h, self.scalar, EPS)
        r, dense_in, router_in, moe_in = tri.post_attn_triple_rmsnorm(s, h, w[2], w[3], w[4], w[5], EPS)
        r2, dense_in2 = tri.post_attn_norm_add(router_in, r, w[2], w[3], EPS)
        h_out, next_in = eol.moe_end_of_layer_norm(dense_in, w[6], moe_in, w[7], w[0], r2, self.scalar, w[1], EPS)
        h_dense, next_dense = eol.dense_end_of_layer_norm(dense_in2, w[2], h_out, self.scalar, w[3], EPS)
        h_ple, next_ple = eol.ple_end_of_layer_norm(next_dense, w[4], h_dense, self.scalar, w[5], EPS)
        q, k, v = (next_ple @ self.w_qkv).split([Q_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM], dim=-1)
        qnr.qkv_norm_rope(
            q, k, v, self.positions, self.cos_sin_cache, self.w_q, self.w_k, EPS,
            num_q_heads=Q_HEADS, num_kv_heads=KV_HEADS, head_dim=HEAD_DIM,
        )
        return [h, g, s, r, dense_in, router_in, moe_in, r2, dense_in2, h_out, next_in, h_dense, next_dense, h_ple, next_ple, q, k, v]


def run_eager(chain: Chain, pdl: bool) -> list[torch.Tensor]:
    with dl.dependent_launch("on" if pdl else "off"):
        return [t.clone() for t in chain.run()]


def run_graph(chain: Chain, pdl: bool) -> list[torch.Tensor]:
    with dl.dependent_launch("on" if pdl else "off"):
        chain.run()  # compile outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = chain.run()
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    return [t.clone() for t in outputs]


def test_pdl_is_used_on_sm90_and_later():
    x = torch.zeros(1, 8, device="cuda")
    on_hopper = torch.cuda.get_device_capability() >= (9, 0)
    for mode, family, width, want in (
        ("on", "qkv_norm_rope", 8, on_hopper),
        ("auto", "ple_tail", 1536, on_hopper),
        ("auto", "qkv_norm_rope", 8, False),
        ("off", "ple_tail", 1536, False),
    ):
        with dl.dependent_launch(mode):
            assert (dl.launch_kwargs(x, family, 1, width) == {"USE_PDL": True, "launch_pdl": True}) is want


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tokens, hidden", [(1, 2816), (7, 1536), (300, 2560), (5000, 2816), (9000, 5376)])
def test_same_bits_with_and_without_pdl(tokens, hidden, dtype):
    chain = Chain(tokens, hidden, dtype)
    # Eager against eager and graph against graph: cuBLAS may pick another GEMM
    # algorithm under capture, which is not what this test is about.
    for name, run in (("eager", run_eager), ("graph", run_graph)):
        want = run(chain, pdl=False)
        for i, (got, w) in enumerate(zip(run(chain, pdl=True), want)):
            assert torch.equal(got, w), f"{name}: output {i} differs with PDL"
