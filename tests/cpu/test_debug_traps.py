"""The opt-in bounds traps (SGLANG_TRTLLM_MHA_DEBUG=1) on CPU.

The trtllm decode kernel needs SM100 and cannot run here. These tests run SGLang's
own TRTLLMHAAttnBackend.forward_decode / forward_extend code (on an instance with
only the attributes those methods read) against real SWAKVPool buffers, up to the
kernel call: a recording stand-in takes the place of flashinfer's kernel, behind
our real check. The allocator trap runs on real SWATokenToKVPoolAllocator objects.
"""

from __future__ import annotations

import functools
import json
import types

import pytest
import torch

from sglang_gemma4.srt.debug import swa_allocator_trap as swa_trap
from sglang_gemma4.srt.debug import trap_report
from sglang_gemma4.srt.debug import trtllm_page_table_trap as trtllm_trap
from sglang_gemma4.srt.debug.trap_report import KVIndexOutOfBoundsError
from tests.cpu import swa_fixtures as fx
from tests.cpu.harness import run_python

PAGE = 4
SWA_PAGES = fx.pages(fx.SWA_TOKENS, PAGE)  # 9
FULL_PAGES = fx.pages(fx.FULL_TOKENS, PAGE)  # 17


@pytest.fixture(autouse=True)
def dumps(tmp_path, monkeypatch):
    """Every test writes its dumps into its own directory."""
    monkeypatch.setenv(trap_report.DUMP_DIR_ENV, str(tmp_path))
    return tmp_path


def only_dump(directory):
    files = sorted(directory.glob("*.json"))
    assert len(files) == 1, files
    return files[0], json.loads(files[0].read_text())


# ---------------------------------------------------------------- trtllm decode


class RecordingKernel:
    """Stands in for flashinfer's trtllm decode kernel (SM100 only): records each launch."""

    def __init__(self):
        self.calls = []

    def __call__(self, query, kv_cache, workspace_buffer, block_tables, seq_lens, **kwargs):
        self.calls.append(types.SimpleNamespace(block_tables=block_tables, seq_lens=seq_lens, kv_cache=kv_cache))
        return torch.zeros_like(query)


@pytest.fixture
def kernel(plugin_table, monkeypatch):
    """flashinfer.decode as trtllm_mha_backend sees it: our check in front of a recording kernel."""
    import sglang.srt.layers.attention.trtllm_mha_backend as backend_module

    recorder = RecordingKernel()
    decode = types.SimpleNamespace(
        trtllm_batch_decode_with_kv_cache=functools.partial(trtllm_trap.checked_decode_kernel, recorder)
    )
    # On a machine without CUDA the backend module skips `import flashinfer`.
    monkeypatch.setattr(backend_module, "flashinfer", types.SimpleNamespace(decode=decode), raising=False)
    return recorder


def layer(layer_id: int, sliding: bool):
    """The RadixAttention attributes the decode paths read."""
    from sglang.srt.layers.radix_attention import AttentionType

    return types.SimpleNamespace(
        layer_id=layer_id,
        tp_q_head_num=2,
        tp_k_head_num=fx.HEADS,
        tp_v_head_num=fx.HEADS,
        head_dim=fx.HEAD_DIM,
        scaling=fx.HEAD_DIM**-0.5,
        sliding_window_size=7 if sliding else -1,
        attn_type=AttentionType.DECODER,
    )


def trtllm_backend(pool, page_table, swa_page_table, cache_lens, *, resolved_swa_pool=True):
    """A TRTLLMHAAttnBackend with the attributes forward_decode/forward_extend read (no __init__:
    it needs a GPU). ``resolved_swa_pool=False`` is a backend that did not find the
    sliding-window pool (the frozen-KV draft before SGLang's fix)."""
    from sglang.srt.layers.attention.trtllm_mha_backend import TRTLLMHAAttnBackend, TRTLLMMHAMetadata

    backend = TRTLLMHAAttnBackend.__new__(TRTLLMHAAttnBackend)
    backend.token_to_kv_pool = pool
    backend._swa_kv_pool = pool if resolved_swa_pool else None
    backend.page_size = PAGE
    backend.data_type = backend.q_data_type = torch.float32
    backend.decode_uses_native_fp4 = backend.is_nvfp4_kvcache = backend.is_xqa_impl = False
    backend.uses_trtllm_gen_native_fp4 = backend.use_fmha_v2 = False
    backend.decode_seq_len_splits = 1
    backend.max_context_len = 256
    backend.workspace_buffer = torch.zeros(8, dtype=torch.uint8)
    backend._multi_ctas_kv_counter_buffer = None
    backend._xqa_spec_dec_mask = None
    backend.forward_metadata = TRTLLMMHAMetadata(
        cache_seqlens_int32=torch.tensor(cache_lens, dtype=torch.int32),
        page_table=page_table,
        swa_page_table=swa_page_table,
    )
    return backend


def run_decode(backend, layer_, forward_mode="DECODE"):
    """SGLang's forward_decode (or forward_extend for verify modes) inside our backend-call hook."""
    from sglang.srt.layers.attention.trtllm_mha_backend import TRTLLMHAAttnBackend
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    rows = backend.forward_metadata.cache_seqlens_int32.shape[0] * backend.forward_metadata.max_seq_len_q
    q = torch.randn(rows, layer_.tp_q_head_num * layer_.head_dim)
    forward_batch = types.SimpleNamespace(forward_mode=ForwardMode[forward_mode], _attn_output=None)
    method = "forward_decode" if forward_mode == "DECODE" else "forward_extend"
    hook = trtllm_trap._noting_backend_call(method)
    return hook(getattr(TRTLLMHAAttnBackend, method), backend, q, None, None, layer_, forward_batch, save_kv_cache=False)


def tables(full_rows, swa_rows, width=6):
    """Page tables padded with a stale value (999) past what each row reads."""

    def build(rows):
        t = torch.full((len(rows), width), 999, dtype=torch.int32)
        for i, r in enumerate(rows):
            t[i, : len(r)] = torch.tensor(r, dtype=torch.int32)
        return t

    return build(full_rows), build(swa_rows)


# Two requests: 7 tokens (2 pages) and 13 tokens (4 pages).
CACHE_LENS = [7, 13]
FULL_OK = [[3, 4], [5, 6, 7, 16]]
SWA_OK = [[1, 2], [3, 4, 5, 8]]


@pytest.mark.parametrize(("layer_id", "sliding", "which"), [(0, True, "swa_page_table"), (2, False, "page_table")])
def test_valid_tables_reach_the_kernel_unchanged(kernel, layer_id, sliding, which):
    pool, _ = fx.swa_pool_and_allocator(PAGE)
    full, swa = tables(FULL_OK, SWA_OK)
    backend = trtllm_backend(pool, full, swa, CACHE_LENS)
    out = run_decode(backend, layer(layer_id, sliding))
    assert len(kernel.calls) == 1
    call = kernel.calls[0]
    assert call.block_tables is getattr(backend.forward_metadata, which), "the kernel gets SGLang's own tensor"
    assert call.seq_lens is backend.forward_metadata.cache_seqlens_int32
    assert call.kv_cache[0].shape[0] == (SWA_PAGES if sliding else FULL_PAGES)
    assert out.shape == (2, 2 * fx.HEAD_DIM)
    assert torch.equal(full, tables(FULL_OK, SWA_OK)[0]) and torch.equal(swa, tables(FULL_OK, SWA_OK)[1])


def test_out_of_range_swa_page_is_trapped_with_dump(kernel, dumps):
    pool, _ = fx.swa_pool_and_allocator(PAGE)
    bad_swa = [[1, 2], [3, SWA_PAGES, 5, 8]]  # page 9 of a 9-page cache, read by row 1
    full, swa = tables(FULL_OK, bad_swa)
    backend = trtllm_backend(pool, full, swa, CACHE_LENS)
    with pytest.raises(KVIndexOutOfBoundsError) as info:
        run_decode(backend, layer(1, sliding=True))
    message = str(info.value)
    assert "layer 1 (forward_decode, DECODE): page index 9 at row 1, page slot 1 of the sliding-window page table" in message
    assert "outside [0, 9)" in message and "sliding-window KV cache" in message
    assert kernel.calls == [], "the kernel must not run on a bad table"

    path, report = only_dump(dumps)
    assert str(path) in message
    assert report["trap"] == "trtllm_page_table" and report["layer_id"] == 1
    assert report["violations"] == [{"row": 1, "page_slot": 1, "page_index": 9}]
    assert report["kv_cache"] == {"kind": "sliding-window", "num_pages": 9, "page_size": 4, "shapes": [[9, 1, 4, 8]] * 2}
    assert report["page_table"]["source"] == "swa_page_table"
    assert report["offending_rows"] == [{"row": 1, "cache_len": 13, "pages_read": 4, "page_table": [3, 9, 5, 8]}]
    assert report["cache_lens"] == CACHE_LENS
    assert report["pools"]["swa_pool_pages"] == 9 and report["pools"]["full_pool_pages"] == 17
    saved = torch.load(report["tensors_file"])
    assert torch.equal(saved["block_tables"], swa)


def test_full_layer_is_bounded_by_the_full_pool(kernel):
    pool, _ = fx.swa_pool_and_allocator(PAGE)
    full, swa = tables([[3, 4], [5, 6, 7, FULL_PAGES]], SWA_OK)
    with pytest.raises(KVIndexOutOfBoundsError, match=r"page index 17 at row 1, page slot 3 .* outside \[0, 17\)"):
        run_decode(trtllm_backend(pool, full, swa, CACHE_LENS), layer(2, sliding=False))


def test_negative_index_is_trapped(kernel):
    pool, _ = fx.swa_pool_and_allocator(PAGE)
    full, swa = tables(FULL_OK, [[-1, 2], [3, 4, 5, 8]])
    with pytest.raises(KVIndexOutOfBoundsError, match=r"page index -1 at row 0, page slot 0"):
        run_decode(trtllm_backend(pool, full, swa, CACHE_LENS), layer(0, sliding=True))


def test_entries_past_the_cache_length_are_not_read(kernel):
    pool, _ = fx.swa_pool_and_allocator(PAGE)
    full, swa = tables(FULL_OK, SWA_OK)  # slots past each row's pages hold 999
    swa[0, 2] = -5
    run_decode(trtllm_backend(pool, full, swa, CACHE_LENS), layer(0, sliding=True))
    assert len(kernel.calls) == 1


def test_cache_length_past_the_table_width_is_trapped(kernel):
    pool, _ = fx.swa_pool_and_allocator(PAGE)
    full, swa = tables(FULL_OK, SWA_OK, width=4)
    with pytest.raises(KVIndexOutOfBoundsError, match=r"row 1 has cache length 17 \(5 pages\) .* holds only 4"):
        run_decode(trtllm_backend(pool, full, swa, [7, 17]), layer(0, sliding=True))


def test_table_with_fewer_rows_than_cache_lengths_is_trapped(kernel):
    pool, _ = fx.swa_pool_and_allocator(PAGE)
    full, swa = tables(FULL_OK, SWA_OK)
    backend = trtllm_backend(pool, full, swa[:1], CACHE_LENS)
    with pytest.raises(KVIndexOutOfBoundsError, match="the page table has 1 rows for 2 cache lengths"):
        run_decode(backend, layer(0, sliding=True))
    assert kernel.calls == []


def test_sliding_cache_read_through_full_table_is_explained(kernel, dumps):
    """The original crash: the backend has no sliding-window pool (so no SWA table), the pool it
    reads is the target's SWAKVPool, and a sliding-window layer gets full-pool page indices."""
    pool, _ = fx.swa_pool_and_allocator(PAGE)
    full, _ = tables([[3, 4], [5, 6, 12, 16]], SWA_OK)
    backend = trtllm_backend(pool, full, None, CACHE_LENS, resolved_swa_pool=False)
    with pytest.raises(KVIndexOutOfBoundsError) as info:
        run_decode(backend, layer(0, sliding=True))
    message = str(info.value)
    assert "page index 12 at row 1, page slot 2" in message and "outside [0, 9)" in message
    assert "full page table" in message and "through the full-pool page table" in message
    _, report = only_dump(dumps)
    assert report["pools"]["backend_swa_kv_pool"] is None
    assert report["pools"]["metadata_has_swa_page_table"] is False
    assert report["num_violations"] == 2


@pytest.mark.parametrize("path", ["ragged", "encoder_only", "fixed_q_len"])
def test_target_verify_call_sites_are_checked(kernel, path):
    """forward_extend's three decode-kernel routes (direct ragged and encoder-only calls, and
    _run_fixed_q_len_decode) go through the same check."""
    from sglang.srt.layers.radix_attention import AttentionType

    pool, _ = fx.swa_pool_and_allocator(PAGE)
    full, swa = tables(FULL_OK, [[1, 2], [3, 4, 5, SWA_PAGES + 3]])
    backend = trtllm_backend(pool, full, swa, CACHE_LENS)
    attn = layer(0, sliding=True)
    if path == "ragged":
        backend.forward_metadata.is_ragged_verify = True
    if path == "encoder_only":
        attn.attn_type = AttentionType.ENCODER_ONLY
        backend.forward_metadata.encoder_page_table = swa
        backend.forward_metadata.encoder_cache_seqlens = backend.forward_metadata.cache_seqlens_int32
    with pytest.raises(KVIndexOutOfBoundsError, match=r"layer 0 \(forward_extend, TARGET_VERIFY\): page index 12 at row 1, page slot 3"):
        run_decode(backend, attn, forward_mode="TARGET_VERIFY")
    swa[1, 3] = 8
    run_decode(backend, attn, forward_mode="TARGET_VERIFY")
    assert len(kernel.calls) == 1


def test_positional_kernel_arguments_are_checked(plugin_table):
    pool, _ = fx.swa_pool_and_allocator(PAGE)
    full, swa = tables(FULL_OK, [[1, 50], [3, 4, 5, 8]])
    backend = trtllm_backend(pool, full, swa, CACHE_LENS)
    kv = tuple(t.view(SWA_PAGES, PAGE, 1, fx.HEAD_DIM) for t in pool.get_kv_buffer(0))
    call = trtllm_trap.BackendCall(backend, layer(0, True), None, "forward_decode")
    token = trtllm_trap._current_call.set(call)
    try:
        with pytest.raises(KVIndexOutOfBoundsError, match="page index 50"):
            trtllm_trap.checked_decode_kernel(RecordingKernel(), torch.zeros(2, 2, 8), kv, None, swa, torch.tensor(CACHE_LENS))
    finally:
        trtllm_trap._current_call.reset(token)


def test_launches_outside_a_trtllm_backend_call_pass_through(plugin_table):
    recorder = RecordingKernel()
    garbage = torch.full((2, 4), -7, dtype=torch.int32)
    trtllm_trap.checked_decode_kernel(
        recorder, query=torch.zeros(2, 1, 8), kv_cache=(torch.zeros(3, 1, 4, 8),) * 2,
        workspace_buffer=None, block_tables=garbage, seq_lens=torch.tensor([9, 9]),
    )
    assert len(recorder.calls) == 1 and recorder.calls[0].block_tables is garbage
    assert trtllm_trap.current_call() is None


@pytest.fixture
def capturing(monkeypatch):
    """Pretend a CUDA graph is being captured; record the device-side asserts."""
    asserts = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    monkeypatch.setattr(torch, "_assert_async", lambda ok, msg: asserts.append((ok.clone(), msg)))
    return asserts


def test_under_graph_capture_the_check_is_a_device_assert(kernel, capturing, dumps):
    pool, _ = fx.swa_pool_and_allocator(PAGE)
    full, swa = tables(FULL_OK, [[1, 2], [3, 40, 5, 8]])
    backend = trtllm_backend(pool, full, swa, CACHE_LENS)
    run_decode(backend, layer(0, sliding=True))  # no host read-back, no exception
    ((ok, message),) = capturing
    assert ok.dim() == 0 and ok.dtype == torch.bool and not bool(ok)
    assert "layer 0 (forward_decode)" in message and "[0, 9)" in message
    assert len(message) <= trap_report.MAX_DEVICE_MESSAGE
    assert list(dumps.glob("*")) == [], "nothing is dumped during capture"
    assert len(kernel.calls) == 1, "the launch is still recorded into the graph"

    swa[1, 1] = 4
    run_decode(backend, layer(0, sliding=True))
    assert bool(capturing[1][0])


def test_device_assert_fires_on_bad_values(kernel, monkeypatch):
    """With torch's real _assert_async (synchronous on CPU tensors) the captured branch stops."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    pool, _ = fx.swa_pool_and_allocator(PAGE)
    full, swa = tables(FULL_OK, [[1, 2], [3, 40, 5, 8]])
    with pytest.raises(RuntimeError, match="trtllm_page_table_trap: layer 0"):
        run_decode(trtllm_backend(pool, full, swa, CACHE_LENS), layer(0, sliding=True))


def test_call_sites_of_installed_sglang_are_all_covered(plugin_table):
    import inspect

    import sglang.srt.layers.attention.trtllm_mha_backend as backend_module

    source = inspect.getsource(backend_module)
    assert trtllm_trap.call_site_problem(source) is None
    assert trtllm_trap._check() is None
    assert source.count("flashinfer.decode.trtllm_batch_decode_with_kv_cache(") == 3


def test_moved_call_sites_skip_the_patch(plugin_table):
    import inspect

    import sglang.srt.layers.attention.trtllm_mha_backend as backend_module

    source = inspect.getsource(backend_module)
    rebound = source.replace(
        "o = flashinfer.decode.trtllm_batch_decode_with_kv_cache(", "o = trtllm_batch_decode_with_kv_cache(", 1
    )
    assert "binds trtllm_batch_decode_with_kv_cache other than as" in trtllm_trap.call_site_problem(rebound)
    moved = source.replace(
        "    def _get_nvfp4_decode_kv_cache(",
        "    def _prefetch(self):\n        return self._run_fixed_q_len_decode(None, None, None, None)\n\n"
        "    def _get_nvfp4_decode_kv_cache(",
    )
    assert "called from TRTLLMHAAttnBackend._prefetch" in trtllm_trap.call_site_problem(moved)
    helper = source + "\n\ndef launch():\n    return flashinfer.decode.trtllm_batch_decode_with_kv_cache()\n"
    assert "outside TRTLLMHAAttnBackend's methods" in trtllm_trap.call_site_problem(helper)


# ---------------------------------------------------------------- SWA allocator

HOOKS = {m: swa_trap._checking(m, p) for m, p in swa_trap.ALLOCATION_METHODS.items()}


def allocate(allocator, method, *args):
    from sglang.srt.mem_cache.allocator.swa import SWATokenToKVPoolAllocator

    return HOOKS[method](getattr(SWATokenToKVPoolAllocator, method), allocator, *args)


def extend_args(prefix, seq):
    prefix, seq = torch.tensor(prefix), torch.tensor(seq)
    return prefix, prefix, seq, seq, torch.full((len(seq),), -1), int((seq - prefix).sum())


def test_valid_allocations_pass_and_match_stock(plugin_table):
    _, trapped = fx.swa_pool_and_allocator(PAGE)
    _, stock = fx.swa_pool_and_allocator(PAGE)
    for alloc in (trapped, stock):
        run = (lambda m, *a: allocate(alloc, m, *a)) if alloc is trapped else (lambda m, *a: getattr(alloc, m)(*a))
        ext = run("alloc_extend", *extend_args([0, 0], [5, 3]))
        last = torch.tensor([int(ext[4]), int(ext[7])])
        dec = run("alloc_decode", torch.tensor([6, 4]), torch.tensor([6, 4]), last)
        tail = run("alloc_extend_swa_tail", *extend_args([0], [9]), 4)
        alloc.results = (ext, dec, tail, alloc.full_to_swa_index_mapping.clone())
    for got, want in zip(trapped.results, stock.results):
        assert torch.equal(got, want)
    assert (trapped.full_to_swa_index_mapping[trapped.results[2][:5]] == 0).all(), "tail head maps to padding"

    _, single = fx.swa_pool_and_allocator(1)
    assert torch.equal(allocate(single, "alloc", 5), torch.arange(1, 6))


def test_out_of_range_swa_slot_at_decode_is_trapped(plugin_table, monkeypatch, dumps):
    _, alloc = fx.swa_pool_and_allocator(PAGE)
    ext = allocate(alloc, "alloc_extend", *extend_args([0, 0], [5, 3]))
    bound = fx.SWA_TOKENS + PAGE  # 36 rows in the sliding-window buffers
    monkeypatch.setattr(alloc.swa_attn_allocator, "alloc_decode", lambda *a: torch.tensor([9, bound + 4]))
    last = torch.tensor([int(ext[4]), int(ext[7])])
    with pytest.raises(KVIndexOutOfBoundsError) as info:
        allocate(alloc, "alloc_decode", torch.tensor([6, 4]), torch.tensor([6, 4]), last)
    message = str(info.value)
    assert "SWATokenToKVPoolAllocator.alloc_decode returned full slot 15" in message
    assert "sliding-window slot 40 is outside [0, 36)" in message and "1 of 2" in message
    path, report = only_dump(dumps)
    assert str(path) in message
    assert report["violations"] == [{"position": 1, "full_slot": 15, "swa_slot": 40}]
    assert report["bound"] == {"swa_slots": 36, "swa_pool_tokens": 32, "page_size": 4}
    assert report["sizes"]["size_swa"] == 32 and report["sizes"]["size_full"] == 64
    assert report["call"] == {"seq_lens_cpu": [6, 4]}


@pytest.mark.parametrize("method", ["alloc", "alloc_extend", "alloc_extend_swa_tail"])
def test_out_of_range_swa_slot_at_extend_is_trapped(plugin_table, monkeypatch, method):
    page = 1 if method == "alloc" else PAGE
    _, alloc = fx.swa_pool_and_allocator(page)
    inner = alloc.swa_attn_allocator
    stock = getattr(inner, "alloc" if method == "alloc" else "alloc_extend")

    def corrupt(*args, **kwargs):
        out = stock(*args, **kwargs)
        out[-1] = -1 if method == "alloc" else 99
        return out

    monkeypatch.setattr(inner, "alloc" if method == "alloc" else "alloc_extend", corrupt)
    args = {"alloc": (3,), "alloc_extend": extend_args([0], [6]), "alloc_extend_swa_tail": (*extend_args([0], [9]), 4)}
    with pytest.raises(KVIndexOutOfBoundsError, match=rf"{method} returned full slot \d+ whose sliding-window slot (-1|99)"):
        allocate(alloc, method, *args[method])


def test_ring_mode_writes_no_mapping_and_is_not_checked(plugin_table):
    _, alloc = fx.swa_pool_and_allocator(PAGE)
    alloc._swa_req_ring = True
    alloc.full_to_swa_index_mapping[:-1] = 10_000
    out = allocate(alloc, "alloc_extend", *extend_args([0], [6]))
    assert out.numel() == 6


# ---------------------------------------------------------------- off by default / on by switch


def test_traps_are_off_by_default_and_sglang_functions_untouched(plugin_table):
    import flashinfer.decode
    from sglang.srt.layers.attention.trtllm_mha_backend import TRTLLMHAAttnBackend
    from sglang.srt.mem_cache.allocator.swa import SWATokenToKVPoolAllocator

    for name in ("trtllm_page_table_trap", "swa_allocator_trap"):
        assert plugin_table[name].state == "off"
        assert plugin_table[name].reason == "opt-in: set SGLANG_TRTLLM_MHA_DEBUG=1"
    originals = [
        TRTLLMHAAttnBackend.__dict__["forward_decode"],
        TRTLLMHAAttnBackend.__dict__["forward_extend"],
        flashinfer.decode.trtllm_batch_decode_with_kv_cache,
        *(SWATokenToKVPoolAllocator.__dict__[m] for m in swa_trap.ALLOCATION_METHODS),
    ]
    for fn in originals:
        # HookRegistry's wrappers copy the original's name (functools.wraps); their code does not.
        assert not fn.__code__.co_filename.endswith("hook_registry.py"), fn
        assert fn.__module__.startswith(("sglang.srt.", "flashinfer.")), fn.__module__


SWITCHED_ON = """
import torch
from sglang.srt.plugins import load_plugins
load_plugins()
from sglang_gemma4 import harness, registry
harness.init_sglang()
import flashinfer.decode
from sglang.srt.layers.attention.trtllm_mha_backend import TRTLLMHAAttnBackend
from sglang.srt.mem_cache.allocator.swa import SWATokenToKVPoolAllocator
from tests.cpu import swa_fixtures as fx
states = {s.name: s.state for s in registry.status()}
print("STATES", states["trtllm_page_table_trap"], states["swa_allocator_trap"])
print("WRAPPED", all(f.__code__.co_filename.endswith("hook_registry.py") for f in (
    TRTLLMHAAttnBackend.forward_decode, TRTLLMHAAttnBackend.forward_extend,
    flashinfer.decode.trtllm_batch_decode_with_kv_cache, SWATokenToKVPoolAllocator.alloc_decode)))
_, alloc = fx.swa_pool_and_allocator(1)
print("VALID", alloc.alloc(3).tolist())
alloc.swa_attn_allocator.alloc = lambda n: torch.arange(100, 100 + n)
try:
    alloc.alloc(2)
except IndexError as e:
    print("TRAPPED", type(e).__name__, str(e).splitlines()[0][:90])
    print("NOTE", "SGLANG_GEMMA4_DISABLE=swa_allocator_trap" in "".join(getattr(e, "__notes__", [])))
"""


def test_switch_applies_both_traps_through_load_plugins(tmp_path):
    r = run_python(
        SWITCHED_ON,
        env={"SGLANG_TRTLLM_MHA_DEBUG": "1", "SGLANG_GEMMA4_DUMP_DIR": str(tmp_path),
             "SGLANG_GEMMA4_DISABLE": "<unset>", "SGLANG_PLUGINS": "<unset>", "MASTER_PORT": "<unset>"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "STATES applied applied" in r.stdout
    assert "WRAPPED True" in r.stdout
    assert "VALID [1, 2, 3]" in r.stdout
    assert "TRAPPED KVIndexOutOfBoundsError SWATokenToKVPoolAllocator.alloc returned full slot 4 whose sliding-window slot 100" in r.stdout
    assert "NOTE True" in r.stdout
    assert len(list(tmp_path.glob("swa_allocator-pid*.json"))) == 1
