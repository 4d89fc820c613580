"""fa_frozen_kv_swa: the FA3/FA4 backend of a Gemma-4 frozen-KV MTP draft and the target's
sliding-window pool.

FlashAttentionBackend cannot be imported on this CPU machine (its module loads sgl_kernel's
CUDA ops), so the hook runs on a stand-in backend holding the one attribute it touches; the
pools, allocators and SGLang's own resolution rule (TRTLLMHAAttnBackend._resolve_swa_kv_pool)
are the real ones.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import types
from pathlib import Path

import pytest
import torch

from sglang_gemma4.srt.layers.attention import flashattention_backend as fa_patch
from tests.cpu import swa_fixtures as fx


def sglang_source(module: str) -> str:
    return Path(importlib.util.find_spec(module).origin).read_text()


def method_source(module: str, cls: str, method: str) -> str:
    source = sglang_source(module)
    klass = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == cls)
    fn = next(n for n in klass.body if isinstance(n, ast.FunctionDef) and n.name == method)
    return ast.get_source_segment(source, fn)


FA_MODULE = "sglang.srt.layers.attention.flashattention_backend"


def test_premise_the_assistant_draft_owns_a_plain_pool(plugin_table):
    """The draft runner builds a hybrid sliding-window pool only for hybrid-SWA architectures;
    Gemma-4's assistant is not one, so its own pool is a plain MHA pool."""
    from sglang.srt.configs.model_config import is_hybrid_swa_model

    text = types.SimpleNamespace(layer_types=["sliding_attention", "full_attention"], sliding_window=512)
    assert is_hybrid_swa_model(["Gemma4ForCausalLM"], text)
    assert not is_hybrid_swa_model(["Gemma4AssistantForCausalLM"], text)


def test_premise_fa_backends_are_reachable_for_gemma4(plugin_table):
    """fa4 is an accepted Gemma-4 backend and is the same class as fa3."""
    from sglang.srt.arg_groups import model_hook
    from sglang.srt.layers.attention import attention_registry

    hook = inspect.getsource(model_hook)
    gemma4 = hook[hook.index('"Gemma4UnifiedForConditionalGeneration",\n    ):') :]
    accepted = gemma4[gemma4.index("accepted_backends = (") : gemma4.index(")", gemma4.index("accepted_backends = ("))]
    assert '"fa4"' in accepted
    assert "FlashAttentionBackend(runner, fa_impl_ver=4)" in inspect.getsource(
        attention_registry.create_flashattention_v4_backend
    )
    init = method_source(FA_MODULE, "FlashAttentionBackend", "__init__")
    assert "isinstance(model_runner.token_to_kv_pool, SWAKVPool)" in init


@pytest.fixture(scope="module")
def pools():
    _, target_allocator = fx.swa_pool_and_allocator()
    return types.SimpleNamespace(target_allocator=target_allocator, draft_pool=fx.mha_pool())


def cases(pools):
    """(label, runner) for every kind of runner that builds an attention backend."""
    target_pool = pools.target_allocator.get_kvcache()
    return [
        ("target", fx.runner(algorithm="FROZEN_KV_MTP", is_draft_worker=False, own_pool=target_pool,
                             allocator=pools.target_allocator)),
        ("frozen_kv_draft", fx.runner(algorithm="FROZEN_KV_MTP", is_draft_worker=True, own_pool=pools.draft_pool,
                                      allocator=pools.target_allocator)),
        ("eagle_draft", fx.runner(algorithm="EAGLE", is_draft_worker=True, own_pool=pools.draft_pool,
                                  allocator=pools.target_allocator)),
        ("frozen_kv_draft_plain_target", fx.runner(
            algorithm="FROZEN_KV_MTP", is_draft_worker=True, own_pool=pools.draft_pool,
            allocator=types.SimpleNamespace(get_kvcache=lambda: fx.mha_pool()))),
    ]


def test_only_the_frozen_kv_draft_of_a_swa_target_is_changed(plugin_table, pools):
    from sglang.srt.mem_cache.swa_memory_pool import SWAKVPool

    changed = {}
    for label, runner in cases(pools):
        # What FlashAttentionBackend.__init__ computes from the runner's own pool.
        stock_flag = isinstance(runner.token_to_kv_pool, SWAKVPool) and runner.token_to_kv_pool.swa_layer_nums > 0
        backend = types.SimpleNamespace(use_sliding_window_kv_pool=stock_flag)
        fa_patch.resolve_frozen_kv_swa_pool(None, backend, runner)
        changed[label] = (stock_flag, backend.use_sliding_window_kv_pool)
    assert changed == {
        "target": (True, True),
        "frozen_kv_draft": (False, True),
        "eagle_draft": (False, False),
        "frozen_kv_draft_plain_target": (False, False),
    }


def test_resolution_agrees_with_sglangs_trtllm_rule(plugin_table, pools):
    """The FA flag ends up true exactly where trtllm_mha resolves a sliding-window pool."""
    from sglang.srt.layers.attention.trtllm_mha_backend import TRTLLMHAAttnBackend
    from sglang.srt.mem_cache.swa_memory_pool import SWAKVPool

    for label, runner in cases(pools):
        own = isinstance(runner.token_to_kv_pool, SWAKVPool) and runner.token_to_kv_pool.swa_layer_nums > 0
        patched = own or fa_patch.frozen_kv_draft_reads_swa_pool(runner)
        assert patched == (TRTLLMHAAttnBackend._resolve_swa_kv_pool(runner) is not None), label


def test_sliding_window_layer_reads_stay_in_bounds_only_with_the_flag(plugin_table):
    """What the flag changes for a draft sliding-window layer: FA hands the kernel the full-pool
    page table unless the flag is set, and get_kv_buffer returns the smaller sliding-window buffer."""
    pool, allocator = fx.swa_pool_and_allocator(page_size=1)
    allocator.alloc(20)  # slots 1..20 in both pools, to be freed from the SWA side as the window moves
    allocator.free_swa(torch.arange(1, 21))
    full_slots = allocator.alloc(30)  # full slots 21..50; their SWA peers are 1..30
    k_swa, _ = pool.get_kv_buffer(fx.SWA_LAYERS[0])
    stock = full_slots
    patched = pool.translate_loc_from_full_to_swa(full_slots)
    assert int(stock.max()) >= k_swa.shape[0], "the stock draft indexes past the sliding-window buffer"
    assert int(patched.max()) < k_swa.shape[0] and int(patched.min()) >= 0


def test_check_tracks_upstream(plugin_table):
    init = method_source(FA_MODULE, "FlashAttentionBackend", "__init__")
    assert fa_patch.frozen_kv_gap_reason(init) is None
    fixed = init.replace(
        "isinstance(model_runner.token_to_kv_pool, SWAKVPool)",
        "isinstance(self._resolve_swa_kv_pool(model_runner), SWAKVPool)",
    )
    assert "already resolves" in fa_patch.frozen_kv_gap_reason(fixed)
    assert "no longer sets" in fa_patch.frozen_kv_gap_reason(init.replace("use_sliding_window_kv_pool", "swa"))


def test_patch_status_matches_this_machine(plugin_table):
    import torch

    status = plugin_table["fa_frozen_kv_swa"]
    if torch.cuda.is_available():
        assert status.state == "applied", status
    else:  # the FA backend module needs a CUDA build of sgl_kernel: nothing to patch, no warning
        assert (status.state, status.reason) == ("off", "needs a CUDA device")


def test_runner_without_speculative_attributes_is_left_alone(plugin_table):
    backend = types.SimpleNamespace(use_sliding_window_kv_pool=False)
    fa_patch.resolve_frozen_kv_swa_pool(None, backend, types.SimpleNamespace(token_to_kv_pool=None))
    assert backend.use_sliding_window_kv_pool is False
