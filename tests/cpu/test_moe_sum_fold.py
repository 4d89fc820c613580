"""Patch moe_sum_fold on CPU: its switch, which experts may hand over unsummed
rows, SGLang's own deferred path against its summed one, and the tiny MoE
model with the fold (fp32) = without it = transformers.

SGLang's Triton MoE path runs on CUDA only. Under Triton's interpreter these
tests run its real ``fused_experts_impl`` on CPU tensors (fp16: the interpreter
mis-computes bf16 dots), with two CPU stand-ins for what it looks up on a GPU:
the expert alignment (SGLang's own single-launch Triton align kernel) and the
device name of its tuned-config files. The model test stands in for the
deferred experts with the contract in torch (:func:`contract_rows`), in fp32,
because SGLang's kernel computes fp32 inputs in fp16.
"""

from __future__ import annotations

import contextlib
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from sglang_gemma4 import harness, registry
from sglang_gemma4.kernels import end_of_layer_norm as keol
from sglang_gemma4.srt.models.gemma4_causal import end_of_layer_norm as eol
from sglang_gemma4.srt.models.gemma4_causal import moe_sum_fold
from tests.cpu.harness import PARITY_TOL, run_python

PATCH = moe_sum_fold.PATCH_NAME
MOE_LAYERS = harness.TINY_CONFIGS["moe"]["num_hidden_layers"]


def test_off_until_its_switch_is_set(plugin_table):
    assert plugin_table[PATCH].state == "off"
    assert plugin_table[PATCH].reason == f"opt-in: set {moe_sum_fold.OPT_IN_ENV}=1"


@pytest.mark.parametrize(
    "env,state",
    [({moe_sum_fold.OPT_IN_ENV: "1"}, "applied"), ({moe_sum_fold.OPT_IN_ENV: "1", "SGLANG_GEMMA4_DISABLE": PATCH}, "disabled")],
    ids=["switched_on", "switched_on_and_disabled"],
)
def test_state_at_start_up(env, state):
    proc = run_python(
        """
        from sglang_gemma4 import harness, plugin
        harness.init_sglang()
        print("STATE", {s.name: s.state for s in plugin.register()}["moe_sum_fold"])
        """,
        env={"SGLANG_GEMMA4_DISABLE": "<unset>", "SGLANG_PLUGINS": "<unset>", "MASTER_PORT": "<unset>", **env},
    )
    assert f"STATE {state}" in proc.stdout, proc.stderr[-2000:]


def test_check_accepts_sglang_0_5_23(plugin_table):
    assert moe_sum_fold.check() is None


@contextlib.contextmanager
def fold_on(monkeypatch: pytest.MonkeyPatch):
    """The patch applied for the test (its hooks are the decoder layer's, already in place)."""
    monkeypatch.setitem(registry._status, PATCH, registry.PatchStatus(PATCH, "applied"))
    yield


def _moe_layers():
    return harness.build_pair("moe").sglang.model.layers


def test_tiny_moe_experts_may_defer(plugin_table):
    assert {moe_sum_fold.deferral_problem(layer.moe.experts) for layer in _moe_layers()} == {None}


@pytest.mark.parametrize(
    "change,reason",
    [
        (lambda e, c: setattr(c, "routed_scaling_factor", 2.5), "routed scaling"),
        (lambda e, c: setattr(c, "activation", "silu"), "activation 'silu'"),
        (lambda e, c: setattr(c, "num_local_experts", c.num_experts - 1), "filters experts"),
        (lambda e, c: setattr(c, "swiglu_limit", 7.0), "does not reproduce"),
        (lambda e, c: setattr(e, "moe_ep_size", 2), "TP or EP > 1"),
        (lambda e, c: setattr(e, "_dwdp_bound", True), "DWDP"),
        (lambda e, c: setattr(e.quant_method.runner, "lora_enabled", True), "LoRA"),
    ],
    ids=["routed_scale", "activation", "filtered", "swiglu_limit", "ep", "dwdp", "lora"],
)
def test_experts_that_must_sum_themselves(plugin_table, change, reason):
    experts = _moe_layers()[0].moe.experts
    change(experts, experts.quant_method.runner.config)
    assert reason in (moe_sum_fold.deferral_problem(experts) or "")


def test_one_warning_per_reason_the_experts_cannot_defer(plugin_table, monkeypatch, caplog):
    monkeypatch.setattr(moe_sum_fold, "_warned", set())
    layers = _moe_layers()
    for layer in layers:
        layer.moe.experts.moe_ep_size = 2
    with caplog.at_level("WARNING", logger="sglang_gemma4"):
        assert not any(moe_sum_fold._experts_defer(layer.moe.experts) for layer in layers)
        assert not moe_sum_fold._experts_defer(layers[0].moe.experts)
    warnings = [r.getMessage() for r in caplog.records if "moe_sum_fold" in r.getMessage()]
    assert warnings == ["patch moe_sum_fold: MoE layers keep SGLang's top-k sum: TP or EP > 1: the expert sum must come before the all-reduce"]
    assert moe_sum_fold._experts_defer(_moe_layers()[0].moe.experts)


def test_no_deferral_on_cpu_tensors(plugin_table):
    experts = _moe_layers()[0].moe.experts
    x = torch.randn(4, experts.hidden_size, dtype=torch.bfloat16)
    assert not moe_sum_fold._may_defer(experts, x)  # SGLang's Triton MoE runs on CUDA only


def contract_rows(experts, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
    """``fused_experts_impl(defer_sum=True)``'s documented result in torch: each
    token's top-k expert outputs times their routing weights, ``[T, top_k, H]`` in
    ``x``'s dtype, rounded where SGLang's kernels store (gate/up, activation, GEMM2)."""
    w13, w2 = experts.w13_weight, experts.w2_weight
    inter = w2.shape[2]
    approximate = "tanh" if experts.quant_method.runner.config.activation == "gelu_tanh" else "none"
    rows = []
    for k in range(topk_ids.shape[1]):
        e = topk_ids[:, k].long()
        gate_up = torch.einsum("th,tnh->tn", x.float(), w13[e].float()).to(x.dtype).float()
        act = (F.gelu(gate_up[:, :inter], approximate=approximate) * gate_up[:, inter:]).to(x.dtype)
        down = torch.einsum("ti,thi->th", act.float(), w2[e].float()) * topk_weights[:, k : k + 1].float()
        rows.append(down.to(x.dtype))
    return torch.stack(rows, dim=1)


@contextlib.contextmanager
def sglang_triton_moe_on_cpu(monkeypatch: pytest.MonkeyPatch):
    """SGLang's Triton MoE path on CPU tensors (see the module docstring)."""
    import triton
    from sglang.kernels.ops.moe.moe_align_small_numel import moe_align_small_numel
    from sglang.srt.layers.moe.moe_runner.triton_utils import fused_moe, fused_moe_triton_config

    def align(topk_ids, block_size, num_experts, *args, **kwargs):
        # Buffers as SGLang's moe_align_block_size sizes them; its "+1 bucket" convention.
        numel = topk_ids.numel()
        padded = numel * block_size if numel < num_experts + 1 else numel + (num_experts + 1) * (block_size - 1)
        padded = (padded + 3) // 4 * 4
        sorted_ids = torch.empty(padded, dtype=torch.int32)
        expert_ids = torch.empty(triton.cdiv(padded, block_size), dtype=torch.int32)
        total = torch.empty(1, dtype=torch.int32)
        moe_align_small_numel(topk_ids, num_experts + 1, block_size, sorted_ids, expert_ids, total)
        return sorted_ids, expert_ids, total

    monkeypatch.setattr(fused_moe, "moe_align_block_size", align)
    monkeypatch.setattr(fused_moe_triton_config, "get_device_name", lambda: "NVIDIA H200")
    yield fused_moe


def _routing(tokens: int, experts: int, top_k: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(tokens, experts, generator=gen)
    weights, ids = torch.topk(torch.softmax(logits, dim=-1), top_k)
    return weights.float(), ids.to(torch.int32)


@pytest.mark.interpret
@pytest.mark.parametrize("tokens", [1, 5])
def test_sglang_deferred_rows_sum_to_its_own_output(plugin_table, monkeypatch, tokens):
    """SGLang's real Triton path: with ``defer_sum`` it returns the contract's rows,
    and those rows summed as the fold sums them are, bit for bit, what its own
    combine returns without ``defer_sum``."""
    experts = _moe_layers()[0].moe.experts
    x = (0.5 * torch.randn(tokens, experts.hidden_size, generator=torch.Generator().manual_seed(tokens))).half()
    w13, w2 = experts.w13_weight.data, experts.w2_weight.data
    monkeypatch.setattr(experts.w13_weight, "data", w13.half())
    monkeypatch.setattr(experts.w2_weight, "data", w2.half())
    weights, ids = _routing(tokens, w13.shape[0], 2, seed=tokens)
    with sglang_triton_moe_on_cpu(monkeypatch) as fused_moe:
        rows = moe_sum_fold.run_deferred_experts(experts, x, weights, ids)
        cfg = experts.quant_method.runner.config
        summed = fused_moe.fused_experts_impl(
            x, experts.w13_weight, experts.w2_weight, weights, ids, inplace=False,
            activation=cfg.activation, is_gated=cfg.is_gated, filter_expert=False,
        )
    assert rows.shape == (tokens, 2, experts.hidden_size) and rows.dtype == torch.float16
    torch.testing.assert_close(rows, contract_rows(experts, x, weights, ids), rtol=2e-3, atol=2e-3)
    assert torch.equal(keol.moe_expert_sum_reference(rows), summed)
    assert torch.equal(moe_sum_fold.sum_expert_rows(rows), summed)


@contextlib.contextmanager
def counted_fold(monkeypatch: pytest.MonkeyPatch):
    """The fold on, the deferred experts by the contract in torch, CPU tensors
    allowed; counts the deferred calls and the two end-of-layer kernels."""
    calls: Counter = Counter()

    def deferred(experts, x, weights, ids):
        calls["deferred"] += 1
        return contract_rows(experts, x, weights, ids)

    def counting(name):
        fn = getattr(eol, name)

        def counted(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        monkeypatch.setattr(eol, name, counted)

    monkeypatch.setattr(moe_sum_fold, "on_triton_moe_device", lambda t: True)
    monkeypatch.setattr(moe_sum_fold, "run_deferred_experts", deferred)
    counting("moe_expert_sum_end_of_layer_norm")
    counting("moe_end_of_layer_norm")
    with fold_on(monkeypatch):
        yield calls


@pytest.mark.interpret
def test_fold_parity(plugin_table, monkeypatch):
    """Every MoE layer but the last (no next layer on the rank) hands its rows to
    the end-of-layer kernel; the model = the plugin without the fold = transformers."""
    ids = harness.prompt()
    pair = harness.build_pair("moe")
    with counted_fold(monkeypatch) as calls:
        ours = harness.sglang_hidden(pair.sglang, ids)
    assert calls == {"deferred": MOE_LAYERS - 1, "moe_expert_sum_end_of_layer_norm": MOE_LAYERS - 1}
    unfolded = harness.sglang_hidden(harness.build_pair("moe").sglang, ids)
    reference = harness.hf_hidden(pair.hf, ids)
    assert (ours - unfolded).abs().max().item() <= PARITY_TOL
    assert (ours - reference).abs().max().item() <= PARITY_TOL


@pytest.mark.interpret
def test_batches_over_the_limit_sum_in_sglang(plugin_table, monkeypatch):
    monkeypatch.setattr(moe_sum_fold, "MAX_TOKENS", harness.prompt().numel() - 1)
    pair = harness.build_pair("moe")
    with counted_fold(monkeypatch) as calls:
        harness.sglang_hidden(pair.sglang, harness.prompt())
    assert calls == {"moe_end_of_layer_norm": MOE_LAYERS - 1}


@pytest.mark.interpret
def test_rows_the_fold_cannot_take_are_summed_by_sglang(plugin_table, monkeypatch):
    """Deferred rows the kernel turns away (here: every input) are summed by
    SGLang's own combine, and the layer ends as SGLang ends it."""
    ids = harness.prompt()
    pair = harness.build_pair("moe")
    summed = Counter()

    def counting_sum(rows):
        summed["rows"] += 1
        return keol.moe_expert_sum_reference(rows)  # SGLang's combine needs CUDA or its Triton sum

    monkeypatch.setattr(moe_sum_fold, "sum_expert_rows", counting_sum)
    monkeypatch.setattr(eol, "supports_moe_expert_sum", lambda *a: False)
    with counted_fold(monkeypatch) as calls:
        ours = harness.sglang_hidden(pair.sglang, ids)
    assert calls == {"deferred": MOE_LAYERS - 1} and summed["rows"] == MOE_LAYERS - 1
    assert (ours - harness.hf_hidden(pair.hf, ids)).abs().max().item() <= PARITY_TOL


@pytest.mark.interpret
def test_fold_with_sglang_triton_experts_in_the_model(plugin_table, monkeypatch):
    """fp16 tiny MoE model whose folded layers run SGLang's real deferred Triton
    path (on CPU, see the module docstring): as close to transformers' fp32 model
    as the plugin without the fold (SGLang's native fp16 experts), and close to it."""
    ids = harness.prompt()
    reference = harness.hf_hidden(harness.build_pair("moe").hf, ids)
    unfolded = harness.sglang_hidden(harness.build_pair("moe", dtype=torch.float16).sglang, ids).float()
    calls: Counter = Counter()
    deferred = moe_sum_fold.run_deferred_experts

    def counted(*args):
        calls["deferred"] += 1
        return deferred(*args)

    monkeypatch.setattr(moe_sum_fold, "on_triton_moe_device", lambda t: True)
    monkeypatch.setattr(moe_sum_fold, "run_deferred_experts", counted)
    with fold_on(monkeypatch), sglang_triton_moe_on_cpu(monkeypatch):
        folded = harness.sglang_hidden(harness.build_pair("moe", dtype=torch.float16).sglang, ids).float()
    assert calls["deferred"] == MOE_LAYERS - 1
    err_unfolded = (unfolded - reference).abs().max().item()
    err_folded = (folded - reference).abs().max().item()
    print(f"fp16 vs fp32 transformers: unfolded {err_unfolded:.3g}, folded {err_folded:.3g}, "
          f"folded vs unfolded {(folded - unfolded).abs().max().item():.3g}")
    assert err_folded <= 1.5 * err_unfolded
    assert (folded - unfolded).abs().max().item() <= 2 * err_unfolded
