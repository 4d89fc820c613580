"""Patch router_scale: on native paths stock SGLang drops the router scale (DESIGN.md section 5)."""

import torch

from sglang_gemma4 import registry
from tests.cpu.harness import PARITY_TOL, parity_with_and_without


def test_applied(plugin_table):
    assert plugin_table["router_scale"].state == "applied"


def test_stock_sglang_routes_wrong_and_plugin_fixes_it(plugin_table):
    stock, patched = parity_with_and_without("moe")
    # Without the fix the tiny MoE model's final hidden states diverge (cosine ~0.85).
    assert stock.cosine < 0.95, stock
    assert patched.max_abs_diff <= PARITY_TOL, patched


def test_native_norm_math(plugin_table):
    from sglang.srt.layers.layernorm import Gemma4RMSNorm

    x = torch.randn(5, 16, dtype=torch.bfloat16)
    w = torch.rand(16) + 0.5
    ref = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)

    router_norm = Gemma4RMSNorm(16, eps=1e-6, with_scale=False)
    router_norm.weight.copy_(w)
    torch.testing.assert_close(router_norm.forward_native(x), (ref * w).to(x.dtype), rtol=0, atol=0)

    scaled = Gemma4RMSNorm(16, eps=1e-6, scale_shift=1.0)
    with torch.no_grad():
        scaled.weight.copy_(w)
    torch.testing.assert_close(scaled.forward_native(x), (ref * (w + 1.0)).to(x.dtype), rtol=0, atol=0)

    # A with_scale=False norm with its weight left at ones (the value norm) is unchanged.
    value_norm = Gemma4RMSNorm(16, eps=1e-6, with_scale=False)
    with registry.suspended("router_scale"):
        stock = Gemma4RMSNorm.forward_native(value_norm, x)
    torch.testing.assert_close(value_norm.forward_native(x), stock, rtol=0, atol=0)
