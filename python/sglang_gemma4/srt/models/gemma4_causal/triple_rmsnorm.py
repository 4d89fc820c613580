"""Patches ``triple_rmsnorm`` and ``post_attn_norm_add``: a layer's post-attention norms in one launch.

Why: between the attention and the FFN GEMMs of every Gemma-4 layer SGLang
0.5.23 launches the attention's output transform ``post_attention_layernorm``
(run by the FFN read, after the attention's TP sum), then ``fused_add_rmsnorm``
with ``pre_feedforward_layernorm`` (the FFN read). A MoE layer (26B-A4B) then
runs two more norms of the residual in ``_next_stream``: the router's (its
scale folded into the weight) and ``pre_feedforward_layernorm_2``.

* ``triple_rmsnorm`` (MoE layers without per-layer embeddings): 4 launches -> 1,
  :func:`~sglang_gemma4.kernels.triple_rmsnorm.post_attn_triple_rmsnorm`.
* ``post_attn_norm_add`` (dense 31B and PLE E2B/E4B layers): 2 launches -> 1,
  :func:`~sglang_gemma4.kernels.triple_rmsnorm.post_attn_norm_add`.

How: the ``stage_facts`` hook (in :mod:`.decoder_layer`, shared by several
patches) declares, for those layers,

* the attention with an identity output transform: the boundary then keeps the
  order it guarantees to an output transform (the attention's sum completes,
  then the transform, the residual update and the read; no residual joins a
  partial sum; no fused all-reduce + add + norm takes the input), while
  ``post_attention_layernorm`` itself runs inside the read's kernel;
* the FFN with a :class:`PostAttentionFusedRead`, which runs the kernel on the
  complete attention output: the residual (written in place, as
  ``fused_add_rmsnorm`` does), the dense MLP's input (returned as the FFN input)
  and, for MoE, the router's and experts' inputs (handed to the layer's
  forward through the read's per-call context, a :class:`PostAttentionCall`).

The shared ``forward`` hook runs such a layer as SGLang does (attention half,
then the FFN read with a :class:`PostAttentionCall`); a MoE layer then runs
:func:`moe_branches` from the three normalized inputs (``_next_stream``'s MoE
branch without its two norm launches) and :func:`moe_end`. When the read falls
back, the layer runs SGLang's own ``_next_stream``.

The read falls back to SGLang's two launches (post-attention norm, then
``norm(h, residual)``) for: activations other than 2-D contiguous bf16/fp16 on
CUDA (not ROCm; fp32 on CPU tensors too, under Triton's interpreter, so that
the CPU tests run the kernel), an empty batch, a row wider than ``MAX_FUSED_ROW``, norms
configured to round or quantize differently (``cast_x_before_out_mul``, a
variance size override, an fp32 residual, an input-quant fusion, unequal eps, a
router norm with its own scale) and SGLang's batch-invariant mode.

Parallelism: the read runs where the boundary hands it the complete attention
output, after the TP all-reduce (tested: TP=2 over gloo on CPU). Under attention DP or context parallelism the
patches leave the layers as SGLang declares them (logged once): those row
layouts are not covered by our tests.

Delete when: SGLang fuses the post-attention norms of Gemma-4 layers itself
(``triple_rmsnorm``: of MoE layers; ``post_attn_norm_add``: of dense and PLE layers).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from sglang.kernels.ops.layernorm.gemma4_fused_ops import gemma_dual_rmsnorm_residual_scalar
from sglang.srt import batch_invariant_ops
from sglang.srt.layers.layer_boundary import SumGroup
from sglang.srt.layers.layer_boundary.output import OutputTransform
from sglang.srt.runtime_context import get_parallel

from sglang_gemma4.kernels.support import patch_fused_dtypes
from sglang_gemma4.kernels.triple_rmsnorm import (
    post_attn_norm_add,
    post_attn_triple_rmsnorm,
    supports,
    supports_norm_add,
)
from sglang_gemma4.srt.models.gemma4_causal import moe_sum_fold

logger = logging.getLogger("sglang_gemma4")

# ROCm tensors are "cuda" tensors too, but SGLang runs other norm kernels there
# (aiter, forward_native) and the kernel is untested on it.
_ON_ROCM = torch.version.hip is not None


@dataclasses.dataclass
class PostAttentionCall:
    """One FFN read of ``layer``: ``fused`` when the read ran the kernel; for a
    MoE layer it then also holds the router's and the experts' inputs."""

    layer: torch.nn.Module
    fused: bool = False
    router_in: torch.Tensor | None = None
    moe_in: torch.Tensor | None = None


def rounds_like_rmsnorm(norm: torch.nn.Module) -> bool:
    """An ``RMSNorm`` computing ``round(x * rsqrt(mean(x^2) + eps) * w)`` (with a
    fused add, ``round(x + residual)`` as the new residual), as the kernels do."""
    return (
        norm.variance_size_override is None
        and not norm.cast_x_before_out_mul
        and not norm.fp32_residual
        and norm.override_orig_dtype is None
        and getattr(norm, "_quant_linear", None) is None
    )


def _pair_applies(layer: torch.nn.Module, pre_ff: torch.nn.Module) -> bool:
    post_attn = layer.post_attention_layernorm
    if _ON_ROCM or batch_invariant_ops.is_batch_invariant_mode_enabled():
        return False
    return (
        rounds_like_rmsnorm(post_attn)
        and rounds_like_rmsnorm(pre_ff)
        and pre_ff.variance_epsilon == post_attn.variance_epsilon
    )


def fused_read_applies(layer: torch.nn.Module, pre_ff: torch.nn.Module) -> bool:
    """Whether MoE ``layer``'s four norms compute what the kernel computes (shapes aside)."""
    pre_ff_2, router_norm = layer.pre_feedforward_layernorm_2, layer.router.norm
    if not _pair_applies(layer, pre_ff) or not rounds_like_rmsnorm(pre_ff_2):
        return False
    # with_scale=False: forward_cuda is rmsnorm(x, weight), weight = folded router scale.
    if router_norm.with_scale:
        return False
    eps = pre_ff.variance_epsilon
    return pre_ff_2.variance_epsilon == eps and router_norm.eps == eps


class PostAttentionFusedRead:
    """The FFN read of a Gemma-4 layer whose post-attention norm runs in the read
    (a ``ResidualReadout``); subclasses say which kernel.

    ``update_and_read(update, h, residual, pre_ff)`` with ``h`` the complete
    attention output returns ``(dense_in, r)`` as SGLang's transformed read does:
    ``s = rmsnorm(h, w_post_attn) + residual``, ``r = round(s)``, ``dense_in =
    rmsnorm(s, w_pre_ff)`` (``fused_add_rmsnorm``), in one kernel when bound to a
    :class:`PostAttentionCall` and the inputs allow, else in SGLang's two launches.
    ``post_attention_layernorm`` is None in declarations built from the config
    alone (``make_pp_layers``' neighbour facts), which are never run.
    """

    # The residual update and the post-attention norm run inside the read: no
    # kernel that adds and normalizes, and no read of an already-written stream,
    # may take its place (the same facts as SGLang's read after a transform).
    is_plain_norm = False
    reads_before_dp_gather = False
    reads_after_attn_tp_gather = False
    completing_fusions = ()
    gathering_reads = ()

    def __init__(self, post_attention_layernorm: torch.nn.Module | None, call: PostAttentionCall | None = None) -> None:
        self.post_attention_layernorm = post_attention_layernorm
        self.call = call

    def bind(self, forward_batch: Any, context: PostAttentionCall | None) -> PostAttentionFusedRead:
        """This read for one call; ``context`` is None when SGLang's forward runs the layer."""
        return type(self)(self.post_attention_layernorm, context)

    def init_residual(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states

    def read(self, residual, norm, quant_format="", post_residual_addition=None):
        raise NotImplementedError(
            "the fused post-attention read needs the attention output itself; "
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
                "the fused post-attention read takes a plain residual add, no quantized "
                "input and no post-residual addition"
            )
        if hidden_states.shape[0] == 0:
            return hidden_states, residual
        if self.call is not None:
            fused = self._fused(self.call, hidden_states, residual, norm)
            if fused is not None:
                self.call.fused = True
                return fused
        return norm(self.post_attention_layernorm(hidden_states), residual)

    def _fused(
        self, call: PostAttentionCall, attn_out: torch.Tensor, residual: torch.Tensor, pre_ff: torch.nn.Module
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(dense_in, r)`` from the kernel, ``r`` written into ``residual``; None to fall back."""
        raise NotImplementedError


class PostAttentionTripleNormRead(PostAttentionFusedRead):
    """MoE layers (patch ``triple_rmsnorm``): the kernel also leaves
    ``router.norm(r)`` and ``pre_feedforward_layernorm_2(r)`` in the call."""

    def _fused(self, call, attn_out, residual, pre_ff):
        layer = call.layer
        if not fused_read_applies(layer, pre_ff):
            return None
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
        r, dense_in, call.router_in, call.moe_in = post_attn_triple_rmsnorm(
            attn_out, residual, *weights, pre_ff.variance_epsilon, residual_out=residual
        )
        return dense_in, r


class PostAttentionNormAddRead(PostAttentionFusedRead):
    """Dense and PLE layers (patch ``post_attn_norm_add``): post-attention norm,
    residual add and ``pre_feedforward_layernorm`` in one kernel."""

    def _fused(self, call, attn_out, residual, pre_ff):
        if not _pair_applies(call.layer, pre_ff):
            return None
        weights = (self.post_attention_layernorm.weight.data, pre_ff.weight.data)
        if not supports_norm_add(attn_out, residual, weights, dtypes=patch_fused_dtypes()):
            return None
        r, dense_in = post_attn_norm_add(attn_out, residual, *weights, pre_ff.variance_epsilon, residual_out=residual)
        return dense_in, r


def _normed_inside_the_ffn_read(hidden_states: torch.Tensor) -> torch.Tensor:
    """The attention's output transform: the identity, because
    ``post_attention_layernorm`` runs inside the FFN read."""
    return hidden_states


_skip_logged = False


def _tested_parallelism() -> bool:
    """Outside attention DP and CP (logged once otherwise)."""
    global _skip_logged
    parallel = get_parallel()
    if parallel.attn_dp_size > 1 or parallel.attn_cp_size > 1:
        if not _skip_logged:
            logger.warning(
                "triple_rmsnorm/post_attn_norm_add: layers keep SGLang's post-attention norm launches under "
                "attention DP (%d) or attention CP (%d): the fused read is tested with TP only",
                parallel.attn_dp_size,
                parallel.attn_cp_size,
            )
            _skip_logged = True
        return False
    return True


def declares_triple_norm_read(config: Any) -> bool:
    """MoE layers without per-layer embeddings, outside attention DP and CP."""
    if not getattr(config, "enable_moe_block", False):
        return False
    if (getattr(config, "hidden_size_per_layer_input", None) or 0) > 0:
        return False
    return _tested_parallelism()


def declares_norm_add_read(config: Any) -> bool:
    """Layers without a MoE block (dense, PLE), outside attention DP and CP."""
    return not getattr(config, "enable_moe_block", False) and _tested_parallelism()


def with_fused_read(attn: Any, ffn: Any, read: PostAttentionFusedRead) -> tuple[Any, Any]:
    """The stage declarations with ``read`` as the FFN read and the identity as
    the attention's output transform (the post-attention norm runs in ``read``)."""
    return (
        dataclasses.replace(attn, output_transform=OutputTransform(_normed_inside_the_ffn_read)),
        dataclasses.replace(ffn, read=read),
    )


def moe_branches(
    layer: torch.nn.Module, dense_in: torch.Tensor, call: PostAttentionCall, forward_batch: Any, defer_sum: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``_next_stream``'s MoE branches for a layer without per-layer embeddings,
    from the three normalized inputs the fused read left: the dense MLP's and
    the experts' outputs, each part's TP sum completed. ``defer_sum``: the
    experts' output may be their unsummed ``[T, top_k, H]`` rows
    (:func:`.moe_sum_fold.experts_output`; only at TP = EP = 1, where the
    MoE output's sum over ranks is the identity)."""
    boundary = layer.ffn_boundary
    dense_out = boundary.sum_part(layer.mlp(dense_in), forward_batch, SumGroup.TP)
    router_logits, _ = layer.router.proj(call.router_in)
    moe_out = moe_sum_fold.experts_output(layer.moe, call.moe_in, router_logits, defer_sum)
    if moe_out.dim() == 2:
        moe_out = boundary.sum_part(moe_out, forward_batch, SumGroup.MOE_OUTPUT)
    return dense_out, moe_out


def moe_end(
    layer: torch.nn.Module, dense_out: torch.Tensor, moe_out: torch.Tensor, residual: torch.Tensor
) -> torch.Tensor:
    """``(post_ff(post_ff_1(dense) + post_ff_2(moe)) + residual) * layer_scalar``
    in SGLang's fused kernel on CUDA, eagerly elsewhere, as ``_next_stream`` does."""
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


def check() -> str | None:
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
