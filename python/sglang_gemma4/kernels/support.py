"""Which tensors our Triton kernels may run on, shared by every kernel wrapper."""

from __future__ import annotations

import functools
import os

import torch

# Triton reads this once, when it is imported; so do we.
_INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"

FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# What the patches hand to their kernels on CUDA: the issues' scope, and the
# dtypes the GPU tests and benchmarks cover.
PATCH_CUDA_DTYPES = (torch.bfloat16, torch.float16)

# Above this many elements per row a one-program-per-row kernel would hold more
# than fits in registers; such shapes take the original path.
MAX_FUSED_ROW = 16384


def triton_interpreting() -> bool:
    """True when Triton runs kernels on CPU tensors (``TRITON_INTERPRET=1``)."""
    return _INTERPRETING


def patch_fused_dtypes() -> tuple[torch.dtype, ...]:
    """Activation dtypes a patch sends to its fused kernels: ``PATCH_CUDA_DTYPES``,
    plus fp32 under the interpreter, where the CPU tests run the tiny models in fp32."""
    return PATCH_CUDA_DTYPES + ((torch.float32,) if _INTERPRETING else ())


def triton_can_run_on(t: torch.Tensor) -> bool:
    """A CUDA tensor, or a CPU tensor while Triton's interpreter is on (the CPU tests)."""
    return t.is_cuda or (_INTERPRETING and t.device.type == "cpu")


def is_rowmajor_2d(t: torch.Tensor) -> bool:
    """2-D with unit stride along the last dim; rows may be spaced (a column slice is fine)."""
    return t.dim() == 2 and t.stride(1) == 1 and t.stride(0) >= t.shape[1]


@functools.lru_cache(maxsize=None)
def _cuda_multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def multiprocessor_count(t: torch.Tensor) -> int:
    """Streaming multiprocessors of ``t``'s CUDA device (persistent grids size
    themselves by it); 1 for a CPU tensor under the interpreter, so that a
    persistent grid there has few programs, each walking several rows."""
    if not t.is_cuda:
        return 1
    return _cuda_multiprocessors(t.device.index if t.device.index is not None else torch.cuda.current_device())
