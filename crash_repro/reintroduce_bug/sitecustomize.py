"""Put SGLang's pre-fix sliding-window pool resolution back into trtllm_mha (repro only).

Loaded through PYTHONPATH by ``launch_server.sh`` with ``REINTRODUCE_BUG=1``; never
installed. Before upstream's fix, TRTLLMHAAttnBackend took its sliding-window pool
only from the runner's own pool. The frozen-KV MTP draft owns a plain pool, so its
backend built no sliding-window page table, and at run time (pool swapped to the
target's SWAKVPool) the draft's sliding-window layers read the sliding-window
cache through full-pool page indices: the original crash.

The replacement is registered with SGLang's HookRegistry, which ``load_plugins()``
applies in every SGLang process. A machine that imports this file while sglang is
missing just gets a no-op.
"""

try:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType
except ImportError:
    HookRegistry = None


def _own_pool_only(model_runner):
    """The runner's own pool if it is hybrid sliding-window, else None (no frozen-KV exception)."""
    from sglang.srt.mem_cache.swa_memory_pool import SWAKVPool

    pool = model_runner.token_to_kv_pool
    return pool if isinstance(pool, SWAKVPool) else None


if HookRegistry is not None:
    HookRegistry.register(
        "sglang.srt.layers.attention.trtllm_mha_backend.TRTLLMHAAttnBackend._resolve_swa_kv_pool",
        _own_pool_only,
        HookType.REPLACE,
    )
