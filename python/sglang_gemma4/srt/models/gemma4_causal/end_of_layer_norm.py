"""Patch ``end_of_layer_norm``: the next layer's input norm folded into this layer's last kernel.

Why: a Gemma-4 layer ends by writing the whole next stream ``h`` (SGLang
0.5.23's ``ReplaceAtExit`` residual), and the next layer's attention read
starts by normalizing it (``NormQuantReadout.read`` -> ``input_layernorm``): a
launch of its own that reads ``h`` back. The layer's last kernel has ``h`` in
registers; it can write ``next_in = rmsnorm(h, w_next)`` too (of the rounded
``h``, as the separate launch reads it), one launch per layer fewer.

How (the shared hooks are in :mod:`.decoder_layer`):

* ``Gemma4TextModel.__init__`` (after): each layer learns the layer after it
  on the same pipeline rank (a weak reference, not a submodule). The last
  layer of a rank has none: its ``h`` goes to the final norm or to the next
  pipeline rank as SGLang sends it, and the receiving rank normalizes it
  itself.
* ``stage_facts``: the attention's read becomes a :class:`PrefoldedInputRead`
  around SGLang's ``NormQuantReadout`` (same declared facts); bound to a
  :class:`PrefoldedInput` of the very stream object it is handed, it returns
  the normalized input the previous layer computed, otherwise it is SGLang's
  read.
* ``forward``: when the layer's end and the next layer's norm fit the kernels
  (:mod:`sglang_gemma4.kernels.end_of_layer_norm`), the last kernel becomes

  - dense (31B): ``dense_end_of_layer_norm`` for ``gemma_rmsnorm_residual_scalar``;
  - MoE (26B-A4B, after a fused ``triple_rmsnorm`` read): ``moe_end_of_layer_norm``
    for ``gemma_dual_rmsnorm_residual_scalar``;
  - PLE (E2B/E4B, with ``ple_tail``): ``ple_end_of_layer_norm`` for ``rmsnorm_add_scale``;

  ``h`` goes through the FFN exit as before, and ``next_in`` is left for the
  next layer keyed by the identity of the tensor the exit returned: the next
  layer uses it only if that same object is its input, so anything between
  the layers that replaces the stream (a capture, a gather, another micro
  batch) gets SGLang's read instead.

Falls back to SGLang's separate norm launch: the last layer of a rank, a read
that wants a quantized input or a post-residual addition, a next norm that
rounds differently or has another eps, inputs the kernels do not take
(``supports_*``: dtype, layout, empty batch, a row too long), while
``torch.compile`` traces the model, and when the layer's own end is not the
plugin's (MoE without the fused read, PLE without ``ple_tail``).

Delete when: SGLang's layer boundary folds the next layer's input norm into the
previous layer's exit kernel for Gemma-4.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any

import torch
from sglang.kernels.ops.layernorm.gemma4_fused_ops import gemma_rmsnorm_residual_scalar
from sglang.srt.layers.layer_boundary.residual.add_norm import NormQuantReadout

from sglang_gemma4.kernels.end_of_layer_norm import (
    dense_end_of_layer_norm,
    moe_end_of_layer_norm,
    moe_expert_sum_end_of_layer_norm,
    ple_end_of_layer_norm,
    supports_dense,
    supports_moe,
    supports_moe_expert_sum,
    supports_ple,
)
from sglang_gemma4.kernels.support import patch_fused_dtypes
from sglang_gemma4.registry import active
from sglang_gemma4.srt.models.gemma4_causal.triple_rmsnorm import rounds_like_rmsnorm

PATCH_NAME = "end_of_layer_norm"
# Set on a layer's __dict__ (not a submodule): a weak reference to the next layer.
NEXT_LAYER_ATTR = "_sglang_gemma4_next_layer"


@dataclasses.dataclass(frozen=True)
class PrefoldedInput:
    """``normed = round(norm(stream))``, computed by the layer that wrote ``stream``."""

    stream: torch.Tensor
    norm: torch.nn.Module
    normed: torch.Tensor


class PrefoldedInputRead:
    """An attention read that returns a :class:`PrefoldedInput`'s ``normed`` for
    its own stream and is ``inner`` (SGLang's ``NormQuantReadout``) otherwise."""

    def __init__(self, inner: NormQuantReadout, prefolded: PrefoldedInput | None = None) -> None:
        self.inner = inner
        self.prefolded = prefolded
        # The declared facts the boundary plans with: SGLang's read's own.
        self.is_plain_norm = inner.is_plain_norm
        self.reads_before_dp_gather = inner.reads_before_dp_gather
        self.reads_after_attn_tp_gather = inner.reads_after_attn_tp_gather
        self.completing_fusions = inner.completing_fusions
        self.gathering_reads = inner.gathering_reads

    def __getattr__(self, name: str) -> Any:
        # Other attributes SGLang may read of a NormQuantReadout (fp8_input).
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def bind(self, forward_batch: Any, context: PrefoldedInput | None) -> PrefoldedInputRead:
        return PrefoldedInputRead(self.inner, context)

    def init_residual(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.inner.init_residual(hidden_states)

    def read(self, residual, norm, quant_format="", post_residual_addition=None):
        p = self.prefolded
        if (
            p is not None
            and residual is p.stream
            and norm is p.norm
            and not quant_format
            and post_residual_addition is None
        ):
            return p.normed, residual
        return self.inner.read(residual, norm, quant_format, post_residual_addition)

    def update_and_read(self, update, hidden_states, residual, norm, quant_format="", post_residual_addition=None):
        return self.inner.update_and_read(
            update, hidden_states, residual, norm, quant_format=quant_format,
            post_residual_addition=post_residual_addition,
        )


def with_prefolded_read(attn: Any) -> Any:
    """``attn`` (a stage declaration) with its read wrapped, when it is SGLang's norm read."""
    if type(attn.read) is not NormQuantReadout:
        return attn
    return dataclasses.replace(attn, read=PrefoldedInputRead(attn.read))


def link_layers(result: None, model: torch.nn.Module, *args: Any, **kwargs: Any) -> None:
    """After ``Gemma4TextModel.__init__``: each layer on this pipeline rank but the
    last learns the layer after it."""
    layers, start, end = model.layers, model.start_layer, model.end_layer
    for i in range(start, end - 1):
        layers[i].__dict__[NEXT_LAYER_ATTR] = weakref.ref(layers[i + 1])


def next_layer(layer: torch.nn.Module) -> torch.nn.Module | None:
    """The layer whose input norm ``layer`` may fold, or None."""
    if not active(PATCH_NAME) or torch.compiler.is_compiling():
        return None
    ref = layer.__dict__.get(NEXT_LAYER_ATTR)
    nxt = ref() if ref is not None else None
    if nxt is None or not isinstance(nxt.attn_boundary.declaration.read, PrefoldedInputRead):
        return None
    return nxt if rounds_like_rmsnorm(nxt.input_layernorm) else None


# id(next layer) -> what this layer left it. Consumed (popped) by the next layer.
_left: dict[int, PrefoldedInput] = {}


def leave(nxt: torch.nn.Module, stream: torch.Tensor, normed: torch.Tensor) -> None:
    _left[id(nxt)] = PrefoldedInput(stream, nxt.input_layernorm, normed)


def take(layer: torch.nn.Module, hidden_states: Any) -> PrefoldedInput | None:
    """What the previous layer left ``layer``, if ``hidden_states`` is that stream."""
    if torch.compiler.is_compiling():  # nothing is left while tracing (next_layer), and no dict to trace
        return None
    p = _left.pop(id(layer), None)
    return p if p is not None and p.stream is hidden_states else None


def _eps_match(nxt: torch.nn.Module, *eps: float) -> bool:
    want = nxt.input_layernorm.variance_epsilon
    return all(e == want for e in eps)


def _fused_dtype(t: torch.Tensor) -> bool:
    return t.dtype in patch_fused_dtypes()


def may_fold_dense(layer: torch.nn.Module, residual: torch.Tensor, nxt: torch.nn.Module) -> bool:
    """Checked before the MLP; ``residual`` stands for the MLP output (same shape and dtype)."""
    post_ff = layer.post_feedforward_layernorm
    return (
        _fused_dtype(residual)
        and rounds_like_rmsnorm(post_ff)
        and _eps_match(nxt, post_ff.variance_epsilon)
        and supports_dense(residual, post_ff.weight, residual, layer.layer_scalar, nxt.input_layernorm.weight)
    )


def fold_dense(
    layer: torch.nn.Module, mlp_out: torch.Tensor, residual: torch.Tensor, nxt: torch.nn.Module
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(h, next_in)`` by the folded kernel; ``(h, None)`` as SGLang's dense tail computes
    it when the MLP output is not what the kernel takes."""
    post_ff = layer.post_feedforward_layernorm
    w_next = nxt.input_layernorm.weight
    if supports_dense(mlp_out, post_ff.weight, residual, layer.layer_scalar, w_next):
        return dense_end_of_layer_norm(
            mlp_out, post_ff.weight, residual, layer.layer_scalar, w_next, post_ff.variance_epsilon
        )
    if (mlp_out.is_cuda or mlp_out.is_xpu) and mlp_out.dim() == 2:
        return gemma_rmsnorm_residual_scalar(
            mlp_out, post_ff.weight.data, residual, layer.layer_scalar, post_ff.variance_epsilon
        ), None
    return (post_ff(mlp_out) + residual) * layer.layer_scalar, None


def _moe_norms(layer: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    return layer.post_feedforward_layernorm_1, layer.post_feedforward_layernorm_2, layer.post_feedforward_layernorm


def may_fold_moe(layer: torch.nn.Module, nxt: torch.nn.Module, residual: torch.Tensor) -> bool:
    """Whether the MoE layer's norms and the next layer's fit the folded kernel
    (checked before the FFN runs; the inputs' own checks come in :func:`fold_moe`)."""
    norms = _moe_norms(layer)
    return (
        _fused_dtype(residual)
        and all(rounds_like_rmsnorm(n) for n in norms)
        and _eps_match(nxt, *(n.variance_epsilon for n in norms))
    )


def fold_moe(
    layer: torch.nn.Module, dense_out: torch.Tensor, moe_out: torch.Tensor, residual: torch.Tensor, nxt: torch.nn.Module
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(h, next_in)`` of a MoE layer by the folded kernel, or None. ``moe_out``
    is the experts' output ``[T, H]`` or their unsummed ``[T, top_k, H]`` rows,
    which the kernel then sums (``moe_sum_fold``)."""
    if not may_fold_moe(layer, nxt, residual):
        return None
    norms = _moe_norms(layer)
    args = (
        dense_out, norms[0].weight, moe_out, norms[1].weight, norms[2].weight, residual, layer.layer_scalar,
        nxt.input_layernorm.weight,
    )
    if moe_out.dim() == 3:
        if not supports_moe_expert_sum(*args):
            return None
        return moe_expert_sum_end_of_layer_norm(*args, norms[2].variance_epsilon)
    if not supports_moe(*args):
        return None
    return moe_end_of_layer_norm(*args, norms[2].variance_epsilon)


def fold_ple(
    layer: torch.nn.Module, projected: torch.Tensor, h: torch.Tensor, nxt: torch.nn.Module
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(h, next_in)`` of a PLE layer by the folded kernel, or None."""
    post_ple = layer.post_per_layer_input_norm
    args = (projected, post_ple.weight, h, layer.layer_scalar, nxt.input_layernorm.weight)
    if not _eps_match(nxt, post_ple.eps) or not _fused_dtype(h) or not supports_ple(*args):
        return None
    return ple_end_of_layer_norm(*args, post_ple.eps)
