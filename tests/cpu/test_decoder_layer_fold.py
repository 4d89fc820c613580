"""Patches ``post_attn_norm_add`` and ``end_of_layer_norm`` (and their shared hooks
with ``triple_rmsnorm``) in SGLang's Gemma-4 on CPU: declarations, layer links,
parity with and without them and with transformers (fp32), which path ran, and
the guards that keep a pre-normalized input from reaching the wrong layer.

Under Triton's interpreter (``interpret`` tests) the kernels run on CPU tensors;
without it every layer takes SGLang's launches.
"""

from __future__ import annotations

import contextlib
import types
from collections import Counter
from collections.abc import Iterator

import pytest
import torch

from sglang_gemma4 import harness, registry
from sglang_gemma4.kernels.support import triton_interpreting
from sglang_gemma4.srt.models.gemma4_causal import end_of_layer_norm as eol
from sglang_gemma4.srt.models.gemma4_causal import triple_rmsnorm as post_attn
from tests.cpu.harness import PARITY_TOL

NORM_ADD, EOL, TRIPLE = "post_attn_norm_add", "end_of_layer_norm", "triple_rmsnorm"
OURS = (NORM_ADD, EOL, TRIPLE)


def n_layers(name: str) -> int:
    return harness.TINY_CONFIGS[name]["num_hidden_layers"]


@contextlib.contextmanager
def paths(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter]:
    """Counts the pair kernel, the folds left and taken, and SGLang's input norms."""
    calls: Counter = Counter()

    def counting(module, name, key):
        fn = getattr(module, name)

        def counted(*args, **kwargs):
            result = fn(*args, **kwargs)
            calls[key] += result is not None if key == "take" else 1
            return result

        monkeypatch.setattr(module, name, counted)

    counting(post_attn, "post_attn_norm_add", "pair")
    counting(eol, "leave", "leave")
    counting(eol, "take", "take")
    yield calls


def _hidden(name: str, *suspend: str, model=None) -> torch.Tensor:
    ids = harness.prompt()
    with registry.suspended(*suspend) if suspend else contextlib.nullcontext():
        model = model or harness.build_pair(name).sglang
        return harness.sglang_hidden(model, ids)


def test_applied(plugin_table):
    for name in OURS:
        assert plugin_table[name].state == "applied", plugin_table[name]


@pytest.mark.parametrize(
    "name,ffn_read",
    [("dense", post_attn.PostAttentionNormAddRead), ("ple", post_attn.PostAttentionNormAddRead),
     ("moe", post_attn.PostAttentionTripleNormRead), ("moe_ple", None)],
)
def test_declarations(plugin_table, name, ffn_read):
    layers = harness.build_pair(name).sglang.model.layers
    for layer in layers:
        read = layer.ffn_boundary.declaration.read
        assert (type(read) is ffn_read) if ffn_read else not isinstance(read, post_attn.PostAttentionFusedRead)
        assert isinstance(layer.attn_boundary.declaration.read, eol.PrefoldedInputRead)
    with registry.suspended(*OURS):
        stock = harness.build_pair(name).sglang.model.layers
    for layer in stock:
        assert not isinstance(layer.ffn_boundary.declaration.read, post_attn.PostAttentionFusedRead)
        assert not isinstance(layer.attn_boundary.declaration.read, eol.PrefoldedInputRead)


def test_layers_link_to_the_next_on_their_rank_and_not_as_submodules(plugin_table):
    model = harness.build_pair("dense").sglang
    layers = model.model.layers
    links = [layer.__dict__.get(eol.NEXT_LAYER_ATTR) for layer in layers]
    assert [ref() for ref in links[:-1]] == list(layers[1:]) and links[-1] is None
    with registry.suspended(*OURS):
        stock = harness.build_pair("dense").sglang
    assert list(model.state_dict()) == list(stock.state_dict()), "a link must not register a submodule"


def test_link_stops_at_the_pipeline_rank_end():
    class Layer:
        pass

    layers = [Layer() for _ in range(6)]
    model = types.SimpleNamespace(layers=layers, start_layer=2, end_layer=5)
    eol.link_layers(None, model)
    linked = {i: layer.__dict__[eol.NEXT_LAYER_ATTR]() for i, layer in enumerate(layers) if layer.__dict__}
    assert linked == {2: layers[3], 3: layers[4]}


@pytest.mark.interpret
@pytest.mark.parametrize("name", ["dense", "ple", "kv_shared", "moe"])
def test_fused_parity(plugin_table, monkeypatch, name):
    """Every layer but the last folds the next one's input norm, every next layer takes
    it; dense/PLE layers run the pair kernel; = SGLang without the three = transformers."""
    pair = harness.build_pair(name)
    layers = pair.sglang.model.layers
    norm_runs = [0] * len(layers)
    for i, layer in enumerate(layers):
        layer.input_layernorm.register_forward_pre_hook(lambda *_, i=i: norm_runs.__setitem__(i, norm_runs[i] + 1))
    with paths(monkeypatch) as calls:
        ours = _hidden(name, model=pair.sglang)
    n = n_layers(name)
    assert calls["leave"] == calls["take"] == n - 1, calls
    assert norm_runs == [1] + [0] * (n - 1), "only the first layer runs its own input norm"
    assert calls["pair"] == (0 if name == "moe" else n), calls
    stock = _hidden(name, *OURS)
    reference = harness.hf_hidden(pair.hf, harness.prompt())
    assert (ours - stock).abs().max().item() <= PARITY_TOL
    assert (ours - reference).abs().max().item() <= PARITY_TOL


@pytest.mark.interpret
def test_fold_off_keeps_the_pair_read(plugin_table, monkeypatch):
    with paths(monkeypatch) as calls, registry.suspended(EOL):
        ours = _hidden("dense")
    assert calls["leave"] == calls["take"] == 0 and calls["pair"] == n_layers("dense"), calls
    assert (ours - _hidden("dense", *OURS)).abs().max().item() <= PARITY_TOL


@pytest.mark.interpret
def test_ple_layers_fold_only_with_ple_tail(plugin_table, monkeypatch):
    with paths(monkeypatch) as calls, registry.suspended("ple_tail"):
        _hidden("ple")
    assert calls["leave"] == calls["take"] == 0, calls


def test_cpu_tensors_take_sglang_path_without_interpreter(plugin_table, monkeypatch):
    if triton_interpreting():
        pytest.skip("the interpreter runs the kernels on CPU tensors")
    for name in ("dense", "moe"):
        with paths(monkeypatch) as calls:
            ours = _hidden(name)
        assert calls["leave"] == calls["take"] == calls["pair"] == 0, calls
        assert (ours - _hidden(name, *OURS)).abs().max().item() <= PARITY_TOL


def test_no_fold_while_torch_compile_traces(plugin_table, monkeypatch):
    model = harness.build_pair("dense").sglang  # kept alive: the links are weak
    layer = model.model.layers[0]
    assert eol.next_layer(layer) is model.model.layers[1]
    stream = torch.randn(2, 8)
    eol.leave(model.model.layers[1], stream, stream)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert eol.next_layer(layer) is None
    assert eol.take(model.model.layers[1], stream) is None


def test_a_prefolded_input_reaches_only_its_own_stream(plugin_table):
    layers = harness.build_pair("dense").sglang.model.layers
    stream, normed = torch.randn(3, 8), torch.randn(3, 8)
    eol.leave(layers[1], stream, normed)
    assert eol.take(layers[1], stream.clone()) is None, "another tensor, same values"
    assert eol.take(layers[1], stream) is None, "taken (and dropped) once"
    eol.leave(layers[1], stream, normed)
    assert eol.take(layers[2], stream) is None
    got = eol.take(layers[1], stream)
    assert got.normed is normed and got.norm is layers[1].input_layernorm


def test_prefolded_read_falls_back_to_sglang_read(plugin_table):
    layer = harness.build_pair("dense").sglang.model.layers[1]
    read, norm = layer.attn_boundary.declaration.read, layer.input_layernorm
    stream = torch.randn(3, layer.hidden_size)
    marker = torch.full_like(stream, 7.0)
    bound = read.bind(None, eol.PrefoldedInput(stream, norm, marker))
    assert bound.read(stream, norm)[0] is marker
    want = norm(stream)
    for args, kwargs in [
        ((stream.clone(), norm), {}),  # not the stream the previous layer wrote
        ((stream, layer.post_attention_layernorm), {}),  # another norm
        ((stream, norm), {"post_residual_addition": torch.zeros_like(stream)}),
    ]:
        got, _ = bound.read(*args, **kwargs)
        assert got is not marker
    assert torch.equal(read.bind(None, None).read(stream, norm)[0], want)
    for fact in ("is_plain_norm", "reads_before_dp_gather", "reads_after_attn_tp_gather", "fp8_input"):
        assert getattr(bound, fact) == getattr(read.inner, fact)



def _cast_before_weight(layer):
    layer.pre_feedforward_layernorm.cast_x_before_out_mul = True


def _other_eps(layer):
    layer.post_attention_layernorm.variance_epsilon = 1e-5


@pytest.mark.interpret
@pytest.mark.parametrize("modify", [_cast_before_weight, _other_eps], ids=["cast_before_weight", "unequal_eps"])
def test_pair_read_falls_back_for_norms_that_round_differently(plugin_table, monkeypatch, modify):
    model = harness.build_pair("dense").sglang
    for layer in model.model.layers:
        modify(layer)
    with paths(monkeypatch) as calls:
        ours = _hidden("dense", model=model)
    assert calls["pair"] == 0, calls
    with registry.suspended(*OURS):
        stock = harness.build_pair("dense").sglang
        for layer in stock.model.layers:
            modify(layer)
        want = _hidden("dense", model=stock)
    assert (ours - want).abs().max().item() <= PARITY_TOL
