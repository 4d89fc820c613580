"""Patch attention_prologue, Q-only behaviour: KV-shared layers project Q only; model parity on CPU (fp32).

Runs in the plain pytest process, where the fused norm+RoPE kernel cannot run
(CPU tensors without the interpreter): the hook's Q-only GEMM is followed by
SGLang's own norm and RoPE ops. tests/cpu/test_qkv_norm_rope_model.py runs the
same model under the interpreter with the fused kernel.
"""

from __future__ import annotations

import pytest
import torch

from sglang_gemma4 import harness, registry
from sglang_gemma4.srt.models.gemma4_causal import attention
from tests.cpu.harness import PARITY_TOL, parity_with_and_without

CONFIG = "kv_shared"


def _shared_attentions(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [layer.self_attn for layer in model.model.layers if layer.self_attn.is_kv_shared_layer]


def test_applied(plugin_table):
    assert plugin_table[attention.PATCH_NAME].state == "applied", plugin_table[attention.PATCH_NAME]


def test_parity_patched_unpatched_transformers(plugin_table):
    stock, patched = parity_with_and_without(CONFIG)
    assert stock.max_abs_diff <= PARITY_TOL, stock
    assert patched.max_abs_diff <= PARITY_TOL, patched


def test_patched_equals_unpatched(plugin_table):
    ids = harness.prompt()
    with registry.suspended():
        stock = harness.sglang_hidden(harness.build_pair(CONFIG).sglang, ids)
    patched = harness.sglang_hidden(harness.build_pair(CONFIG).sglang, ids)
    torch.testing.assert_close(patched, stock, rtol=0, atol=1e-5)


class _Spy:
    """Counts qkv_proj calls per layer and records the Q-only GEMMs' weights and outputs."""

    def __init__(self, model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
        self.qkv_calls: dict[int, int] = {}
        self.q_weights: list[tuple[int, tuple[int, ...]]] = []
        self.q_widths: list[int] = []
        for layer in model.model.layers:
            attn = layer.self_attn
            attn.qkv_proj.register_forward_hook(self._count(attn.layer_id))
        spy = self

        class RecordingRows(attention._RowsOf):
            def __init__(self, weight: torch.Tensor) -> None:
                super().__init__(weight)
                spy.q_weights.append((weight.data_ptr(), tuple(weight.shape)))

        real_project_q = attention.project_q

        def recording_project_q(attn, hidden_states):
            out = real_project_q(attn, hidden_states)
            spy.q_widths.append(out.shape[-1])
            return out

        monkeypatch.setattr(attention, "_RowsOf", RecordingRows)
        monkeypatch.setattr(attention, "project_q", recording_project_q)

    def _count(self, layer_id: int):
        def hook(module, args, output):
            self.qkv_calls[layer_id] = self.qkv_calls.get(layer_id, 0) + 1

        return hook


def test_shared_layers_skip_the_kv_gemm_without_copying_weights(plugin_table, monkeypatch):
    pair = harness.build_pair(CONFIG)
    spy = _Spy(pair.sglang, monkeypatch)
    harness.sglang_hidden(pair.sglang, harness.prompt())
    shared = _shared_attentions(pair.sglang)
    assert len(shared) == 3
    # Owner layers still run the full qkv GEMM; shared layers never call qkv_proj.
    assert set(spy.qkv_calls) == {0, 1, 2}
    a = shared[0]
    assert spy.q_widths == [a.q_size] * 3 and a.q_size < a.q_size + 2 * a.kv_size
    # The Q-only GEMM reads the first q_size rows of the existing weight, in place.
    assert spy.q_weights == [
        (attn.qkv_proj.weight.data_ptr(), (attn.q_size, attn.qkv_proj.weight.shape[1])) for attn in shared
    ]


def test_unpatched_shared_layers_run_the_full_gemm(plugin_table, monkeypatch):
    pair = harness.build_pair(CONFIG)
    with registry.suspended():
        spy = _Spy(pair.sglang, monkeypatch)
        harness.sglang_hidden(pair.sglang, harness.prompt())
    assert set(spy.qkv_calls) == set(range(6)) and spy.q_widths == []


def test_q_only_alone_and_fallbacks(plugin_table, monkeypatch):
    """Only Q-only on (the norm+RoPE behaviour switched off), then a projection the
    fast path must not take (a quant method other than UnquantizedLinearMethod):
    parity either way, the GEMM path as expected."""
    from sglang.srt.layers.quantization.unquant import UnquantizedLinearMethod

    monkeypatch.setattr(attention, "enabled", lambda: frozenset({attention.Q_ONLY}))
    ids = harness.prompt()
    pair = harness.build_pair(CONFIG)
    spy = _Spy(pair.sglang, monkeypatch)
    assert harness.compare(pair, ids).max_abs_diff <= PARITY_TOL
    assert set(spy.qkv_calls) == {0, 1, 2} and len(spy.q_widths) == 3

    class OtherMethod(UnquantizedLinearMethod):
        """Stands for a quantized method: same math, not the exact type."""

    pair = harness.build_pair(CONFIG)
    for attn in _shared_attentions(pair.sglang):
        attn.qkv_proj.quant_method = OtherMethod()
    spy = _Spy(pair.sglang, monkeypatch)
    assert harness.compare(pair, ids).max_abs_diff <= PARITY_TOL
    assert set(spy.qkv_calls) == set(range(6)) and spy.q_widths == []
