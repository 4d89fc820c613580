"""Patch ``swa_allocator_trap`` (opt-in: ``SGLANG_TRTLLM_MHA_DEBUG=1``).

Why: on a hybrid sliding-window model every full-pool token slot the allocator
hands out has a peer slot in the sliding-window pool, recorded in
``full_to_swa_index_mapping``; the attention backends build their
sliding-window page tables through that mapping. A mapped index outside the
sliding-window pool becomes an out-of-range page read in the kernel, far from
its cause. This trap checks the mapping where it is written: at allocation.
(In the original Gemma-4 crash it stayed silent: the allocator was innocent and
the page table was built against the wrong pool; crash_repro/TRIAGE_REPORT.md.
Running it next to ``trtllm_page_table_trap`` tells those two causes apart.)

What is checked: after ``SWATokenToKVPoolAllocator.alloc``, ``alloc_extend``,
``alloc_extend_swa_tail`` and ``alloc_decode`` return full indices ``f``, every
``s = full_to_swa_index_mapping[f]`` must lie in ``[0, S + P)``, where ``S`` is
the sliding-window KV pool's token count and ``P`` its page size (the pool's
buffers have ``S + P`` rows: slot ``0 .. P-1`` is the padding page). That is
the bound SGLang's own write-time check uses (``maybe_detect_oob`` in
``MHATokenToKVPool.set_kv_buffer``, which only runs with
``SGLANG_ENABLE_ASYNC_ASSERT``). Slots that ``alloc_extend_swa_tail`` leaves
outside the window map to ``0`` and pass. Per-request ring mode
(``swa_req_ring``) writes no mapping and is not checked.

Failure: :class:`KVIndexOutOfBoundsError` naming the method, the first
offending full and sliding-window index and the bound, after a JSON dump
(offending indices, pool sizes, free space, the call's lengths). Allocation runs
on the scheduler outside CUDA graphs; under capture the check would be a
device-side assert (``trap_report.require``).

Cost when on: one gather and one device-to-host read per allocation. Off (the
default): SGLang's methods are untouched.

Delete when: never needed for correctness; drop it if SGLang checks the
mapping at allocation time itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from sglang_gemma4.registry import Hook, Patch
from sglang_gemma4.srt.debug.trap_report import DEBUG_ENV, Explanation, require

TRAP = "swa_allocator"
_ALLOCATOR = "sglang.srt.mem_cache.allocator.swa.SWATokenToKVPoolAllocator"
_MAX_LISTED = 64

# method -> its parameters after self, as SGLang 0.5.23 declares them
ALLOCATION_METHODS: dict[str, tuple[str, ...]] = {
    "alloc": ("need_size",),
    "alloc_extend": (
        "prefix_lens", "prefix_lens_cpu", "seq_lens", "seq_lens_cpu", "last_loc", "extend_num_tokens",
    ),
    "alloc_extend_swa_tail": (
        "prefix_lens", "prefix_lens_cpu", "seq_lens", "seq_lens_cpu", "last_loc", "extend_num_tokens",
        "swa_tail_len",
    ),
    "alloc_decode": ("seq_lens", "seq_lens_cpu", "last_loc"),
}
# Call arguments worth a line in the dump: host-side lengths and counts only.
_REPORTED_ARGS = ("need_size", "prefix_lens_cpu", "seq_lens_cpu", "extend_num_tokens", "swa_tail_len")


def swa_slot_bound(allocator) -> int:
    """Rows of the sliding-window KV buffers: pool tokens + one padding page."""
    swa_pool = allocator.get_kvcache().swa_kv_pool
    return int(swa_pool.size) + int(swa_pool.page_size)


def check_swa_indices(allocator, method: str, full_indices: torch.Tensor, call_args: dict) -> None:
    """Raise (dump first) unless every returned full index maps into the sliding-window pool."""
    bound = swa_slot_bound(allocator)
    swa_indices = allocator.full_to_swa_index_mapping[full_indices.to(torch.int64)]
    bad = (swa_indices < 0) | (swa_indices >= bound)
    require(
        ~bad.any(),
        trap=TRAP,
        device_message=f"sglang-gemma4 swa_allocator_trap: {method} mapped a full slot outside the SWA pool [0, {bound})",
        explain=lambda: explain_violation(allocator, method, full_indices, swa_indices, bad, bound, call_args),
    )


def _as_reportable(value):
    return value.tolist() if isinstance(value, torch.Tensor) else value


def explain_violation(
    allocator,
    method: str,
    full_indices: torch.Tensor,
    swa_indices: torch.Tensor,
    bad: torch.Tensor,
    bound: int,
    call_args: dict,
) -> Explanation:
    """The exception text and the dump for one failed allocation check."""
    positions = bad.nonzero().flatten().cpu()
    first = int(positions[0])
    full_first, swa_first = int(full_indices[first]), int(swa_indices[first])
    swa_pool = allocator.get_kvcache().swa_kv_pool
    message = (
        f"SWATokenToKVPoolAllocator.{method} returned full slot {full_first} whose sliding-window slot "
        f"{swa_first} is outside [0, {bound}) (sliding-window pool: {swa_pool.size} tokens + "
        f"{swa_pool.page_size} padding); {positions.numel()} of {full_indices.numel()} returned slots are out of range."
    )
    listed = positions[:_MAX_LISTED]
    report = {
        "method": method,
        "bound": {"swa_slots": bound, "swa_pool_tokens": int(swa_pool.size), "page_size": int(swa_pool.page_size)},
        "num_returned": int(full_indices.numel()),
        "num_violations": int(positions.numel()),
        "violations": [
            {"position": int(i), "full_slot": int(full_indices[i]), "swa_slot": int(swa_indices[i])} for i in listed
        ],
        "sizes": {
            "size_full": int(allocator.size_full),
            "size_swa": int(allocator.size_swa),
            "full_available": int(allocator.full_available_size()),
            "swa_available": int(allocator.swa_available_size()),
            "mapping_len": int(allocator.full_to_swa_index_mapping.numel()),
        },
        "call": {k: _as_reportable(v) for k, v in call_args.items() if k in _REPORTED_ARGS},
    }
    return Explanation(message, report, {"full_indices": full_indices, "swa_indices": swa_indices})


def _checking(method: str, params: Sequence[str]) -> Callable:
    def hook(original, self, *args, **kwargs):
        full_indices = original(self, *args, **kwargs)
        if full_indices is not None and not self.swa_req_ring:
            check_swa_indices(self, method, full_indices, {**dict(zip(params, args)), **kwargs})
        return full_indices

    hook.__name__ = method
    hook.__qualname__ = f"checking.{method}"
    hook.__doc__ = f"Run SWATokenToKVPoolAllocator.{method}, then check the sliding-window slots it mapped."
    return hook


def _check() -> str | None:
    from sglang.srt.mem_cache.allocator.swa import SWATokenToKVPoolAllocator
    from sglang.srt.mem_cache.base_swa_memory_pool import BaseSWAKVPool

    for attr in ("swa_req_ring", "get_kvcache", "size_full", "size_swa", "full_available_size", "swa_available_size"):
        if not hasattr(SWATokenToKVPoolAllocator, attr):
            return f"SWATokenToKVPoolAllocator has no attribute {attr!r}"
    if "swa_kv_pool" not in getattr(BaseSWAKVPool, "__annotations__", {}):
        return "BaseSWAKVPool no longer declares swa_kv_pool"
    return None


PATCHES = [
    Patch(
        name="swa_allocator_trap",
        summary=(
            "opt-in: check at allocation that every new full slot maps into the sliding-window pool "
            "(explained error + dump)"
        ),
        hooks=tuple(
            Hook(f"{_ALLOCATOR}.{method}", _checking(method, params), "around", ("self", *params))
            for method, params in ALLOCATION_METHODS.items()
        ),
        delete_when="never needed for correctness; drop if SGLang checks full_to_swa_index_mapping at allocation",
        check=_check,
        opt_in_env=DEBUG_ENV,
    )
]
