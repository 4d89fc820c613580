"""Patch qkv_norm_rope in the model: the fused q/k/v norm + RoPE kernel runs in
every attention layer (q only on KV-shared layers) under Triton's interpreter,
and the model keeps parity with stock SGLang and transformers (fp32, CPU)."""

from __future__ import annotations

import pytest
import torch

from sglang_gemma4 import harness, registry
from sglang_gemma4.srt.models.gemma4_causal import attention
from tests.cpu.harness import PARITY_TOL, parity_with_and_without

pytestmark = pytest.mark.interpret


@pytest.fixture
def kernel_calls(monkeypatch):
    """(has k) per fused-kernel call."""
    calls: list[bool] = []
    real = attention.qkv_norm_rope

    def recording(q, k, v, *args, **kwargs):
        calls.append(k is not None)
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(attention, "qkv_norm_rope", recording)
    return calls


@pytest.mark.parametrize("name", ["dense", "kv_shared"])
def test_fused_kernel_runs_in_every_layer_with_parity(plugin_table, kernel_calls, name):
    stock, patched = parity_with_and_without(name)
    assert patched.max_abs_diff <= PARITY_TOL, patched
    assert stock.max_abs_diff <= PARITY_TOL, stock
    config = harness.make_config(name)
    shared = config.num_kv_shared_layers
    owners = config.num_hidden_layers - shared
    # The stock run is suspended; the patched one calls the kernel once per layer.
    assert kernel_calls == [True] * owners + [False] * shared


def test_patched_equals_unpatched(plugin_table, kernel_calls):
    ids = harness.prompt()
    with registry.suspended():
        stock = harness.sglang_hidden(harness.build_pair("kv_shared").sglang, ids)
    patched = harness.sglang_hidden(harness.build_pair("kv_shared").sglang, ids)
    assert len(kernel_calls) == 6
    torch.testing.assert_close(patched, stock, rtol=0, atol=1e-5)


def test_norm_rope_alone(plugin_table, kernel_calls, monkeypatch):
    """Q-only switched off: shared layers run the full GEMM, then the fused kernel on q alone."""
    monkeypatch.setattr(attention, "enabled", lambda: frozenset({attention.NORM_ROPE}))
    pair = harness.build_pair("kv_shared")
    projected = []
    monkeypatch.setattr(attention, "project_q", lambda *a: projected.append(a) or pytest.fail("Q-only ran"))
    assert harness.compare(pair, harness.prompt()).max_abs_diff <= PARITY_TOL
    assert kernel_calls == [True] * 3 + [False] * 3 and projected == []
