"""Cache prefetches of a row, for kernels that read it only after a reduction.

A prefetch asks the memory system to bring a line into a cache level without
holding its data in a register. A kernel that walks a row in passes and first
reads a tensor after its first reduction (the triple norm's residual) can ask
for that tensor's lines at the start instead, so that the DRAM trip overlaps
the first pass instead of following it.

NVIDIA only (PTX ``prefetch.global.L1`` / ``.L2``): the launchers compile
``LEVEL=""`` (no prefetch) under Triton's interpreter, which cannot run PTX
(:func:`prefetch_level`). A prefetch never changes what a kernel computes.

Imports torch and triton only.
"""

from typing import Protocol

import triton
import triton.language as tl

from sglang_gemma4.kernels.support import triton_interpreting

PREFETCH_LEVELS = ("", "L1", "L2")


class _Launch(Protocol):
    """What :func:`prefetch_level` reads of a kernel's launch tuple."""

    kernel: str
    prefetch: str


def prefetch_level(launch: _Launch, kernel: str) -> str:
    """The cache level to compile ``launch.prefetch`` with: "" under Triton's
    interpreter, else the launch's own. Raises ``ValueError`` unless it is one
    of ``PREFETCH_LEVELS`` and set only on a launch of ``kernel``, the kernel
    that takes the option."""
    if launch.prefetch not in PREFETCH_LEVELS or (launch.prefetch and launch.kernel != kernel):
        raise ValueError(f"prefetch is one of {PREFETCH_LEVELS}, and only for the {kernel} kernel: {launch}")
    return "" if triton_interpreting() else launch.prefetch


@triton.jit
def prefetch_lines(ptr, n, MAX_N: tl.constexpr, LANES: tl.constexpr, LEVEL: tl.constexpr):
    """Prefetch the ``n`` (at most ``MAX_N``) elements at ``ptr`` into ``LEVEL``
    ("L1", "L2"; "": nothing): one prefetch per 128-byte line, issued by ``LANES``
    lanes (the lanes past the row repeat its last element, so none reaches past it)."""
    if LEVEL != "":
        PER_LINE: tl.constexpr = 1024 // ptr.dtype.element_ty.primitive_bitwidth  # a 128-byte line
        lanes = tl.arange(0, LANES)
        for i in tl.static_range((MAX_N + LANES * PER_LINE - 1) // (LANES * PER_LINE)):
            line_ptr = ptr + tl.minimum((i * LANES + lanes) * PER_LINE, n - 1)
            if LEVEL == "L1":
                tl.inline_asm_elementwise(
                    "prefetch.global.L1 [$1];", "=r,l", [line_ptr], dtype=tl.int32, is_pure=False, pack=1
                )
            else:
                tl.inline_asm_elementwise(
                    "prefetch.global.L2 [$1];", "=r,l", [line_ptr], dtype=tl.int32, is_pure=False, pack=1
                )


def prefetch_lanes(n: int, itemsize: int) -> int:
    """Lanes that cover a row of ``n`` elements with one prefetch per 128-byte line each."""
    return triton.next_power_of_2(triton.cdiv(n * itemsize, 128))
