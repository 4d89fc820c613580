"""Patch ple_tail in SGLang's Gemma-4 on CPU: patched = unpatched = transformers (fp32), and who falls back.

Under ``TRITON_INTERPRET=1`` the fused kernels run on CPU tensors; without it the
hook must hand every layer to SGLang's own ``_next_stream``.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

import pytest
import torch

from sglang_gemma4 import harness, registry
from sglang_gemma4.kernels.support import PATCH_CUDA_DTYPES, patch_fused_dtypes, triton_interpreting
from sglang_gemma4.srt.models.gemma4_causal import ple_tail as patch
from tests.cpu.harness import PARITY_TOL

KERNELS = ("rmsnorm_add", "gelu_tanh_mul", "rmsnorm_add_scale")


@contextlib.contextmanager
def counting_kernel_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter]:
    """Count calls of the fused kernels made through the patch."""
    calls: Counter = Counter()
    for name in KERNELS:
        kernel = getattr(patch, name)

        def counted(*args, _name=name, _kernel=kernel, **kwargs):
            calls[_name] += 1
            return _kernel(*args, **kwargs)

        monkeypatch.setattr(patch, name, counted)
    yield calls


def run_both_ways(name: str, monkeypatch: pytest.MonkeyPatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Counter]:
    """(patched, unpatched, transformers) final hidden states of one model, and the kernel calls.
    ``end_of_layer_norm`` is off on both sides: it replaces the last of the three kernels."""
    pair = harness.build_pair(name)
    ids = harness.prompt()
    with counting_kernel_calls(monkeypatch) as calls, registry.suspended("end_of_layer_norm"):
        patched = harness.sglang_hidden(pair.sglang, ids).float()
    with registry.suspended("ple_tail", "end_of_layer_norm"):
        unpatched = harness.sglang_hidden(pair.sglang, ids).float()
    reference = harness.hf_hidden(pair.hf, ids).float()
    return patched, unpatched, reference, calls


def num_ple_layers(name: str) -> int:
    cfg = harness.TINY_CONFIGS[name]
    return cfg["num_hidden_layers"] if cfg["hidden_size_per_layer_input"] > 0 else 0


def test_applied(plugin_table) -> None:
    assert plugin_table["ple_tail"].state == "applied", plugin_table["ple_tail"]


@pytest.mark.interpret
@pytest.mark.parametrize("name", ["ple", "kv_shared"])
def test_fused_tail_parity(plugin_table, monkeypatch, name: str) -> None:
    """Every PLE layer (KV-shared ones too) runs the three kernels, and nothing moves."""
    patched, unpatched, reference, calls = run_both_ways(name, monkeypatch)
    assert calls == Counter({k: num_ple_layers(name) for k in KERNELS}), calls
    assert (patched - unpatched).abs().max().item() <= PARITY_TOL
    assert (patched - reference).abs().max().item() <= PARITY_TOL


@pytest.mark.interpret
def test_moe_with_ple_falls_back(plugin_table, monkeypatch) -> None:
    """A MoE layer keeps SGLang's own tail (MoE + PLE included); parity still holds."""
    patched, unpatched, reference, calls = run_both_ways("moe_ple", monkeypatch)
    assert sum(calls.values()) == 0, calls
    assert (patched - unpatched).abs().max().item() <= PARITY_TOL
    assert (patched - reference).abs().max().item() <= PARITY_TOL


def test_cpu_tensors_fall_back_without_interpreter(plugin_table, monkeypatch) -> None:
    if triton_interpreting():
        pytest.skip("with the interpreter on, CPU tensors take the fused path")
    patched, unpatched, reference, calls = run_both_ways("ple", monkeypatch)
    assert sum(calls.values()) == 0, calls
    assert torch.equal(patched, unpatched)
    assert (patched - reference).abs().max().item() <= PARITY_TOL


def _layer_and_inputs(name: str, layer_idx: int = 0, dtype: torch.dtype = torch.float32):
    pair = harness.build_pair(name, dtype=dtype)
    layer = pair.sglang.model.layers[layer_idx]
    hidden = harness.TINY_CONFIGS[name]["hidden_size"]
    per_layer_dim = harness.TINY_CONFIGS[name]["hidden_size_per_layer_input"] or 16
    residual = torch.randn(5, hidden, dtype=dtype)
    per_layer_input = torch.randn(5, 3, per_layer_dim, dtype=dtype)[:, 1, :]
    return layer, residual, per_layer_input


def test_fused_dtypes_follow_the_shared_rule() -> None:
    """bf16/fp16 (CUDA); fp32 only under the interpreter, for the fp32 tiny models here."""
    expected = {torch.bfloat16, torch.float16} | ({torch.float32} if triton_interpreting() else set())
    assert set(patch_fused_dtypes()) == expected


@pytest.mark.interpret
def test_eligibility(plugin_table, monkeypatch) -> None:
    """Which layers and inputs the hook takes, with the interpreter making CPU tensors eligible."""
    layer, residual, ple = _layer_and_inputs("ple")
    assert patch.takes_fused_tail(layer, residual, ple)
    assert not patch.takes_fused_tail(layer, residual, None)  # no per_layer_input
    assert not patch.takes_fused_tail(layer, residual[:0], ple[:0])  # empty batch
    assert not patch.takes_fused_tail(layer, residual.double(), ple.double())  # unsupported dtype
    assert not patch.takes_fused_tail(layer, residual.reshape(5, 2, -1), ple)  # not 2-D

    layer.layer_scalar = layer.layer_scalar.double()  # eager would promote the output
    assert not patch.takes_fused_tail(layer, residual, ple)

    dense_layer, residual, ple = _layer_and_inputs("dense")
    assert not patch.takes_fused_tail(dense_layer, residual, ple)  # no PLE
    moe_layer, residual, ple = _layer_and_inputs("moe_ple")
    assert not patch.takes_fused_tail(moe_layer, residual, ple)  # MoE block

    layer, residual, ple = _layer_and_inputs("ple")
    layer.post_per_layer_input_norm.scale_shift = 1.0  # a (1 + w) norm rounds differently
    assert not patch.takes_fused_tail(layer, residual, ple)

    layer, residual, ple = _layer_and_inputs("ple")
    monkeypatch.setattr(patch, "patch_fused_dtypes", lambda: PATCH_CUDA_DTYPES)  # the rule outside the interpreter
    assert not patch.takes_fused_tail(layer, residual, ple)  # fp32
    layer16, residual16, ple16 = _layer_and_inputs("ple", dtype=torch.bfloat16)
    assert patch.takes_fused_tail(layer16, residual16, ple16)


@pytest.mark.interpret
def test_bf16_model_takes_fused_path(plugin_table) -> None:
    """Cast to bf16, the layer_scalar buffer follows the activations' dtype, so the tail stays fused."""
    layer, residual, ple = _layer_and_inputs("ple", dtype=torch.bfloat16)
    assert layer.layer_scalar.dtype == torch.bfloat16
    assert patch.takes_fused_tail(layer, residual, ple)


@pytest.mark.interpret
@pytest.mark.parametrize("name", ["ple", "kv_shared"])
def test_bf16_model_tracks_stock(plugin_table, name: str) -> None:
    """In bf16 the kernels round where the eager ops do: the patched model differs from
    stock SGLang only by rare one-ulp flips, which later layers carry along (measured:
    ``ple`` bit-identical, ``kv_shared`` 5% of outputs, at most 2 ulps)."""
    pair = harness.build_pair(name, dtype=torch.bfloat16)
    ids = harness.prompt()
    patched = harness.sglang_hidden(pair.sglang, ids).float()
    with registry.suspended("ple_tail"):
        unpatched = harness.sglang_hidden(pair.sglang, ids).float()
    ulp_at_max = 2.0**-7 * unpatched.abs().max().item()
    assert (patched - unpatched).abs().max().item() <= 4 * ulp_at_max
    assert (patched != unpatched).float().mean().item() <= 0.1
