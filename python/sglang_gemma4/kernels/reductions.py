"""Cross-thread reductions shared by our Triton kernels."""

import triton
import triton.language as tl


@triton.jit
def _add_pairs(a0, b0, a1, b1):
    return a0 + a1, b0 + b1


@triton.jit
def paired_sums(a, b, axis: tl.constexpr):
    """The sums of ``a`` and ``b`` along ``axis`` in one reduction of the pair:
    one shared-memory round trip and barrier instead of two, the same fp32
    additions as two ``tl.sum`` (possibly in another order)."""
    return tl.reduce((a, b), axis, _add_pairs)
