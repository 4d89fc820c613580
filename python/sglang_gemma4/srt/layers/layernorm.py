"""Patch ``router_scale``: the native Gemma4RMSNorm drops the router's folded scale.

Why: ``Gemma4Router.fuse_scale`` folds ``scale * hidden_size**-0.5`` into the
weight of its ``Gemma4RMSNorm(with_scale=False)``. SGLang 0.5.23's
``Gemma4RMSNorm.forward_native`` multiplies by the weight only when
``with_scale`` is true, so every native path (CPU; ROCm, whose ``forward_hip``
calls ``forward_native``; the AMX CPU kernel, which takes the same flag) routes
on unscaled inputs: the expert choice differs from the reference model. The
CUDA path (``rmsnorm(x, weight)``) always multiplies and is right.

How: the native norm computes ``y = x * rsqrt(mean(x^2) + eps) * (w + s)`` in
fp32, rounded once to ``x.dtype``, where ``s = scale_shift`` if ``with_scale``
else 0. A ``with_scale=False`` norm whose weight is still all ones (the value
norm) multiplies by exactly 1.0, so its output does not change. On CPU,
``forward_cpu`` is routed to that native path for ``with_scale=False``.

Delete when: upstream's ``Gemma4RMSNorm.forward_native`` (and the CPU kernel)
apply ``weight`` regardless of ``with_scale``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sglang_gemma4.registry import Hook, Patch

_NORM = "sglang.srt.layers.layernorm.Gemma4RMSNorm"


def gemma4_rmsnorm_native(self, x: torch.Tensor) -> torch.Tensor:
    """``x * rsqrt(mean(x^2) + eps) * (weight + shift)`` in fp32, rounded to ``x.dtype``."""
    shift = self.scale_shift if self.with_scale else 0.0
    return (self._norm(x.float()) * (self.weight.float() + shift)).type_as(x)


def _forward_cpu(original: Callable, self, x: torch.Tensor) -> torch.Tensor:
    if not self.with_scale:
        return gemma4_rmsnorm_native(self, x)
    return original(self, x)


def _check() -> str | None:
    from sglang.srt.layers.layernorm import Gemma4RMSNorm

    norm = Gemma4RMSNorm(4, eps=1e-6, with_scale=False)
    for attr in ("with_scale", "scale_shift", "eps", "weight", "_norm"):
        if not hasattr(norm, attr):
            return f"Gemma4RMSNorm has no attribute {attr!r}"
    return None


PATCHES = [
    Patch(
        name="router_scale",
        summary="native Gemma4RMSNorm applies the router scale folded into its weight",
        hooks=(
            Hook(f"{_NORM}.forward_native", gemma4_rmsnorm_native, "replace", params=("self", "x")),
            Hook(f"{_NORM}.forward_cpu", _forward_cpu, "around", params=("self", "x")),
        ),
        delete_when="Gemma4RMSNorm.forward_native and forward_cpu multiply by weight when with_scale=False",
        check=_check,
    )
]
