"""Inputs and comparisons shared by the CPU and GPU qkv-norm-RoPE kernel tests (torch only)."""

from __future__ import annotations

import dataclasses

import torch

from sglang_gemma4.kernels.qkv_norm_rope import qkv_norm_rope, qkv_norm_rope_reference

EPS = 1e-6


def cos_sin_cache(max_pos: int, head_dim: int, *, rotated: int | None = None, base: float = 10000.0) -> torch.Tensor:
    """``[max_pos, head_dim]`` fp32: cos of ``head_dim/2`` angles, then their sin.

    ``rotated`` < ``head_dim`` zeroes the frequencies past ``rotated/2`` angles,
    as Gemma-4's proportional (partial) RoPE does.
    """
    half = head_dim // 2
    angles = half if rotated is None else rotated // 2
    inv_freq = torch.zeros(half)
    inv_freq[:angles] = 1.0 / base ** (torch.arange(0, 2 * angles, 2, dtype=torch.float) / head_dim)
    freqs = torch.arange(max_pos, dtype=torch.float)[:, None] * inv_freq[None, :]
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1)


@dataclasses.dataclass
class QKVCase:
    q: torch.Tensor
    k: torch.Tensor | None
    v: torch.Tensor | None
    positions: torch.Tensor
    cache: torch.Tensor
    w_q: torch.Tensor
    w_k: torch.Tensor | None
    heads: dict

    def run(self) -> None:
        qkv_norm_rope(self.q, self.k, self.v, self.positions, self.cache, self.w_q, self.w_k, EPS, **self.heads)

    def expected(self):
        return qkv_norm_rope_reference(
            self.q, self.k, self.v, self.positions, self.cache, self.w_q, self.w_k, EPS, **self.heads
        )


def qkv_case(
    tokens: int,
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    *,
    q_only: bool = False,
    rotated: int | None = None,
    scale: float = 1.0,
    seed: int = 0,
    positions_dtype: torch.dtype = torch.int64,
    device: str | torch.device = "cpu",
) -> QKVCase:
    """q, k, v as strided views of one qkv GEMM output, as ``qkv.split`` gives them."""
    gen = torch.Generator().manual_seed(seed)
    q_size, kv_size = num_q_heads * head_dim, num_kv_heads * head_dim
    width = q_size + (0 if q_only else 2 * kv_size)
    qkv = (scale * torch.randn(tokens, width, generator=gen)).to(device, dtype)
    max_pos = 4096
    positions = torch.randint(0, max_pos, (tokens,), generator=gen).to(device, positions_dtype)
    w_q = (1 + 0.3 * torch.randn(head_dim, generator=gen)).to(device, dtype)
    w_k = (1 + 0.3 * torch.randn(head_dim, generator=gen)).to(device, dtype)
    if q_only:
        q, k, v, w_k = qkv, None, None, None
    else:
        q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
    return QKVCase(
        q, k, v, positions, cos_sin_cache(max_pos, head_dim, rotated=rotated).to(device), w_q, w_k,
        dict(num_q_heads=num_q_heads, num_kv_heads=num_kv_heads, head_dim=head_dim),
    )


def assert_close_to_reference(actual: torch.Tensor, expected: torch.Tensor, name: str, *, max_share: float = 5e-3) -> None:
    """Within two units in the last place of each head's scale; bf16/fp16 bit-identical on
    all but ``max_share`` of the elements (a final rounding fell the other way)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, name
    if actual.numel() == 0:
        return
    a, e = actual.float(), expected.float()
    assert torch.isfinite(a).all(), f"{name}: non-finite"
    eps = torch.finfo(actual.dtype).eps
    ulps = 16 if actual.dtype == torch.float32 else 2
    bound = ulps * eps * (e.abs() + e.abs().amax(dim=-1, keepdim=True) / 8) + torch.finfo(actual.dtype).tiny
    assert ((a - e).abs() <= bound).all(), f"{name}: max |diff| {(a - e).abs().max().item():.3g}"
    if actual.dtype != torch.float32:
        share = (actual != expected).float().mean().item()
        assert share <= max_share, f"{name}: {share:.2%} of elements differ"


def check(case: QKVCase) -> None:
    want_q, want_k, want_v = case.expected()
    case.run()
    assert_close_to_reference(case.q, want_q, "q")
    if want_k is not None:
        assert_close_to_reference(case.k, want_k, "k")
        assert_close_to_reference(case.v, want_v, "v")
