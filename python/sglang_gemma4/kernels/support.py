"""Which tensors our Triton kernels may run on, shared by every kernel wrapper."""

from __future__ import annotations

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
