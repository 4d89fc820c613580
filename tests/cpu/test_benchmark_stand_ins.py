"""The benchmarks' single-op stand-ins for SGLang's launches (benchmarks/sglang_ops.py)
compute what the SGLang ops compute: fp32 on CPU tensors under Triton's interpreter.
A stand-in that computed something else would make the ``sglang`` baseline
of every benchmark meaningless."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import sglang_ops as so  # noqa: E402

pytestmark = pytest.mark.interpret

T, H, EPS = 5, 64, 1e-6


def _rms(x, w=None):
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS)
    return y if w is None else y * w


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def test_norms(gen):
    x, r, x2 = (torch.randn(T, H, generator=gen) for _ in range(3))
    w1, w2, w3 = (torch.randn(H, generator=gen) for _ in range(3))
    s = torch.tensor([0.7])
    _close(so.rmsnorm(x, w1, EPS), _rms(x, w1))
    a, res = x.clone(), r.clone()
    so.fused_add_rmsnorm(a, res, w1, EPS)
    _close(res, x + r)
    _close(a, _rms(x + r, w1))
    _close(so.rmsnorm_residual_scalar(x, w1, r, s, EPS), (_rms(x, w1) + r) * s)
    _close(so.dual_rmsnorm_residual_scalar(x, w1, x2, w2, w3, r, s, EPS), (_rms(_rms(x, w1) + _rms(x2, w2), w3) + r) * s)


@pytest.mark.parametrize("q_only", [False, True])
def test_qkv_norm_and_rope(gen, q_only):
    nq, nkv, hd = 4, 2, 32
    qkv = torch.randn(T, (nq + 2 * nkv) * hd, generator=gen)
    q, k, v = qkv.split([nq * hd, nkv * hd, nkv * hd], -1)
    wq, wk = torch.randn(hd, generator=gen), torch.randn(hd, generator=gen)
    want_q = _rms(q.reshape(T, nq, hd), wq).reshape(T, -1)
    want_k = _rms(k.reshape(T, nkv, hd), wk).reshape(T, -1)
    want_v = _rms(v.reshape(T, nkv, hd)).reshape(T, -1)
    v_before = v.clone()
    so.qkv_rmsnorm(q, None if q_only else k, None if q_only else v, wq, wk, nq, nkv, hd, EPS)
    _close(q, want_q)
    _close(v, v_before if q_only else want_v)

    pos = torch.tensor([3, 0, 7, 2, 9])
    inv = 1 / 10000 ** (torch.arange(0, hd, 2).float() / hd)
    f = torch.arange(16).float()[:, None] * inv
    cache = torch.cat([f.cos(), f.sin()], -1)

    def rope_ref(x, n):
        x = x.reshape(T, n, hd)
        c, s = cache[pos][:, None, : hd // 2], cache[pos][:, None, hd // 2 :]
        a, b = x[..., : hd // 2], x[..., hd // 2 :]
        return torch.cat([a * c - b * s, b * c + a * s], -1).reshape(T, -1)

    key = k if not q_only else torch.zeros(T, nkv * hd)
    want_q, want_k = rope_ref(q.clone(), nq), rope_ref(key.clone(), nkv)
    so.rope(pos, q, key, cache, nq, nkv, hd)
    _close(q, want_q)
    _close(key, want_k)


def test_kv_store_and_mlp(gen):
    k, v = torch.randn(T, 64, generator=gen), torch.randn(T, 64, generator=gen)
    kc, vc = torch.zeros(20, 64), torch.zeros(20, 64)
    loc = torch.tensor([4, 9, 1, 0, 13])
    so.kv_store(k, v, kc, vc, loc)
    assert torch.equal(kc[loc], k) and torch.equal(vc[loc], v)
    g = torch.randn(T, 96, generator=gen)
    _close(so.gelu_tanh_and_mul(g), F.gelu(g[:, :48], approximate="tanh") * g[:, 48:])


def test_moe_ops(gen):
    logits = torch.randn(T, 16, generator=gen)
    weights, ids = so.topk_routing(logits, 4)
    top = logits.softmax(-1).topk(4)
    assert torch.equal(ids.long(), top.indices)
    _close(weights, top.values / top.values.sum(-1, keepdim=True))

    ids = torch.randint(0, 16, (T * 4,), dtype=torch.int32, generator=gen)
    sorted_ids, expert_of_block = so.moe_align(ids, 16, 4)
    counts = torch.bincount(ids.long(), minlength=16)
    padded = (counts + 3) // 4 * 4
    starts = padded.cumsum(0) - padded
    for e in range(16):
        slots = sorted_ids[starts[e] : starts[e] + counts[e]].long()
        assert sorted(slots.tolist()) == sorted(torch.nonzero(ids == e).flatten().tolist())
    blocks = int(padded.sum()) // 4
    assert expert_of_block[:blocks].tolist() == [e for e in range(16) for _ in range(int(padded[e]) // 4)]

    y = torch.randn(T, 4, H, generator=gen)
    _close(so.moe_sum_reduce(y), y.sum(1))
