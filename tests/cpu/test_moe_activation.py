"""Patch moe_gelu_tanh: Gemma-4's MoE experts use tanh-GELU, as transformers' do (DESIGN.md section 5).

The eager CPU path of stock SGLang already computes tanh-GELU (``GeluAndMul()``
defaults to it), so model parity on CPU cannot see the defect; these tests look
at the configured activation and at the expert math of each native path.
"""

import logging
import types

import pytest
import torch

from sglang_gemma4 import harness, registry
from sglang_gemma4.srt.models.gemma4_causal import moe_activation

PATCH = "moe_gelu_tanh"
# fp32 expert outputs of magnitude ~10: the same function agrees to ~3e-6; erf- and
# tanh-GELU experts differ by ~1e-3.
SAME_FUNCTION_TOL = 2e-5
ERF_GAP_MIN = 2e-4


@pytest.fixture(scope="module")
def pairs(plugin_table):
    with registry.suspended(PATCH):
        stock = harness.build_pair("moe")
    return stock, harness.build_pair("moe")


def moe_layers(pair):
    return [layer for layer in pair.sglang.model.layers if layer.moe is not None]


def routed_tokens(tokens=32, hidden=64, experts=8, top_k=2):
    """Inputs wide enough to reach |x| ~ 3, where the GELUs differ most; random routing."""
    gen = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(tokens, hidden, generator=gen)
    ids = torch.stack([torch.randperm(experts, generator=gen)[:top_k] for _ in range(tokens)]).to(torch.int32)
    weights = torch.softmax(torch.randn(tokens, top_k, generator=gen), dim=-1)
    return x, ids, weights


def reference_experts(pair, layer_idx, x, ids, weights):
    return pair.hf.model.layers[layer_idx].experts(x, ids.long(), weights)


def test_applied(plugin_table):
    assert plugin_table[PATCH].state == "applied"


def test_stock_configures_erf_gelu_and_plugin_tanh(pairs):
    stock, patched = pairs
    assert {layer.moe.experts.moe_runner_config.activation for layer in moe_layers(stock)} == {"gelu"}
    assert {layer.moe.experts.moe_runner_config.activation for layer in moe_layers(patched)} == {"gelu_tanh"}
    experts = moe_layers(patched)[0].moe.experts
    # The runner and the quant method read the object the patch switched.
    assert experts.runner.config is experts.moe_runner_config
    assert experts.quant_method.moe_runner_config is experts.moe_runner_config


def test_compile_path_is_erf_on_stock_and_tanh_with_plugin(pairs):
    """SGLang's torch.compile MoE forward maps the name like the CUDA triton runner."""
    from sglang.srt.layers.moe import fused_moe_native

    stock, patched = pairs
    x, ids, weights = routed_tokens()
    dispatch = types.SimpleNamespace(hidden_states=x, topk_output=(weights, ids, None))
    for idx, (s, p) in enumerate(zip(moe_layers(stock), moe_layers(patched))):
        ref = reference_experts(patched, idx, x, ids, weights)
        stock_out = fused_moe_native.fused_moe_forward_native(s.moe.experts, dispatch)
        plugin_out = fused_moe_native.fused_moe_forward_native(p.moe.experts, dispatch)
        assert (stock_out.hidden_states - ref).abs().max() > ERF_GAP_MIN
        torch.testing.assert_close(plugin_out.hidden_states, ref, rtol=0, atol=SAME_FUNCTION_TOL)


def test_eager_native_path_is_tanh_on_both(pairs):
    """Why CPU model parity cannot show the defect; and the plugin's eager path is right."""
    from sglang.srt.layers.moe import fused_moe_native

    stock, patched = pairs
    x, ids, weights = routed_tokens()
    for idx, (s, p) in enumerate(zip(moe_layers(stock), moe_layers(patched))):
        ref = reference_experts(patched, idx, x, ids, weights)
        for layer in (s, p):
            experts = layer.moe.experts
            out = fused_moe_native.moe_forward_native(experts, x, (weights, ids, None), experts.moe_runner_config)
            torch.testing.assert_close(out, ref, rtol=0, atol=SAME_FUNCTION_TOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_and_gathered_experts_agree(dtype):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(7, 16, generator=gen).to(dtype)
    w13 = (0.3 * torch.randn(4, 2 * 8, 16, generator=gen)).to(dtype)
    w2 = (0.3 * torch.randn(4, 16, 8, generator=gen)).to(dtype)
    ids = torch.tensor([[0, 3], [1, 3], [2, 0], [3, 1], [0, 2], [1, 0], [2, 3]], dtype=torch.int32)
    weights = torch.softmax(torch.randn(7, 2, generator=gen), dim=-1)

    expected = torch.zeros(7, 16)
    for t in range(7):
        for k in range(2):
            gate, up = (w13[ids[t, k]].float() @ x[t].float()).chunk(2)
            expected[t] += weights[t, k] * (w2[ids[t, k]].float() @ (torch.nn.functional.gelu(gate, approximate="tanh") * up))
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    for fn in (moe_activation.gelu_tanh_experts_grouped, moe_activation.gelu_tanh_experts_gathered):
        out = fn(x, w13, w2, weights, ids)
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), expected, rtol=0, atol=tol)


def test_plan_per_platform_and_runner(pairs):
    from sglang.srt.layers.moe.utils import MoeRunnerBackend

    real = moe_layers(pairs[1])[0].moe.experts
    fields = ("moe_runner_config", "quant_method", "runner_backend", "with_bias")

    def experts(**changes):
        """What plan_activation reads of a FusedMoE layer, from the real one with ``changes``."""
        return types.SimpleNamespace(**{f: getattr(real, f) for f in fields} | changes)

    plan = moe_activation.plan_activation
    for platform in ("gpu", "native"):
        assert (plan(experts(), platform).activation, plan(experts(), platform).matches_reference) == ("gelu_tanh", True)
    # Ascend's "gelu" is tanh-GELU already; XPU asserts on the name; the AMX kernel is unverified.
    assert (plan(experts(), "npu").activation, plan(experts(), "npu").matches_reference) == ("gelu", True)
    assert (plan(experts(), "xpu").activation, plan(experts(), "xpu").matches_reference) == ("gelu", False)
    assert plan(experts(), "cpu_amx").activation == "gelu"

    flashinfer = plan(experts(runner_backend=MoeRunnerBackend.FLASHINFER_TRTLLM), "gpu")
    assert flashinfer.activation == "gelu" and "flashinfer_trtllm" in flashinfer.reason
    quantized = plan(experts(quant_method=torch.nn.Module()), "gpu")
    assert quantized.activation == "gelu" and "quantized" in quantized.reason
    assert plan(experts(with_bias=True), "gpu").activation == "gelu"


def test_unsupported_path_keeps_gelu_with_one_warning(plugin_table, monkeypatch, caplog):
    monkeypatch.setattr(moe_activation, "current_platform", lambda: "xpu")
    monkeypatch.setattr(moe_activation, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="sglang_gemma4"):
        pair = harness.build_pair("moe")
    assert {layer.moe.experts.moe_runner_config.activation for layer in moe_layers(pair)} == {"gelu"}
    warnings = [r for r in caplog.records if "keep SGLang's activation='gelu'" in r.getMessage()]
    assert len(warnings) == 1 and "XPU" in warnings[0].getMessage()


@pytest.mark.parametrize(
    ("hidden_activation", "activation", "expected"),
    [
        ("gelu_pytorch_tanh", None, "gelu_tanh"),  # Gemma4DecoderLayer's call
        ("gelu", None, "gelu"),  # an erf-GELU reference: SGLang's default is right
        ("gelu_pytorch_tanh", "silu", "silu"),  # the caller chose
    ],
)
def test_only_the_default_of_a_tanh_model_is_switched(plugin_table, hidden_activation, activation, expected):
    from sglang.srt.models.gemma4_causal import Gemma4MoE

    config = harness.sglang_text_config("moe")
    config.hidden_activation = hidden_activation
    kwargs = {} if activation is None else {"activation": activation}
    moe = Gemma4MoE(hidden_size=config.hidden_size, layer_id=0, config=config, **kwargs)
    assert moe.experts.moe_runner_config.activation == expected
