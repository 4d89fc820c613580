"""Patch ``fa_frozen_kv_swa``: the FA3/FA4 backend of a Gemma-4 frozen-KV MTP draft
reads the target's sliding-window cache through sliding-window page tables.

Why: ``FlashAttentionBackend.__init__`` (``flashattention_backend.py:212-215`` in
SGLang 0.5.23; the ``fa3`` and ``fa4`` backends are this one class) decides once
whether its pool is hybrid sliding-window, from the runner's own pool:
``use_sliding_window_kv_pool = isinstance(model_runner.token_to_kv_pool, SWAKVPool)
and swa_layer_nums > 0``. A Gemma-4 assistant draft (FROZEN_KV_MTP) owns a
plain MHA pool (its architecture is not in SGLang's hybrid-SWA list), so the flag
is False, yet every draft forward swaps ``token_to_kv_pool`` to the target's
``SWAKVPool`` (``frozen_kv_target_view`` / ``target_kv_pool_view``) and the
assistant's sliding-window layers are bound to the target's sliding-window
layers. With the flag False the backend hands those layers full-pool indices
while ``get_kv_buffer`` returns the smaller sliding-window buffers: reads out of
bounds as soon as a full-pool index passes the sliding-window pool's size. This
is the failure SGLang fixed for trtllm_mha (``TRTLLMHAAttnBackend._resolve_swa_kv_pool``)
and flashinfer, not for this class.

Reachable in 0.5.23 (read from the code, not run on a GPU): Gemma-4 accepts
``--attention-backend fa4`` (arg_groups/model_hook.py), and a frozen-KV draft
with ``--speculative-eagle-topk 1`` uses the draft runner's own backend, which
is the target's unless ``--speculative-draft-attention-backend`` names another
(``fa3`` on SM80/SM90, ``fa4`` on SM90/SM100 both pass SGLang's checks for
the draft). crash_repro/TRIAGE_REPORT.md has the full reasoning.

How: after ``FlashAttentionBackend.__init__``, for a frozen-KV MTP draft runner
whose own pool is not ``SWAKVPool`` but whose shared allocator's pool is an
``SWAKVPool`` with sliding-window layers (the rule ``_resolve_swa_kv_pool``
applies for trtllm_mha), set ``use_sliding_window_kv_pool = True``. The backend
reads every sliding-window structure (``translate_loc_from_full_to_swa``,
``full_to_swa_index_mapping``) from ``self.token_to_kv_pool`` at call time, and
the frozen-KV worker runs all draft metadata builds, forwards and graph
captures with that attribute swapped to the target pool, so the flag is all
that differs from what the target's own FA backend does on the same pool.
Every other backend and runner is left as constructed.

Delete when: ``FlashAttentionBackend.__init__`` resolves the sliding-window pool
of a frozen-KV draft itself (``_check`` then skips this patch with that reason).
"""

from __future__ import annotations

import inspect
import logging

from sglang_gemma4.registry import Hook, Patch

logger = logging.getLogger("sglang_gemma4")

_BACKEND = "sglang.srt.layers.attention.flashattention_backend.FlashAttentionBackend"


def frozen_kv_draft_reads_swa_pool(model_runner) -> bool:
    """True for a frozen-KV MTP draft runner that reads a hybrid sliding-window target pool
    while owning a pool that is not one."""
    from sglang.srt.mem_cache.swa_memory_pool import SWAKVPool

    # getattr: runner stand-ins (platform stubs, tests) build this backend too.
    algorithm = getattr(model_runner, "spec_algorithm", None)
    if not getattr(model_runner, "is_draft_worker", False) or algorithm is None or not algorithm.is_frozen_kv_mtp():
        return False
    if isinstance(model_runner.token_to_kv_pool, SWAKVPool):
        return False
    target_pool = model_runner.token_to_kv_pool_allocator.get_kvcache()
    return isinstance(target_pool, SWAKVPool) and target_pool.swa_layer_nums > 0


def resolve_frozen_kv_swa_pool(result, self, model_runner, *args, **kwargs) -> None:
    """After ``FlashAttentionBackend.__init__``: mark a frozen-KV draft backend sliding-window aware."""
    if not self.use_sliding_window_kv_pool and frozen_kv_draft_reads_swa_pool(model_runner):
        self.use_sliding_window_kv_pool = True
        logger.info(
            "fa_frozen_kv_swa: the frozen-KV MTP draft's %s reads the target's sliding-window pool; "
            "its sliding-window layers now use sliding-window page tables",
            type(self).__name__,
        )


def frozen_kv_gap_reason(init_source: str) -> str | None:
    """None while ``__init__`` still derives the flag from the runner's own pool with no
    frozen-KV exception; otherwise why this patch is not needed (or cannot apply)."""
    if "self.use_sliding_window_kv_pool" not in init_source:
        return "FlashAttentionBackend.__init__ no longer sets use_sliding_window_kv_pool"
    if "model_runner.token_to_kv_pool" not in init_source:
        return "FlashAttentionBackend.__init__ no longer reads the runner's own pool"
    if "frozen_kv" in init_source or "_resolve_swa_kv_pool" in init_source:
        return "FlashAttentionBackend.__init__ already resolves the frozen-KV draft's pool upstream"
    return None


def _check() -> str | None:
    from sglang.srt.layers.attention.flashattention_backend import FlashAttentionBackend

    return frozen_kv_gap_reason(inspect.getsource(FlashAttentionBackend.__init__))


PATCHES = [
    Patch(
        name="fa_frozen_kv_swa",
        summary=(
            "FA3/FA4 backend of a Gemma-4 frozen-KV MTP draft uses sliding-window page tables for "
            "the target's sliding-window layers (stock: full-pool indices into the smaller cache)"
        ),
        hooks=(Hook(f"{_BACKEND}.__init__", resolve_frozen_kv_swa_pool, "after", ("self", "model_runner")),),
        delete_when="FlashAttentionBackend.__init__ resolves the target's SWA pool for a frozen-KV MTP draft",
        check=_check,
        needs_cuda=True,
    )
]
