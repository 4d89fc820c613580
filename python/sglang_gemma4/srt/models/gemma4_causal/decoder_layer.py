"""One owner for the hooks on ``Gemma4DecoderLayer``, shared by four patches.

``triple_rmsnorm``, ``post_attn_norm_add`` (both in :mod:`.triple_rmsnorm`),
``end_of_layer_norm`` (:mod:`.end_of_layer_norm`) and ``moe_sum_fold``
(:mod:`.moe_sum_fold`) each change how a decoder layer declares its stages and
runs its forward. Each is its own patch (its
own line in the startup table, its own ``SGLANG_GEMMA4_DISABLE`` name), but
they list the same two hooks, which the registry installs once and which ask
``registry.active`` which of them are on: two ``around`` hooks on one method
would make SGLang warn, and an outer one could not reach the inner one's
kernels. ``ple_tail`` keeps its own hook on ``_next_stream``, which this
forward calls wherever the layer's tail is SGLang's.

:func:`stage_facts` declares per layer: the fused post-attention read
(``triple_rmsnorm`` for MoE layers, ``post_attn_norm_add`` for dense and PLE
layers) and the attention read that accepts a pre-normalized input
(``end_of_layer_norm``).

:func:`forward` runs a layer that any of them changes as SGLang's forward does
(attention half; FFN read; the next stream; the FFN exit), with the plugin's
kernels where they apply; any other layer runs SGLang's forward.

Delete when: all four patches are gone (see their modules).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from sglang.srt.layers.layer_boundary import SumGroup
from sglang.srt.layers.layer_boundary.residual import batch as residual_batch

from sglang_gemma4.registry import Hook, Patch, active
from sglang_gemma4.srt.models.gemma4_causal import end_of_layer_norm as eol
from sglang_gemma4.srt.models.gemma4_causal import moe_sum_fold
from sglang_gemma4.srt.models.gemma4_causal import ple_tail
from sglang_gemma4.srt.models.gemma4_causal import triple_rmsnorm as post_attn

_LAYER = "sglang.srt.models.gemma4_causal.Gemma4DecoderLayer"
_MODEL = "sglang.srt.models.gemma4_causal.Gemma4TextModel"
TRIPLE, NORM_ADD, EOL, MOE_SUM = "triple_rmsnorm", "post_attn_norm_add", eol.PATCH_NAME, moe_sum_fold.PATCH_NAME


def stage_facts(original: Callable, cls: type, config: Any, layer_id: int, *, post_attention_layernorm=None):
    """``Gemma4DecoderLayer.stage_facts`` with the reads of the active patches."""
    attn, ffn = original(cls, config, layer_id, post_attention_layernorm=post_attention_layernorm)
    if attn.update.is_plain_add:
        if active(TRIPLE) and post_attn.declares_triple_norm_read(config):
            attn, ffn = post_attn.with_fused_read(
                attn, ffn, post_attn.PostAttentionTripleNormRead(post_attention_layernorm)
            )
        elif active(NORM_ADD) and post_attn.declares_norm_add_read(config):
            attn, ffn = post_attn.with_fused_read(attn, ffn, post_attn.PostAttentionNormAddRead(post_attention_layernorm))
    if active(EOL):
        attn = eol.with_prefolded_read(attn)
    return attn, ffn


def _next_stream(
    layer: torch.nn.Module,
    hidden_states: torch.Tensor,
    call: post_attn.PostAttentionCall,
    residual: torch.Tensor,
    per_layer_input: torch.Tensor | None,
    forward_batch: Any,
    nxt: torch.nn.Module | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(h, next_in)``: the layer's next stream from the FFN input, and the next
    layer's normalized input when the end folded it (else None)."""
    if layer.enable_moe_block:
        if not call.fused or layer.has_ple:
            return layer._next_stream(hidden_states, residual, per_layer_input, forward_batch), None
        defer_sum = nxt is not None and active(MOE_SUM) and eol.may_fold_moe(layer, nxt, residual)
        dense_out, moe_out = post_attn.moe_branches(layer, hidden_states, call, forward_batch, defer_sum)
        folded = eol.fold_moe(layer, dense_out, moe_out, residual, nxt) if nxt is not None else None
        if folded is None and moe_out.dim() == 3:
            moe_out = moe_sum_fold.sum_expert_rows(moe_out)
        return folded or (post_attn.moe_end(layer, dense_out, moe_out, residual), None)
    if layer.has_ple:
        if nxt is None or not active(ple_tail.PATCH_NAME) or not ple_tail.takes_fused_tail(layer, residual, per_layer_input):
            return layer._next_stream(hidden_states, residual, per_layer_input, forward_batch), None
        projected, h = ple_tail.ple_branch(layer, hidden_states, residual, per_layer_input, forward_batch)
        return eol.fold_ple(layer, projected, h, nxt) or (ple_tail.ple_end(layer, projected, h), None)
    if nxt is None or not eol.may_fold_dense(layer, residual, nxt):
        return layer._next_stream(hidden_states, residual, per_layer_input, forward_batch), None
    mlp_out = layer.ffn_boundary.sum_part(layer.mlp(hidden_states), forward_batch, SumGroup.TP)
    return eol.fold_dense(layer, mlp_out, residual, nxt)


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
    """``Gemma4DecoderLayer.forward`` with the active patches' kernels (module docstring)."""
    fused_read = isinstance(self.ffn_boundary.declaration.read, post_attn.PostAttentionFusedRead)
    prefolded = eol.take(self, hidden_states)
    nxt = eol.next_layer(self)
    if not (fused_read or prefolded is not None or nxt is not None):
        return original(self, positions, hidden_states, per_layer_input, forward_batch, capture_output, **kwargs)
    hidden_states = self.attn_boundary.prepare(
        hidden_states, forward_batch, capture=capture_output, read_context=prefolded
    )
    hidden_states = self.self_attn(positions=positions, hidden_states=hidden_states, forward_batch=forward_batch)
    hidden_states = self.attn_boundary.finish(hidden_states, forward_batch)
    call = post_attn.PostAttentionCall(self)
    if fused_read:
        hidden_states = self.ffn_boundary.prepare(hidden_states, forward_batch, read_context=call)
    else:
        hidden_states = self.ffn_boundary.prepare(hidden_states, forward_batch)
    residual = residual_batch.written_residual(forward_batch)
    h, next_in = _next_stream(self, hidden_states, call, residual, per_layer_input, forward_batch, nxt)
    out = self.ffn_boundary.finish(h, forward_batch)
    if next_in is not None and out is h:
        eol.leave(nxt, out, next_in)
    return out


STAGE_FACTS = Hook(
    f"{_LAYER}.stage_facts", stage_facts, "around", params=("cls", "config", "layer_id", "post_attention_layernorm")
)
FORWARD = Hook(
    f"{_LAYER}.forward",
    forward,
    "around",
    params=("self", "positions", "hidden_states", "per_layer_input", "forward_batch", "capture_output"),
)
LINK_LAYERS = Hook(f"{_MODEL}.__init__", eol.link_layers, "after", params=("self", "config"))


def _check_post_attn() -> str | None:
    """What the shared forward and the fused reads use of SGLang, besides the hook targets."""
    from sglang.srt.layers.layer_boundary.residual import batch

    if not hasattr(batch, "written_residual"):
        return "layer_boundary.residual.batch.written_residual is gone"
    return post_attn.check()


def _check_moe_sum() -> str | None:
    return _check_post_attn() or moe_sum_fold.check()


PATCHES = [
    Patch(
        name=TRIPLE,
        summary="26B-A4B MoE layers: post-attention norm + add + 3 norms, 4 launches -> 1 Triton kernel",
        hooks=(STAGE_FACTS, FORWARD),
        delete_when="SGLang fuses Gemma4DecoderLayer's post-attention norms of MoE layers itself",
        check=_check_post_attn,
    ),
    Patch(
        name=NORM_ADD,
        summary="dense (31B) and PLE (E2B/E4B) layers: post-attention norm + add + pre-FFN norm, 2 launches -> 1",
        hooks=(STAGE_FACTS, FORWARD),
        delete_when="SGLang fuses Gemma4DecoderLayer's post-attention norm with fused_add_rmsnorm",
        check=_check_post_attn,
    ),
    Patch(
        name=EOL,
        summary="the next layer's input_layernorm computed by this layer's last kernel (1 launch fewer per layer)",
        hooks=(STAGE_FACTS, FORWARD, LINK_LAYERS),
        delete_when="SGLang's layer boundary folds the next layer's input norm into the previous layer's exit",
        check=_check_post_attn,  # its RMSNorm/Gemma4RMSNorm attributes are those the fold reads too
    ),
    Patch(
        name=MOE_SUM,
        summary=(
            "26B-A4B MoE layers: the experts' top-k sum done by the end-of-layer kernel "
            f"(1 launch fewer per layer, up to {moe_sum_fold.MAX_TOKENS} tokens, unquantized Triton experts, TP=EP=1)"
        ),
        hooks=(STAGE_FACTS, FORWARD),
        delete_when="SGLang's Gemma-4 MoE layer hands its experts' unsummed rows to the layer's exit kernel",
        check=_check_moe_sum,
        opt_in_env=moe_sum_fold.OPT_IN_ENV,
    ),
]
