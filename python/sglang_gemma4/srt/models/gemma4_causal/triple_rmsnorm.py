"""Patch ``triple_rmsnorm``: a MoE layer's post-attention norms in 1 launch, not 4.

Why: between the attention and the FFN GEMMs of a Gemma-4 MoE layer
(26B-A4B) SGLang 0.5.23 launches four norm kernels: the attention's output
transform ``post_attention_layernorm`` (run by the FFN read, after the
attention's TP sum), ``fused_add_rmsnorm`` with ``pre_feedforward_layernorm``
(the FFN read), then in ``_next_stream`` the router's norm (its scale folded
into the weight) and ``pre_feedforward_layernorm_2``, both of the residual.

How: :func:`stage_facts` declares, for MoE layers without per-layer embeddings,

* the attention with an identity output transform: the boundary then keeps the
  order it guarantees to an output transform (the attention's sum completes,
  then the transform, the residual update and the read; no residual joins a
  partial sum; no fused all-reduce + add + norm takes the input), while
  ``post_attention_layernorm`` itself runs inside the read's kernel;
* the FFN with :class:`PostAttentionTripleNormRead`, which runs
  :func:`~sglang_gemma4.kernels.triple_rmsnorm.post_attn_triple_rmsnorm` on the
  complete attention output: the residual (written in place, as
  ``fused_add_rmsnorm`` does), the dense MLP's input (returned as the FFN input)
  and the router's and experts' inputs (handed to the layer's forward through
  the read's per-call context, a :class:`TripleNormCall`).

:func:`forward` runs such a layer: the same attention half, the FFN read with a
:class:`TripleNormCall`, then :func:`moe_stream` from the three normalized inputs
(``_next_stream``'s MoE branch without its two norm launches). When the read
falls back, the layer runs SGLang's own ``_next_stream``.

The read falls back to SGLang's two launches (post-attention norm, then
``norm(h, residual)``) for: activations other than 2-D contiguous bf16/fp16 on
CUDA (not ROCm; fp32 on CPU tensors too, under Triton's interpreter, so that
the CPU tests run the kernel), an empty batch, a row wider than ``MAX_FUSED_ROW``, norms
configured to round or quantize differently (``cast_x_before_out_mul``, a
variance size override, an fp32 residual, an input-quant fusion, unequal eps, a
router norm with its own scale) and SGLang's batch-invariant mode.

Parallelism: the read runs where the boundary hands it the complete attention
output, after the TP all-reduce (tested: TP=2 over gloo on CPU). Under attention DP or context parallelism the
patch leaves the layers as SGLang declares them (logged once): those row
layouts are not covered by our tests.

Delete when: SGLang fuses the post-attention norms of Gemma-4 MoE layers itself.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import torch
from sglang.kernels.ops.layernorm.gemma4_fused_ops import gemma_dual_rmsnorm_residual_scalar
from sglang.srt import batch_invariant_ops
from sglang.srt.layers.layer_boundary import SumGroup
from sglang.srt.layers.layer_boundary.output import OutputTransform
from sglang.srt.layers.layer_boundary.residual import batch as residual_batch
from sglang.srt.runtime_context import get_parallel

from sglang_gemma4.kernels.support import patch_fused_dtypes
from sglang_gemma4.kernels.triple_rmsnorm import post_attn_triple_rmsnorm, supports
from sglang_gemma4.registry import Hook, Patch

logger = logging.getLogger("sglang_gemma4")

_LAYER = "sglang.srt.models.gemma4_causal.Gemma4DecoderLayer"

# ROCm tensors are "cuda" tensors too, but SGLang runs other norm kernels there
# (aiter, forward_native) and the kernel is untested on it.
_ON_ROCM = torch.version.hip is not None


@dataclasses.dataclass
class TripleNormCall:
    """One FFN read of ``layer``: filled with the router's and the experts'
    inputs when the read runs fused, left ``None`` when it falls back."""

    layer: torch.nn.Module
    router_in: torch.Tensor | None = None
    moe_in: torch.Tensor | None = None


def _rounds_like_rmsnorm(norm: torch.nn.Module) -> bool:
    """An ``RMSNorm`` computing ``round(x * rsqrt(mean(x^2) + eps) * w)`` (with a
    fused add, ``round(x + residual)`` as the new residual), as the kernel does."""
    return (
        norm.variance_size_override is None
        and not norm.cast_x_before_out_mul
        and not norm.fp32_residual
        and norm.override_orig_dtype is None
        and getattr(norm, "_quant_linear", None) is None
    )


def fused_read_applies(layer: torch.nn.Module, pre_ff: torch.nn.Module) -> bool:
    """Whether ``layer``'s norms compute what the kernel computes (shapes aside)."""
    post_attn, pre_ff_2, router_norm = (
        layer.post_attention_layernorm,
        layer.pre_feedforward_layernorm_2,
        layer.router.norm,
    )
    if _ON_ROCM or batch_invariant_ops.is_batch_invariant_mode_enabled():
        return False
    if not all(_rounds_like_rmsnorm(n) for n in (post_attn, pre_ff, pre_ff_2)):
        return False
    # with_scale=False: forward_cuda is rmsnorm(x, weight), weight = folded router scale.
    if router_norm.with_scale:
        return False
    eps = post_attn.variance_epsilon
    return pre_ff.variance_epsilon == eps and pre_ff_2.variance_epsilon == eps and router_norm.eps == eps


class PostAttentionTripleNormRead:
    """The FFN read of a Gemma-4 MoE layer (a ``ResidualReadout``).

    ``update_and_read(update, h, residual, pre_ff)`` with ``h`` the complete
    attention output returns ``(dense_in, r)`` as SGLang's transformed read does:
    ``s = rmsnorm(h, w_post_attn) + residual``, ``r = round(s)``, ``dense_in =
    rmsnorm(s, w_pre_ff)`` (``fused_add_rmsnorm``); when
    bound to a :class:`TripleNormCall` and the inputs allow, in one kernel that
    also leaves ``router.norm(r)`` and ``pre_feedforward_layernorm_2(r)`` in the
    call. ``post_attention_layernorm`` is None in declarations built from the
    config alone (``make_pp_layers``' neighbour facts), which are never run.
    """

    # The residual update and the post-attention norm run inside the read: no
    # kernel that adds and normalizes, and no read of an already-written stream,
    # may take its place (the same facts as SGLang's read after a transform).
    is_plain_norm = False
    reads_before_dp_gather = False
    reads_after_attn_tp_gather = False
    completing_fusions = ()
    gathering_reads = ()

    def __init__(self, post_attention_layernorm: torch.nn.Module | None, call: TripleNormCall | None = None) -> None:
        self.post_attention_layernorm = post_attention_layernorm
        self.call = call

    def bind(self, forward_batch: Any, context: TripleNormCall | None) -> PostAttentionTripleNormRead:
        """This read for one call; ``context`` is None when SGLang's forward runs the layer."""
        return PostAttentionTripleNormRead(self.post_attention_layernorm, context)

    def init_residual(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states

    def read(self, residual, norm, quant_format="", post_residual_addition=None):
        raise NotImplementedError(
            "the post-attention triple-norm read needs the attention output itself; "
            "a stream written before the read has lost it"
        )

    def update_and_read(
        self,
        update: Any,
        hidden_states: torch.Tensor,
        residual: torch.Tensor | None,
        norm: torch.nn.Module,
        quant_format: str = "",
        post_residual_addition: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None or not update.is_plain_add or quant_format or post_residual_addition is not None:
            raise NotImplementedError(
                "the post-attention triple-norm read takes a plain residual add, no quantized "
                "input and no post-residual addition"
            )
        if hidden_states.shape[0] == 0:
            return hidden_states, residual
        if self.call is not None and fused_read_applies(self.call.layer, norm):
            fused = self._fused(self.call.layer, hidden_states, residual, norm)
            if fused is not None:
                return fused
        return norm(self.post_attention_layernorm(hidden_states), residual)

    def _fused(
        self, layer: torch.nn.Module, attn_out: torch.Tensor, residual: torch.Tensor, pre_ff: torch.nn.Module
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        router = layer.router
        if not router._scale_fused:
            # Gemma4Router.forward folds its scale into the norm weight on first use.
            router.fuse_scale()
        weights = (
            self.post_attention_layernorm.weight.data,
            pre_ff.weight.data,
            router.norm.weight.data,
            layer.pre_feedforward_layernorm_2.weight.data,
        )
        if not supports(attn_out, residual, weights, dtypes=patch_fused_dtypes()):
            return None
        r, dense_in, self.call.router_in, self.call.moe_in = post_attn_triple_rmsnorm(
            attn_out, residual, *weights, pre_ff.variance_epsilon, residual_out=residual
        )
        return dense_in, r


def _normed_inside_the_ffn_read(hidden_states: torch.Tensor) -> torch.Tensor:
    """The attention's output transform: the identity, because
    ``post_attention_layernorm`` runs inside :class:`PostAttentionTripleNormRead`."""
    return hidden_states


_skip_logged = False


def declares_triple_norm_read(config: Any) -> bool:
    """MoE layers without per-layer embeddings, outside attention DP and CP."""
    global _skip_logged
    if not getattr(config, "enable_moe_block", False):
        return False
    if (getattr(config, "hidden_size_per_layer_input", None) or 0) > 0:
        return False
    parallel = get_parallel()
    if parallel.attn_dp_size > 1 or parallel.attn_cp_size > 1:
        if not _skip_logged:
            logger.warning(
                "triple_rmsnorm: MoE layers keep SGLang's four norm launches under attention DP (%d) "
                "or attention CP (%d): the fused read is tested with TP only",
                parallel.attn_dp_size,
                parallel.attn_cp_size,
            )
            _skip_logged = True
        return False
    return True


def stage_facts(original: Callable, cls: type, config: Any, layer_id: int, *, post_attention_layernorm=None):
    """Gemma4DecoderLayer.stage_facts, with the triple-norm FFN read for MoE layers."""
    attn, ffn = original(cls, config, layer_id, post_attention_layernorm=post_attention_layernorm)
    if not declares_triple_norm_read(config) or not attn.update.is_plain_add:
        return attn, ffn
    return (
        dataclasses.replace(attn, output_transform=OutputTransform(_normed_inside_the_ffn_read)),
        dataclasses.replace(ffn, read=PostAttentionTripleNormRead(post_attention_layernorm)),
    )


def moe_stream(
    layer: torch.nn.Module,
    dense_in: torch.Tensor,
    call: TripleNormCall,
    residual: torch.Tensor,
    forward_batch: Any,
) -> torch.Tensor:
    """``_next_stream``'s MoE branch for a layer without per-layer embeddings,
    from the three normalized inputs the fused read left: dense MLP and experts
    (each part's TP sum completed), then
    ``(post_ff(post_ff_1(dense) + post_ff_2(moe)) + residual) * layer_scalar``
    in SGLang's fused kernel on CUDA, eagerly elsewhere, as SGLang does."""
    boundary = layer.ffn_boundary
    dense_out = boundary.sum_part(layer.mlp(dense_in), forward_batch, SumGroup.TP)
    router_logits, _ = layer.router.proj(call.router_in)
    moe_out = boundary.sum_part(layer.moe(call.moe_in, router_logits), forward_batch, SumGroup.MOE_OUTPUT)
    norm_1, norm_2, norm_out = (
        layer.post_feedforward_layernorm_1,
        layer.post_feedforward_layernorm_2,
        layer.post_feedforward_layernorm,
    )
    if (dense_out.is_cuda or dense_out.is_xpu) and dense_out.dim() == 2:
        return gemma_dual_rmsnorm_residual_scalar(
            dense_out,
            norm_1.weight.data,
            moe_out,
            norm_2.weight.data,
            norm_out.weight.data,
            residual,
            layer.layer_scalar,
            norm_1.variance_epsilon,
            norm_2.variance_epsilon,
            norm_out.variance_epsilon,
        )
    combined = norm_1(dense_out) + norm_2(moe_out)
    return (norm_out(combined) + residual) * layer.layer_scalar


def forward(
    original: Callable[..., torch.Tensor],
    self: torch.nn.Module,
    positions: torch.Tensor,
    hidden_states: torch.Tensor,
    per_layer_input: torch.Tensor | None,
    forward_batch: Any,
    capture_output=None,
    **kwargs,
) -> torch.Tensor:
    """Gemma4DecoderLayer.forward for a layer declared with the triple-norm read;
    other layers go to ``original``."""
    if not isinstance(self.ffn_boundary.declaration.read, PostAttentionTripleNormRead):
        return original(self, positions, hidden_states, per_layer_input, forward_batch, capture_output, **kwargs)
    hidden_states = self.attn_boundary.prepare(hidden_states, forward_batch, capture=capture_output)
    hidden_states = self.self_attn(positions=positions, hidden_states=hidden_states, forward_batch=forward_batch)
    hidden_states = self.attn_boundary.finish(hidden_states, forward_batch)
    call = TripleNormCall(self)
    hidden_states = self.ffn_boundary.prepare(hidden_states, forward_batch, read_context=call)
    residual = residual_batch.written_residual(forward_batch)
    if call.router_in is None:
        hidden_states = self._next_stream(hidden_states, residual, per_layer_input, forward_batch)
    else:
        hidden_states = moe_stream(self, hidden_states, call, residual, forward_batch)
    return self.ffn_boundary.finish(hidden_states, forward_batch)


def _check() -> str | None:
    from sglang.srt.layers.layernorm import Gemma4RMSNorm, RMSNorm
    from sglang.srt.models.gemma4_causal import Gemma4Router

    norm = RMSNorm(4)
    for attr in ("weight", "variance_epsilon", "variance_size_override", "cast_x_before_out_mul",
                 "fp32_residual", "override_orig_dtype"):
        if not hasattr(norm, attr):
            return f"RMSNorm has no attribute {attr!r}"
    router_norm = Gemma4RMSNorm(4, with_scale=False)
    for attr in ("weight", "eps", "with_scale"):
        if not hasattr(router_norm, attr):
            return f"Gemma4RMSNorm has no attribute {attr!r}"
    if not hasattr(Gemma4Router, "fuse_scale"):
        return "Gemma4Router has no fuse_scale"
    return None


PATCHES = [
    Patch(
        name="triple_rmsnorm",
        summary="26B-A4B MoE layers: post-attention norm + add + 3 norms, 4 launches -> 1 Triton kernel",
        hooks=(
            Hook(f"{_LAYER}.stage_facts", stage_facts, "around", params=("cls", "config", "layer_id",
                                                                          "post_attention_layernorm")),
            Hook(
                f"{_LAYER}.forward",
                forward,
                "around",
                params=("self", "positions", "hidden_states", "per_layer_input", "forward_batch", "capture_output"),
            ),
        ),
        delete_when="SGLang fuses Gemma4DecoderLayer's post-attention norms of MoE layers itself",
        check=_check,
    )
]
