"""Rounding to the activation dtype inside our Triton kernels, shared by every kernel.

Our kernels compute in fp32 and round where SGLang's op sequence stores a tensor.
Compiled kernels round fp32 -> bf16 to nearest even in the cast; Triton's
interpreter (the CPU tests) truncates instead. So under the interpreter, and only
there (``BF16_RNE_BY_BITS``), bf16 is rounded on the bit pattern first, NaN kept:
the CPU tests then check the rounding the GPU does.
"""

import triton
import triton.language as tl


@triton.jit
def round_to(x, act: tl.constexpr, BF16_RNE_BY_BITS: tl.constexpr):
    """fp32 ``x`` rounded to ``act`` (nearest even), returned in fp32."""
    if BF16_RNE_BY_BITS:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return tl.where(x != x, x, bits.to(tl.float32, bitcast=True))
    else:
        return x.to(act).to(tl.float32)
