"""Patch triple_rmsnorm in SGLang's Gemma-4 on CPU: which layers take it, parity
with and without it and with transformers (fp32), which path each input takes,
and a 2-process gloo TP=2 run.

Under Triton's interpreter (``interpret`` tests) the fused kernel runs on CPU
tensors; without it every read falls back to SGLang's launches.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket

import pytest
import torch

from sglang_gemma4 import harness, registry
from tests.cpu.harness import PARITY_TOL

PATCH = "triple_rmsnorm"
MOE_LAYERS = harness.TINY_CONFIGS["moe"]["num_hidden_layers"]


@contextlib.contextmanager
def path_counter():
    """Counts fused-kernel launches and SGLang ``_next_stream`` calls (the
    fallback's consumer of the residual) while the body runs."""
    from sglang.srt.models.gemma4_causal import Gemma4DecoderLayer

    from sglang_gemma4.srt.models.gemma4_causal import triple_rmsnorm as patch

    counts = {"fused": 0, "next_stream": 0}
    kernel, next_stream = patch.post_attn_triple_rmsnorm, Gemma4DecoderLayer._next_stream

    def counting_kernel(*args, **kwargs):
        counts["fused"] += 1
        return kernel(*args, **kwargs)

    def counting_next_stream(*args, **kwargs):
        counts["next_stream"] += 1
        return next_stream(*args, **kwargs)

    patch.post_attn_triple_rmsnorm = counting_kernel
    Gemma4DecoderLayer._next_stream = counting_next_stream
    try:
        yield counts
    finally:
        patch.post_attn_triple_rmsnorm = kernel
        Gemma4DecoderLayer._next_stream = next_stream


def _stock_hidden(name: str, ids: torch.Tensor, **build) -> torch.Tensor:
    """SGLang with the plugin's other patches but not this one."""
    with registry.suspended(PATCH):
        return harness.sglang_hidden(harness.build_pair(name, **build).sglang, ids)


def test_applied(plugin_table):
    assert plugin_table[PATCH].state == "applied", plugin_table[PATCH]


@pytest.mark.parametrize("name,fused", [("moe", True), ("moe_ple", False), ("dense", False)])
def test_only_moe_layers_without_ple_declare_the_fused_read(plugin_table, name, fused):
    from sglang_gemma4.srt.models.gemma4_causal.triple_rmsnorm import PostAttentionTripleNormRead

    layers = harness.build_pair(name).sglang.model.layers
    assert {isinstance(layer.ffn_boundary.declaration.read, PostAttentionTripleNormRead) for layer in layers} == {
        fused
    }
    with registry.suspended(PATCH):
        stock_layers = harness.build_pair(name).sglang.model.layers
    assert not any(isinstance(l.ffn_boundary.declaration.read, PostAttentionTripleNormRead) for l in stock_layers)


@pytest.mark.interpret
def test_fused_parity(plugin_table):
    """Fused kernel in every MoE layer: = SGLang without the patch = transformers."""
    ids = harness.prompt()
    pair = harness.build_pair("moe")
    with path_counter() as counts:
        ours = harness.sglang_hidden(pair.sglang, ids)
    assert counts == {"fused": MOE_LAYERS, "next_stream": 0}
    stock = _stock_hidden("moe", ids)
    reference = harness.hf_hidden(pair.hf, ids)
    assert (ours - stock).abs().max().item() <= PARITY_TOL
    assert (ours - reference).abs().max().item() <= PARITY_TOL
    assert (stock - reference).abs().max().item() <= PARITY_TOL


def test_fallback_parity_without_interpreter(plugin_table):
    """CPU tensors without Triton's interpreter: SGLang's launches, same numbers."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the interpreter runs the fused kernel on CPU tensors")
    ids = harness.prompt()
    pair = harness.build_pair("moe")
    with path_counter() as counts:
        ours = harness.sglang_hidden(pair.sglang, ids)
    assert counts == {"fused": 0, "next_stream": MOE_LAYERS}
    assert (ours - _stock_hidden("moe", ids)).abs().max().item() <= PARITY_TOL
    assert (ours - harness.hf_hidden(pair.hf, ids)).abs().max().item() <= PARITY_TOL


def _cast_before_weight(layer):
    layer.pre_feedforward_layernorm_2.cast_x_before_out_mul = True


def _other_eps(layer):
    layer.router.norm.eps = 1e-5


def _router_norm_with_scale(layer):
    layer.router.norm.with_scale = True


@pytest.mark.interpret
@pytest.mark.parametrize(
    "modify",
    [_cast_before_weight, _other_eps, _router_norm_with_scale],
    ids=["cast_before_weight", "unequal_eps", "router_norm_with_scale"],
)
def test_norms_configured_differently_fall_back(plugin_table, modify):
    ids = harness.prompt()
    pair = harness.build_pair("moe")
    for layer in pair.sglang.model.layers:
        modify(layer)
    with path_counter() as counts:
        ours = harness.sglang_hidden(pair.sglang, ids)
    assert counts == {"fused": 0, "next_stream": MOE_LAYERS}
    with registry.suspended(PATCH):
        stock_model = harness.build_pair("moe").sglang
        for layer in stock_model.model.layers:
            modify(layer)
        stock = harness.sglang_hidden(stock_model, ids)
    assert (ours - stock).abs().max().item() <= PARITY_TOL


@pytest.mark.interpret
def test_unsupported_dtype_falls_back(plugin_table):
    ids = harness.prompt()
    pair = harness.build_pair("moe", dtype=torch.float64)
    with path_counter() as counts:
        ours = harness.sglang_hidden(pair.sglang, ids)
    assert counts == {"fused": 0, "next_stream": MOE_LAYERS}
    assert (ours - _stock_hidden("moe", ids, dtype=torch.float64)).abs().max().item() <= 1e-9


@pytest.mark.interpret
def test_batch_invariant_mode_falls_back(plugin_table, monkeypatch):
    import sglang.srt.batch_invariant_ops as batch_invariant_ops

    monkeypatch.setattr(batch_invariant_ops, "is_batch_invariant_mode_enabled", lambda: True)
    with path_counter() as counts:
        harness.sglang_hidden(harness.build_pair("moe").sglang, harness.prompt())
    assert counts == {"fused": 0, "next_stream": MOE_LAYERS}


@pytest.mark.interpret
def test_read_of_an_empty_batch_and_without_call_takes_sglang_path(plugin_table):
    from sglang.srt.layers.layer_boundary.residual.add_norm import PLAIN_ADD

    from sglang_gemma4.srt.models.gemma4_causal.triple_rmsnorm import PostAttentionCall

    layer = harness.build_pair("moe").sglang.model.layers[0]
    read, pre_ff = layer.ffn_boundary.declaration.read, layer.pre_feedforward_layernorm
    hidden = layer.hidden_size
    empty = torch.empty(0, hidden)
    call = PostAttentionCall(layer)
    with path_counter() as counts:
        out, residual = read.bind(None, call).update_and_read(PLAIN_ADD, empty, empty.clone(), pre_ff)
        assert out.shape == residual.shape == (0, hidden) and call.router_in is None
        # Bound without a call (SGLang's own forward running the layer): two launches' worth, same math.
        x, res = torch.randn(3, hidden), torch.randn(3, hidden)
        dense_in, r = read.bind(None, None).update_and_read(PLAIN_ADD, x, res.clone(), pre_ff)
    assert counts["fused"] == 0
    want_dense, want_r = pre_ff(layer.post_attention_layernorm(x), res.clone())
    assert torch.equal(dense_in, want_dense) and torch.equal(r, want_r)


# --- TP=2 over gloo, two processes -------------------------------------------------


def _tp2_worker(rank: int, port: int, results) -> None:
    """One TP rank: SGLang's CPU context at TP=2, the plugin, the tiny MoE model."""
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    import functools

    import sglang.srt.layers.rotary_embedding.base as rope_base
    from sglang.srt.distributed import parallel_state
    from sglang.srt.runtime_context import SpawnRanks, get_parallel, publish, reset_context
    from sglang.srt.server_args import ServerArgs

    from sglang_gemma4 import plugin

    rope_base._is_cpu = True
    parallel_state.init_distributed_environment(world_size=2, rank=rank, local_rank=rank, backend="gloo")
    reset_context()
    publish(ServerArgs(model_path="dummy", tp_size=2, device="cpu"), role="test", ranks=SpawnRanks(world_rank=rank))
    get_parallel().override_permanently(world_group=parallel_state._WORLD)
    # PyNccl and the custom all-reduce need CUDA; gloo's all-reduce runs on CPU.
    parallel_state.init_model_parallel_group = functools.partial(
        parallel_state.init_model_parallel_group, use_pynccl=False
    )
    parallel_state.set_custom_all_reduce(False)
    parallel_state.initialize_model_parallel(backend="gloo")
    # harness.init_sglang sets up TP=1 only; this process is already set up at TP=2.
    harness._initialized = True
    plugin.register()

    from sglang_gemma4.srt.models.gemma4_causal import triple_rmsnorm as patch

    kernel, kernel_inputs = patch.post_attn_triple_rmsnorm, []

    def recording_kernel(attn_out, *args, **kwargs):
        kernel_inputs.append(attn_out.clone())
        return kernel(attn_out, *args, **kwargs)

    patch.post_attn_triple_rmsnorm = recording_kernel
    ids = harness.prompt()
    pair = harness.build_pair("moe")
    diff = (harness.sglang_hidden(pair.sglang, ids) - harness.hf_hidden(pair.hf, ids)).abs().max().item()
    # The kernel must see the all-reduced attention output: the same on both ranks.
    mine = torch.stack(kernel_inputs)
    gathered = [torch.empty_like(mine) for _ in range(2)]
    torch.distributed.all_gather(gathered, mine)
    results.put(
        {
            "rank": rank,
            "tp_size": get_parallel().tp_size,
            "max_abs_diff": diff,
            "fused_calls": len(kernel_inputs),
            "kernel_inputs_equal_across_ranks": torch.equal(gathered[0], gathered[1]),
        }
    )


@pytest.mark.interpret
def test_tp2_gloo_fused_read_after_all_reduce():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    workers = [ctx.Process(target=_tp2_worker, args=(rank, port, results)) for rank in range(2)]
    for w in workers:
        w.start()
    try:
        got = sorted((results.get(timeout=600) for _ in workers), key=lambda r: r["rank"])
    finally:
        for w in workers:
            w.join(timeout=60)
    assert [w.exitcode for w in workers] == [0, 0]
    for r in got:
        assert r["tp_size"] == 2
        assert r["fused_calls"] == MOE_LAYERS, r
        assert r["kernel_inputs_equal_across_ranks"], r
        assert r["max_abs_diff"] <= PARITY_TOL, r
