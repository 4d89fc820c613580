"""Programmatic dependent launch (PDL) for our kernels on Hopper and later GPUs.

In a CUDA graph of a decode step, a kernel normally starts only once the kernel
before it has finished and its writes are flushed. A kernel launched with
CUDA's programmatic-stream-serialization attribute may be launched while its
predecessor still runs (as the predecessor's programs exit); it then executes
``griddepcontrol.wait``, which returns once the predecessor has completed and
its memory is visible, before it touches memory.

Every kernel here can be launched that way and then waits as its first
statement (:func:`wait_for_previous_grid`). No load or store comes before the
wait (tests/cpu/test_dependent_launch.py reads the sm_90 SASS), so the results
are the same bits as without PDL (the GPU tests compare them); only the launch
of the grid overlaps the predecessor's tail. The kernels do not signal
``griddepcontrol.launch_dependents``: the kernel after ours starts as it would
without PDL unless it was launched with the attribute itself.

Where it pays, measured on the H200 (torch 2.11, triton 3.6;
benchmarks/benchmark_dependent_launch.py: each plugin kernel of a decode layer
right after the cuBLAS GEMM that feeds it, PDL for one kernel family at a time,
three runs, us per layer against no PDL):

* the PLE tail's norm and gelu kernels: 0.5-1.3 faster at batch 1-128 in every
  E2B/E4B layer kind but one point, E2B's non-shared layers at 128 (-0.7, -0.4,
  +0.6: there every variant read slower in two of the runs); -1.0..+0.8 at 512;
* the post-attention kernel: 0.8-1.3 faster at batch 1-32 in the 26B-A4B MoE
  and 31B dense layers; -2.4..+0.1 there at 128 and 0.2-3.5 slower at 512;
  -1.7..+0.7 in PLE layers;
* the end-of-layer kernel: 0.9-1.4 faster at batch 1-32 in the 31B layer
  (-0.2..+0.8 at 128, 2.4-3.1 slower at 512); -1.9..+0.1 in the others;
* q/k/v norm + RoPE: -2.6..+0.9, mostly slower.

With every kernel launched with PDL the gains do not add up in PLE layers:
E2B KV-shared and E4B layers were 0.4-2.5 slower at every batch, while their
PLE kernels alone gained about 0.9. A first version that also signalled
``launch_dependents`` right after the wait lost up to 21 us at batch 512
(31B). Why was not profiled.

Hence the default, ``auto``: PDL exactly for the families, widths and batches
above (:data:`AUTO_MAX_ROWS`). In the third run it saved per layer 0.9-1.0 us
(26B-A4B), 2.3-2.4 (31B) and 0.6-1.1 (E2B, E4B) at batch 1-32, 0.8-1.1 in E2B
KV-shared and E4B layers at 128, and lost 0.9 in E2B's non-shared layers at
128 (results/dependent_launch.json). Where it launches nothing with PDL it
read 0.05-0.73 us slower than no PDL in the same run: the drift between the
entries of one timing run. ``SGLANG_GEMMA4_PDL=1`` launches every
kernel with PDL, ``=0`` none. Never on NVIDIA devices older than sm_90 (no
``griddepcontrol``), on ROCm, with a Triton that cannot launch with it, or
under Triton's interpreter (CPU tests).

Imports torch and triton only.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator

import torch
import triton
import triton.language as tl

from sglang_gemma4.kernels.support import triton_interpreting

ENV = "SGLANG_GEMMA4_PDL"
MODES = ("auto", "on", "off")
MIN_CAPABILITY = (9, 0)

# Kernel family -> {row width: most rows} launched with PDL in "auto" mode (the
# measurements in the module docstring). The gelu kernel's width is the
# per-layer-input dim, 256.
AUTO_MAX_ROWS: dict[str, dict[int, int]] = {
    "ple_tail": {1536: 128, 2560: 128, 256: 128},
    "post_attn": {2816: 32, 5376: 32},
    "end_of_layer": {5376: 32},
    "qkv_norm_rope": {},
}


def mode_from_env(raw: str | None) -> str:
    """``SGLANG_GEMMA4_PDL`` read as a mode: 1/true/yes/on -> "on", 0/false/no/off ->
    "off", unset, empty or "auto" -> "auto". Anything else raises ``ValueError``."""
    value = (raw or "auto").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return "on"
    if value in ("0", "false", "no", "off"):
        return "off"
    if value == "auto":
        return "auto"
    raise ValueError(f"{ENV}={raw!r}: use 1 (every kernel), 0 (none) or auto (the measured table, the default)")


try:
    _mode = mode_from_env(os.environ.get(ENV))
except ValueError as bad_value:  # a typo must not stop a server
    logging.getLogger("sglang_gemma4").warning("%s; using auto", bad_value)
    _mode = "auto"


@triton.jit
def wait_for_previous_grid(USE_PDL: tl.constexpr):
    """With ``USE_PDL``: wait until the previous kernel has completed and its writes
    are visible. Must come before the kernel's first memory access."""
    if USE_PDL:
        tl.extra.cuda.gdc_wait()


def mode() -> str:
    """The current mode: "auto" (default), "on" or "off"."""
    return _mode


def describe() -> str:
    """The setting, for the plugin's startup line."""
    what = {"auto": "where measured faster", "on": "for every kernel", "off": "off"}[_mode]
    return f"programmatic dependent launch {what} ({ENV}={_mode})"


@contextlib.contextmanager
def dependent_launch(new_mode: str) -> Iterator[None]:
    """Use ``new_mode`` ("auto", "on", "off") inside the block; the mode is read at
    each launch, so a CUDA graph keeps the one of its capture."""
    global _mode
    if new_mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {new_mode!r}")
    before = _mode
    _mode = new_mode
    try:
        yield
    finally:
        _mode = before


def wanted(family: str, rows: int, width: int) -> bool:
    """Whether the current mode launches ``family``'s kernel for ``rows`` rows of ``width`` with PDL."""
    if _mode != "auto":
        return _mode == "on"
    return rows <= AUTO_MAX_ROWS[family].get(width, -1)


@functools.lru_cache(maxsize=None)
def triton_supports_pdl() -> bool:
    """Whether the installed Triton takes ``launch_pdl`` and has ``gdc_wait`` (3.6 and
    3.8 do); without them the kernels launch as they would without PDL."""
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return False
    return "launch_pdl" in getattr(CUDAOptions, "__dataclass_fields__", {}) and hasattr(tl.extra.cuda, "gdc_wait")


@functools.lru_cache(maxsize=None)
def _device_supports_pdl(index: int) -> bool:
    # ROCm reports its own capabilities through the same call (MI300: 9.4).
    return torch.version.hip is None and torch.cuda.get_device_capability(index) >= MIN_CAPABILITY


def launch_kwargs(t: torch.Tensor, family: str, rows: int, width: int) -> dict[str, bool]:
    """Extra launch arguments of ``family``'s kernel over ``rows`` rows of ``width``
    reading ``t``: ``USE_PDL`` (the kernel's constexpr) and Triton's ``launch_pdl``,
    both True when :func:`wanted` and the GPU allows, else none."""
    if triton_interpreting() or not t.is_cuda or not wanted(family, rows, width) or not triton_supports_pdl():
        return {}
    if not _device_supports_pdl(t.device.index if t.device.index is not None else torch.cuda.current_device()):
        return {}
    return {"USE_PDL": True, "launch_pdl": True}
