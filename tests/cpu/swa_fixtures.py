"""Real SGLang hybrid sliding-window pools and allocators on CPU, for the trap and FA tests.

Geometry (page size 4): full pool 64 tokens -> (64 + 4) / 4 = 17 pages; sliding-window
pool 32 tokens -> (32 + 4) / 4 = 9 pages. Layers 0 and 1 are sliding-window, layer 2 full.
"""

from __future__ import annotations

import types

import torch

FULL_TOKENS = 64
SWA_TOKENS = 32
SWA_LAYERS = (0, 1)
FULL_LAYERS = (2,)
HEADS = 1
HEAD_DIM = 8


def pages(tokens: int, page_size: int) -> int:
    """Pages in an MHA pool buffer of ``tokens`` slots plus one padding page."""
    return (tokens + page_size) // page_size


def swa_pool_and_allocator(page_size: int = 4):
    """A real ``SWAKVPool`` and the ``SWATokenToKVPoolAllocator`` bound to it."""
    from sglang.srt.mem_cache.allocator.swa import SWATokenToKVPoolAllocator
    from sglang.srt.mem_cache.swa_memory_pool import SWAKVPool

    pool = SWAKVPool(
        size=FULL_TOKENS,
        size_swa=SWA_TOKENS,
        page_size=page_size,
        dtype=torch.float32,
        head_num=HEADS,
        head_dim=HEAD_DIM,
        swa_attention_layer_ids=list(SWA_LAYERS),
        full_attention_layer_ids=list(FULL_LAYERS),
        device="cpu",
    )
    allocator = SWATokenToKVPoolAllocator(
        size=FULL_TOKENS,
        size_swa=SWA_TOKENS,
        page_size=page_size,
        dtype=torch.float32,
        device="cpu",
        kvcache=pool,
        need_sort=False,
    )
    return pool, allocator


def mha_pool(page_size: int = 4):
    """A real plain (not sliding-window) MHA pool, like the one a Gemma-4 assistant draft owns."""
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool

    return MHATokenToKVPool(
        size=64,
        page_size=page_size,
        dtype=torch.float32,
        head_num=HEADS,
        head_dim=HEAD_DIM,
        layer_num=len(SWA_LAYERS) + len(FULL_LAYERS),
        device="cpu",
        enable_memory_saver=False,
    )


def runner(*, algorithm: str, is_draft_worker: bool, own_pool, allocator):
    """The ModelRunner attributes that SGLang's and our sliding-window pool resolution read."""
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    return types.SimpleNamespace(
        is_draft_worker=is_draft_worker,
        spec_algorithm=SpeculativeAlgorithm[algorithm],
        token_to_kv_pool=own_pool,
        token_to_kv_pool_allocator=allocator,
    )
