"""Patch ``trtllm_page_table_trap`` (opt-in: ``SGLANG_TRTLLM_MHA_DEBUG=1``).

Why: Gemma-4 with MTP on ``--attention-backend trtllm_mha`` (B200) died with
``CUDA error: an illegal memory access`` in ``fmhaSm100fKernel_*SlidingOrChunkedCausal*``:
the frozen-KV draft read the target's sliding-window KV cache through a page
table of full-pool page indices (crash_repro/TRIAGE_REPORT.md). Such errors
surface asynchronously, at some later synchronisation, with no layer, row or
value attached. This trap checks the page table before the kernel sees it.

What is checked: a decode-kernel call gets a page table ``T`` (``R x W``), cache
lengths ``L`` (``R``) and a paged K/V cache of ``N`` pages of ``P`` tokens. Row
``r`` reads pages ``T[r, j]`` for ``j < ceil(L[r] / P)``; each must lie in
``[0, N)``, and ``ceil(L[r] / P) <= W`` (else the kernel reads past the row);
``T`` needs at least ``R`` rows. ``N`` is the leading dimension of the K and V
tensors the kernel is handed, so the bound is that of the cache the layer
really reads: the full pool or the sliding-window pool. Entries past a row's
length are never read and are not checked (they hold stale values by design).

How: in SGLang 0.5.23, ``TRTLLMHAAttnBackend`` calls the kernel only as
``flashinfer.decode.trtllm_batch_decode_with_kv_cache(...)``, an attribute
looked up at call time, from inside ``forward_decode`` / ``forward_extend``
(directly, or through ``_run_fixed_q_len_decode``). The patch wraps those two
methods, which note ``(backend, layer)`` in a context variable for the length
of the call, and the flashinfer function, which checks its own ``block_tables``,
``seq_lens`` and ``kv_cache`` arguments (the exact tensors the kernel receives,
after SGLang's optional split by length) when that context is set. Calls from
anywhere else pass through unchecked. :func:`call_site_problem` parses the
backend's source at start-up and skips the patch if a call site moved or
changed spelling, so the trap cannot silently miss one. The
prefill/context kernel (``trtllm_batch_context_with_kv_cache``) is not checked.

Failure: outside CUDA-graph capture, :class:`KVIndexOutOfBoundsError` naming
the layer, row, page slot, value and bound, after a JSON dump (offending rows,
cache lengths, pool sizes) whose path the message gives. During capture, a
device-side ``torch._assert_async`` (see ``trap_report``). Valid tables pass
to the kernel unchanged (same tensor objects, no copy).

Cost when on: a few small element-wise ops and one device-to-host read per
kernel call (per layer per step). Off (the default): SGLang's functions are
untouched.

Delete when: never needed for correctness; drop it if SGLang gains an
equivalent bounds check for trtllm_mha decode.
"""

from __future__ import annotations

import ast
import contextvars
import dataclasses
import inspect
from typing import Any

import torch

from sglang_gemma4.registry import Hook, Patch
from sglang_gemma4.srt.debug.trap_report import DEBUG_ENV, Explanation, KVIndexOutOfBoundsError, require

TRAP = "trtllm_page_table"
_BACKEND_MODULE = "sglang.srt.layers.attention.trtllm_mha_backend"
_BACKEND = f"{_BACKEND_MODULE}.TRTLLMHAAttnBackend"
_KERNEL = "flashinfer.decode.trtllm_batch_decode_with_kv_cache"
# flashinfer's leading parameters, in order: positional calls are mapped by this.
KERNEL_PARAMS = ("query", "kv_cache", "workspace_buffer", "block_tables", "seq_lens")
_CONTEXT_METHODS = frozenset({"forward_decode", "forward_extend"})
_DECODE_HELPERS = frozenset({"_run_fixed_q_len_decode"})
# Bounds on what a dump lists, so a corrupt 128k-token batch stays readable.
_MAX_LISTED_VIOLATIONS = 64
_MAX_LISTED_ROWS = 16
_MAX_LISTED_PAGES = 8192


@dataclasses.dataclass(frozen=True)
class BackendCall:
    """The trtllm_mha backend call a kernel launch belongs to."""

    backend: Any
    layer: Any
    forward_batch: Any
    method: str


_current_call: contextvars.ContextVar[BackendCall | None] = contextvars.ContextVar(
    "sglang_gemma4_trtllm_backend_call", default=None
)


def current_call() -> BackendCall | None:
    """The backend call in progress in this context, if any."""
    return _current_call.get()


def _noting_backend_call(method: str):
    def hook(original, self, q, k, v, layer, forward_batch, *args, **kwargs):
        token = _current_call.set(BackendCall(self, layer, forward_batch, method))
        try:
            return original(self, q, k, v, layer, forward_batch, *args, **kwargs)
        finally:
            _current_call.reset(token)

    hook.__name__ = method
    hook.__qualname__ = f"noting_backend_call.{method}"
    hook.__doc__ = f"Run TRTLLMHAAttnBackend.{method} with (backend, layer) noted for the kernel check."
    return hook


def checked_decode_kernel(original, *args, **kwargs):
    """Check the page table of a trtllm_mha decode launch, then launch unchanged."""
    call = _current_call.get()
    if call is not None:
        named = dict(zip(KERNEL_PARAMS, args))
        named.update(kwargs)
        check_decode_page_table(call, named["kv_cache"], named["block_tables"], named["seq_lens"])
    return original(*args, **kwargs)


def cache_pages(kv_cache) -> int:
    """Pages in the paged cache handed to the kernel: leading dim of K (and V)."""
    tensors = kv_cache if isinstance(kv_cache, (tuple, list)) else (kv_cache,)
    return min(int(t.shape[0]) for t in tensors)


def pages_read(seq_lens: torch.Tensor, page_size: int) -> torch.Tensor:
    """``ceil(seq_lens / page_size)`` in int64: page slots each row reads."""
    return (seq_lens.to(torch.int64) + page_size - 1) // page_size


def out_of_range_entries(
    block_tables: torch.Tensor, seq_lens: torch.Tensor, num_pages: int, page_size: int
) -> torch.Tensor:
    """Boolean ``R x W``: slot ``j`` of row ``r`` is read and holds a value outside ``[0, num_pages)``."""
    width = block_tables.shape[-1]
    slots = torch.arange(width, device=block_tables.device)
    read = slots[None, :] < pages_read(seq_lens, page_size)[:, None]
    return read & ((block_tables < 0) | (block_tables >= num_pages))


def check_decode_page_table(
    call: BackendCall, kv_cache, block_tables: torch.Tensor, seq_lens: torch.Tensor
) -> None:
    """Raise (or device-assert, under capture) unless every page the kernel reads is in range."""
    rows = seq_lens.shape[0]
    num_pages = cache_pages(kv_cache)
    page_size = int(call.backend.page_size)
    layer_id = call.layer.layer_id
    if block_tables.shape[0] < rows:
        raise KVIndexOutOfBoundsError(
            f"trtllm_mha decode (layer {layer_id}, {call.method}): the page table has "
            f"{block_tables.shape[0]} rows for {rows} cache lengths"
        )
    # Keep SGLang's tensor itself when no rows are dropped, so the dump can name it.
    table = block_tables if block_tables.shape[0] == rows else block_tables[:rows]
    bad = out_of_range_entries(table, seq_lens, num_pages, page_size)
    too_long = pages_read(seq_lens, page_size) > table.shape[-1]
    ok = ~(bad.any() | too_long.any())
    require(
        ok,
        trap=TRAP,
        device_message=(
            f"sglang-gemma4 trtllm_page_table_trap: layer {layer_id} ({call.method}) page table "
            f"reads a page outside [0, {num_pages}); rerun with CUDA graphs off for row/value/dump"
        ),
        explain=lambda: explain_violation(call, kv_cache, table, seq_lens, num_pages, page_size, bad, too_long),
    )


def _table_source(call: BackendCall, block_tables: torch.Tensor) -> str:
    metadata = call.backend.forward_metadata
    for name in ("swa_page_table", "page_table", "encoder_page_table"):
        if getattr(metadata, name, None) is block_tables:
            return name
    return "derived (a slice or reordering of the metadata tables)"


def _kv_cache_kind(call: BackendCall) -> str:
    from sglang.srt.mem_cache.swa_memory_pool import SWAKVPool

    pool = call.backend.token_to_kv_pool
    if isinstance(pool, SWAKVPool) and pool.layers_mapping[call.layer.layer_id][1]:
        return "sliding-window"
    return "full"


def _table_kind(call: BackendCall) -> str:
    swa_table = call.backend.forward_metadata.swa_page_table
    chosen = call.backend._get_layer_page_table(call.layer, call.forward_batch)
    return "sliding-window" if swa_table is not None and chosen is swa_table else "full"


def pool_summary(call: BackendCall) -> dict:
    """Sizes of the pools involved, and which sliding-window pool the backend resolved."""
    from sglang.srt.mem_cache.swa_memory_pool import SWAKVPool

    backend = call.backend
    pool = backend.token_to_kv_pool
    summary: dict[str, Any] = {
        "token_to_kv_pool": type(pool).__name__,
        "size_tokens": getattr(pool, "size", None),
        "page_size": int(backend.page_size),
        "backend_swa_kv_pool": None if backend._swa_kv_pool is None else type(backend._swa_kv_pool).__name__,
        "metadata_has_swa_page_table": backend.forward_metadata.swa_page_table is not None,
    }
    if isinstance(pool, SWAKVPool):
        page_size = int(backend.page_size)
        summary.update(
            full_pool_tokens=pool.full_kv_pool.size,
            full_pool_pages=(pool.full_kv_pool.size + page_size) // page_size,
            swa_pool_tokens=pool.swa_kv_pool.size,
            swa_pool_pages=(pool.swa_kv_pool.size + page_size) // page_size,
            layer_mapping={"pool_layer": pool.layers_mapping[call.layer.layer_id][0],
                           "sliding_window": pool.layers_mapping[call.layer.layer_id][1]},
        )
    return summary


def explain_violation(
    call: BackendCall,
    kv_cache,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    num_pages: int,
    page_size: int,
    bad: torch.Tensor,
    too_long: torch.Tensor,
) -> Explanation:
    """The exception text and the dump for one failed check (reads the tensors back)."""
    layer_id = call.layer.layer_id
    cache_kind, table_kind = _kv_cache_kind(call), _table_kind(call)
    forward_mode = getattr(getattr(call.forward_batch, "forward_mode", None), "name", None)
    needed = pages_read(seq_lens, page_size).cpu()
    lens = seq_lens.cpu()
    positions = bad.nonzero().cpu()
    overflow_rows = too_long.nonzero().flatten().cpu().tolist()
    width = block_tables.shape[-1]

    where = f"trtllm_mha decode, layer {layer_id} ({call.method}, {forward_mode})"
    if positions.numel():
        row, slot = (int(x) for x in positions[0])
        value = int(block_tables[row, slot])
        message = (
            f"{where}: page index {value} at row {row}, page slot {slot} of the {table_kind} page table "
            f"is outside [0, {num_pages}), the pages of the {cache_kind} KV cache the layer reads "
            f"({page_size} tokens per page); {positions.shape[0]} out-of-range entries in "
            f"{len(set(positions[:, 0].tolist()))} row(s)."
        )
    else:
        row = overflow_rows[0]
        message = (
            f"{where}: row {row} has cache length {int(lens[row])} ({int(needed[row])} pages) "
            f"but its {table_kind} page-table row holds only {width} entries."
        )
    if cache_kind == "sliding-window" and table_kind == "full":
        message += (
            " The layer reads the sliding-window cache through the full-pool page table: the backend"
            " did not resolve the sliding-window pool (the frozen-KV MTP draft failure that SGLang's"
            " TRTLLMHAAttnBackend._resolve_swa_kv_pool fixes)."
        )

    bad_rows = sorted(set(positions[:, 0].tolist()) | set(overflow_rows))
    report = {
        "layer_id": layer_id,
        "backend_method": call.method,
        "forward_mode": forward_mode,
        "kv_cache": {
            "kind": cache_kind,
            "num_pages": num_pages,
            "page_size": page_size,
            "shapes": [list(t.shape) for t in (kv_cache if isinstance(kv_cache, (tuple, list)) else (kv_cache,))],
        },
        "page_table": {
            "kind": table_kind,
            "source": _table_source(call, block_tables),
            "shape": list(block_tables.shape),
            "dtype": str(block_tables.dtype),
        },
        "rows_note": "rows are rows of this kernel call (after SGLang's optional split of the batch by length)",
        "num_violations": int(positions.shape[0]),
        "violations": [
            {"row": int(r), "page_slot": int(s), "page_index": int(block_tables[r, s])}
            for r, s in positions[:_MAX_LISTED_VIOLATIONS].tolist()
        ],
        "rows_past_table_width": [
            {"row": r, "cache_len": int(lens[r]), "pages_read": int(needed[r]), "table_width": width}
            for r in overflow_rows[:_MAX_LISTED_ROWS]
        ],
        "offending_rows": [
            {
                "row": r,
                "cache_len": int(lens[r]),
                "pages_read": int(needed[r]),
                "page_table": block_tables[r, : min(int(needed[r]), width, _MAX_LISTED_PAGES)].cpu().tolist(),
            }
            for r in bad_rows[:_MAX_LISTED_ROWS]
        ],
        "cache_lens": lens.tolist(),
        "pools": pool_summary(call),
    }
    return Explanation(message, report, {"block_tables": block_tables, "seq_lens": seq_lens})


def call_site_problem(source: str) -> str | None:
    """Why the trap would miss a decode launch in this ``trtllm_mha_backend`` source, or None.

    Every reference to ``trtllm_batch_decode_with_kv_cache`` must be the
    call-time lookup ``flashinfer.decode.trtllm_batch_decode_with_kv_cache``
    inside ``TRTLLMHAAttnBackend.forward_decode`` / ``forward_extend`` /
    ``_run_fixed_q_len_decode``, and ``_run_fixed_q_len_decode`` may be used only
    from the first two.
    """
    kernel = _KERNEL.rsplit(".", 1)[1]
    tree = ast.parse(source)
    backend = next(
        (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == _BACKEND.rsplit(".", 1)[1]), None
    )
    if backend is None:
        return "class TRTLLMHAAttnBackend not found"

    def references(node: ast.AST, name: str) -> list[ast.AST]:
        return [
            n
            for n in ast.walk(node)
            if (isinstance(n, ast.Attribute) and n.attr == name)
            or (isinstance(n, ast.Name) and n.id == name)
            or (isinstance(n, ast.alias) and name in (n.name, n.asname))
        ]

    methods = {n.name: n for n in backend.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    outside = [n for n in tree.body if n is not backend]
    if any(references(n, kernel) for n in outside) or any(
        references(n, kernel) for n in backend.body if n not in methods.values()
    ):
        return f"{kernel} is referenced outside TRTLLMHAAttnBackend's methods"
    sites = {name: references(fn, kernel) for name, fn in methods.items()}
    if not any(sites.values()):
        return f"no {kernel} call found in TRTLLMHAAttnBackend"
    for name, refs in sites.items():
        for ref in refs:
            spelled = (
                isinstance(ref, ast.Attribute)
                and isinstance(ref.value, ast.Attribute)
                and ref.value.attr == "decode"
                and isinstance(ref.value.value, ast.Name)
                and ref.value.value.id == "flashinfer"
            )
            if not spelled:
                return f"TRTLLMHAAttnBackend.{name} (line {ref.lineno}) binds {kernel} other than as {_KERNEL}"
            if name not in _CONTEXT_METHODS | _DECODE_HELPERS:
                return f"decode kernel called from TRTLLMHAAttnBackend.{name} (line {ref.lineno}), outside {sorted(_CONTEXT_METHODS)}"
    for helper in _DECODE_HELPERS:
        if any(references(n, helper) for n in outside):
            return f"{helper} is used outside TRTLLMHAAttnBackend"
        for name, fn in methods.items():
            if name not in _CONTEXT_METHODS and name != helper and references(fn, helper):
                return f"{helper} is called from TRTLLMHAAttnBackend.{name}, outside {sorted(_CONTEXT_METHODS)}"
    return None


def _check() -> str | None:
    import flashinfer.decode
    import sglang.srt.layers.attention.trtllm_mha_backend as backend_module

    leading = tuple(inspect.signature(flashinfer.decode.trtllm_batch_decode_with_kv_cache).parameters)[
        : len(KERNEL_PARAMS)
    ]
    if leading != KERNEL_PARAMS:
        return f"{_KERNEL} parameters changed: {leading} (expected {KERNEL_PARAMS})"
    return call_site_problem(inspect.getsource(backend_module))


_BACKEND_PARAMS = ("self", "q", "k", "v", "layer", "forward_batch")

PATCHES = [
    Patch(
        name="trtllm_page_table_trap",
        summary=(
            "opt-in: bounds-check every trtllm_mha decode page table before the kernel "
            "(explained error + dump; device-side assert inside CUDA graphs)"
        ),
        hooks=(
            Hook(f"{_BACKEND}.forward_decode", _noting_backend_call("forward_decode"), "around", _BACKEND_PARAMS),
            Hook(f"{_BACKEND}.forward_extend", _noting_backend_call("forward_extend"), "around", _BACKEND_PARAMS),
            Hook(_KERNEL, checked_decode_kernel, "around", KERNEL_PARAMS),
        ),
        delete_when="never needed for correctness; drop if SGLang gains an equivalent trtllm_mha page-table check",
        check=_check,
        opt_in_env=DEBUG_ENV,
    )
]
