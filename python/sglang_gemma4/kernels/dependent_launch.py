"""Programmatic dependent launch (PDL) for our kernels on Hopper and later GPUs: opt-in.

In a CUDA graph of a decode step, a kernel normally starts only once the kernel
before it has finished and its writes are flushed. A kernel launched with
CUDA's programmatic-stream-serialization attribute may be launched while its
predecessor still runs (as the predecessor's programs exit); it then executes
``griddepcontrol.wait``, which returns once the predecessor has completed and
its memory is visible, before it touches memory.

With ``SGLANG_GEMMA4_PDL=1`` every kernel here is launched that way and waits
as its first statement (:func:`wait_for_previous_grid`). No load or store comes
before the wait (tests/cpu/test_dependent_launch.py reads the sm_90 SASS), so
the results are the same bits as without PDL (the GPU tests compare them); only
the launch of the grid overlaps the predecessor's tail. The kernels do not
signal ``griddepcontrol.launch_dependents``, so the kernel after ours starts as
it would without PDL unless it was launched with the attribute itself.

Off by default, because what it gains depends on the layer. Measured on the
H200 (torch 2.11, triton 3.6; benchmarks/benchmark_dependent_launch.py, each
plugin kernel of a decode layer right after the cuBLAS GEMM that feeds it, us
per layer, PDL on against off): at batch 1-32, 31B dense layers 2.0-2.3
faster, 26B-A4B MoE layers 0.3-0.5 and E2B PLE layers 0.2-0.7 faster; but E4B
layers and E2B KV-shared layers 0.6-1.3 slower at every batch, every layer kind
0.8-2.6 slower at batch 512, and all but E2B PLE 0.4-1.1 slower at batch 128
(results/dependent_launch.json). A first version that also signalled
``launch_dependents`` right after the wait was worse at large batches (31B at
512: 21 us slower, 26B: 9.5). Why either version loses where it does was not
profiled. Back to back, as in the kernel benchmarks, PDL
takes 0.5-0.9 us off the three-kernel E2B PLE tail at 1-512 tokens; that
overlap does not carry over to a layer, where a GEMM sits between our kernels.

PDL also stays off where the device is older than sm_90 (no
``griddepcontrol``), where Triton's interpreter runs the kernels (CPU tests),
and inside :func:`dependent_launch` ``(False)``.

Imports torch and triton only.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

import torch
import triton
import triton.language as tl

from sglang_gemma4.kernels.support import triton_interpreting

ENV = "SGLANG_GEMMA4_PDL"
MIN_CAPABILITY = (9, 0)



def enabled_by_env(raw: str | None) -> bool:
    """``SGLANG_GEMMA4_PDL``'s value read as a switch: on for 1/true/yes/on, else off."""
    return (raw or "").strip().lower() in ("1", "true", "yes", "on")


_enabled = enabled_by_env(os.environ.get(ENV))


@triton.jit
def wait_for_previous_grid(USE_PDL: tl.constexpr):
    """With ``USE_PDL``: wait until the previous kernel has completed and its writes
    are visible. Must come before the kernel's first memory access."""
    if USE_PDL:
        tl.extra.cuda.gdc_wait()


def enabled() -> bool:
    """Whether kernels on a capable GPU are launched with PDL (``SGLANG_GEMMA4_PDL``, default off)."""
    return _enabled


def describe() -> str:
    """The setting, for the plugin's startup line."""
    if _enabled:
        return f"programmatic dependent launch on for sm_90+ ({ENV}=1)"
    return f"programmatic dependent launch off ({ENV}=1 turns it on for sm_90+)"


@contextlib.contextmanager
def dependent_launch(on: bool) -> Iterator[None]:
    """Launch with PDL (where the GPU allows) or without it inside the block; the
    setting is read at each launch, so a CUDA graph keeps the one of its capture."""
    global _enabled
    before = _enabled
    _enabled = on
    try:
        yield
    finally:
        _enabled = before


@functools.lru_cache(maxsize=None)
def _device_supports_pdl(index: int) -> bool:
    return torch.cuda.get_device_capability(index) >= MIN_CAPABILITY


def launch_kwargs(t: torch.Tensor) -> dict[str, bool]:
    """Extra launch arguments of a kernel reading ``t``: ``USE_PDL`` (the kernel's
    constexpr) and Triton's ``launch_pdl``, both True when PDL applies, else none."""
    if not _enabled or triton_interpreting() or not t.is_cuda:
        return {}
    if not _device_supports_pdl(t.device.index if t.device.index is not None else torch.cuda.current_device()):
        return {}
    return {"USE_PDL": True, "launch_pdl": True}
