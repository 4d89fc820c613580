"""Programmatic dependent launch: the switch, and that every kernel waits before it touches memory.

A kernel launched with PDL may start while the kernel before it still runs, so
any global load or store ahead of ``griddepcontrol.wait`` could read stale
data or race the predecessor. The second half compiles each kernel for sm_90
offline (Triton's bundled ptxas, no GPU needed) and reads the SASS: the wait
(``ACQBULK``) must precede every global memory instruction. The GPU tests
check the bits.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

import pytest
import torch
import triton

from sglang_gemma4.kernels import dependent_launch as dl
from sglang_gemma4.kernels import end_of_layer_norm as eol
from sglang_gemma4.kernels import ple_tail as pt
from sglang_gemma4.kernels import qkv_norm_rope as qnr
from sglang_gemma4.kernels import triple_rmsnorm as tri
from tests.cpu.harness import run_python


@pytest.mark.parametrize(
    "raw, mode",
    [(None, "auto"), ("", "auto"), (" Auto ", "auto"), ("0", "off"), ("off", "off"), ("1", "on"), ("true", "on"), (" ON ", "on")],
)
def test_env_modes(raw, mode):
    assert dl.mode_from_env(raw) == mode


def test_env_typo_is_an_error_that_says_what_to_use():
    with pytest.raises(ValueError, match="use 1 .*0 .*auto"):
        dl.mode_from_env("enabled")


def test_a_typo_in_the_environment_warns_and_keeps_auto():
    r = run_python(
        "from sglang_gemma4.kernels import dependent_launch as d; print('MODE', d.mode())",
        env={"SGLANG_GEMMA4_PDL": "enabled"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "MODE auto" in r.stdout
    assert "SGLANG_GEMMA4_PDL='enabled': use 1" in r.stderr


def test_dependent_launch_block_sets_and_restores():
    before = dl.mode()
    with dl.dependent_launch("on"):
        assert dl.mode() == "on"
        with pytest.raises(RuntimeError):
            with dl.dependent_launch("off"):
                assert dl.mode() == "off"
                raise RuntimeError
        assert dl.mode() == "on"
    assert dl.mode() == before
    with pytest.raises(ValueError):
        with dl.dependent_launch("sometimes"):
            pass


@pytest.mark.parametrize(
    "family, rows, width, want",
    [
        ("ple_tail", 1, 1536, True),
        ("ple_tail", 128, 2560, True),
        ("ple_tail", 129, 2560, False),
        ("ple_tail", 64, 256, True),  # the gelu kernel: per-layer-input width
        ("ple_tail", 1, 4096, False),  # not a measured width
        ("post_attn", 32, 2816, True),
        ("post_attn", 33, 5376, False),
        ("post_attn", 1, 1536, False),  # PLE layers: measured slower
        ("end_of_layer", 8, 5376, True),
        ("end_of_layer", 8, 2816, False),
        ("qkv_norm_rope", 1, 2048, False),
    ],
)
def test_auto_mode_follows_the_measured_table(family, rows, width, want):
    with dl.dependent_launch("auto"):
        assert dl.wanted(family, rows, width) is want
    with dl.dependent_launch("on"):
        assert dl.wanted(family, rows, width)
    with dl.dependent_launch("off"):
        assert not dl.wanted(family, rows, width)


def test_every_family_has_a_table_entry():
    assert set(dl.AUTO_MAX_ROWS) == {"ple_tail", "post_attn", "end_of_layer", "qkv_norm_rope"}


def test_this_triton_can_launch_with_pdl():
    # triton 3.8 here, 3.6 on the GPU machine: both have launch_pdl and gdc_wait.
    assert dl.triton_supports_pdl()


def test_no_launch_arguments_off_cuda():
    with dl.dependent_launch("on"):
        assert dl.launch_kwargs(torch.zeros(2, 8), "ple_tail", 2, 8) == {}


def test_describe_names_the_mode_and_the_switch():
    for mode in dl.MODES:
        with dl.dependent_launch(mode):
            assert f"{dl.ENV}={mode}" in dl.describe()


# Each launched kernel with constexprs of a launch its table uses, and its warps.
KERNELS = [
    (pt._rmsnorm_add_row_kernel, dict(HAS_SCALE=True, ROWS=1, BLOCK=2048, ACT_EVICT="", W_EVICT=""), 8),
    (pt._rmsnorm_add_segmented_kernel, dict(HAS_SCALE=True, ROWS=2, SEG0=1024, SEG1=512, LANES=128, ACT_EVICT="", W_EVICT=""), 8),
    (pt._rmsnorm_add_looped_kernel, dict(HAS_SCALE=True, CHUNK=1024, NUM_CHUNKS=2, ACT_EVICT="", W_EVICT=""), 4),
    (pt._gelu_tanh_mul_kernel, dict(BLOCK_ROWS=4, BLOCK_COLS=256, ACT_EVICT=""), 4),
    (
        tri._triple_norm_row_kernel,
        dict(ROWS=1, SEG0=2048, SEG1=512, SEG2=256, LANES=256, MOE_OUTPUTS=True, ACT_EVICT="", PAIRED_SUMS=True),
        8,
    ),
    (tri._triple_norm_chunked_kernel, dict(CHUNK=2048, NUM_CHUNKS=3, ROLLED=False, MOE_OUTPUTS=True, ACT_EVICT="", PAIRED_SUMS=False), 8),
    (
        tri._triple_norm_segmented_kernel,
        dict(CHUNK=1024, NUM_CHUNKS=2, TAIL0=512, TAIL1=256, LANES=128, ROLLED=False, MOE_OUTPUTS=True,
             ACT_EVICT="evict_first", PAIRED_SUMS=True, PREFETCH_RES="L2"),
        4,
    ),
    (
        tri._triple_norm_persistent_kernel,
        dict(SEG0=4096, SEG1=1024, SEG2=256, LANES=256, MOE_OUTPUTS=False, ACT_EVICT="", PAIRED_SUMS=False),
        8,
    ),
    (eol._end_of_layer_norm_kernel, dict(MODE=1, ROWS=1, BLOCK_H=4096, EXPERT_ROWS=0), 16),
    (eol._end_of_layer_norm_kernel, dict(MODE=1, ROWS=1, BLOCK_H=4096, EXPERT_ROWS=8), 16),
    (
        eol._end_of_layer_norm_chunked_kernel,
        dict(MODE=1, CHUNK=1024, NUM_CHUNKS=3, UNROLL=1, REREAD_EVICT="evict_last", LAST_EVICT="evict_first",
             PREFETCH_RES="L1", PREFETCH_LANES=64),
        4,
    ),
    (eol._end_of_layer_norm_persistent_kernel, dict(MODE=1, SEG0=2048, SEG1=512, SEG2=256, LANES=256, ACT_CACHE=".cg"), 8),
    (qnr._qkv_norm_rope_kernel, dict(NUM_Q_HEADS=8, NUM_KV_HEADS=2, HEAD_DIM=256, HALF=128), 1),
]
POINTER_TYPES = {"pos_ptr": "*i64", "cache_ptr": "*fp32"}
# CCTL: a cache prefetch (kernels/prefetch.py), which must not fetch lines the previous grid still writes.
GLOBAL_MEMORY = re.compile(r"\b(LDG|STG|LD|ST|ATOMG|ATOM|RED|CCTL)\.")


def _nvdisasm() -> str | None:
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    return path if os.access(path, os.X_OK) else None


def _sm90_sass(kernel, constexprs: dict, num_warps: int) -> list[str]:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    constexprs = {**constexprs, "BF16_RNE_BY_BITS": False, "USE_PDL": True}
    signature = {}
    for p in kernel.params:
        if p.is_constexpr:
            assert p.name in constexprs, f"{kernel.__name__}: give {p.name}"
        elif p.name.endswith("_ptr"):
            signature[p.name] = POINTER_TYPES.get(p.name, "*bf16")
        else:
            signature[p.name] = "fp32" if p.name == "eps" else "i32"
    signature.update({name: "constexpr" for name in constexprs})
    src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        listing = subprocess.run([_nvdisasm(), "-c", f.name], capture_output=True, text=True, check=True).stdout
    return [line.split(";")[0] for line in listing.splitlines() if re.search(r"/\*[0-9a-f]{4}\*/", line)]


@pytest.mark.skipif(_nvdisasm() is None, reason="triton has no bundled nvdisasm here")
@pytest.mark.parametrize("kernel, constexprs, num_warps", KERNELS, ids=[k.__name__ for k, _, _ in KERNELS])
def test_kernel_waits_for_the_previous_grid_before_any_memory_access(kernel, constexprs, num_warps):
    sass = _sm90_sass(kernel, constexprs, num_warps)
    wait = [i for i, line in enumerate(sass) if "ACQBULK" in line]
    memory = [i for i, line in enumerate(sass) if GLOBAL_MEMORY.search(line)]
    assert wait and memory, "expected griddepcontrol.wait and global memory instructions in the SASS"
    assert wait[0] < memory[0], f"{sass[memory[0]]} comes before the wait"
