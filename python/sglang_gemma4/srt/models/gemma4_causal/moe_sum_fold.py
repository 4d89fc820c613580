"""Patch ``moe_sum_fold``: the MoE's top-k expert sum folded into the end-of-layer kernel.

Why: SGLang 0.5.23's Triton MoE runner ends every MoE layer's experts with a
launch of its own, the top-k sum (``moe_combine_topk``: ``moe_sum_reduce_triton``
up to 32 tokens on sm_90+) that reads the routed-weighted ``[T, top_k, H]``
expert rows and writes their sum ``[T, H]``; the layer's last kernel (the
plugin's ``end_of_layer_norm``) then reads that sum back. At decode sizes the
launch is most of its cost: one per MoE layer, 30 per 26B-A4B decode step.

How: the plugin's MoE branch (:func:`.triple_rmsnorm.moe_branches`) asks
:func:`experts_output` for the experts' output. Where the layer's experts run
SGLang's plain unquantized Triton path (:func:`deferral_problem`: FusedMoE with
``UnquantizedFusedMoEMethod`` on the triton runner, TP = EP = 1, a runner
config this call reproduces) and the batch has at most :data:`MAX_TOKENS`
tokens, it runs ``Gemma4MoE``'s own routing and then SGLang's
``fused_experts_impl(..., defer_sum=True)``: the upstream contract SGLang's
Beam model uses, which returns the bf16/fp16 ``[T, top_k, H]`` rows with the
routing weights applied in GEMM2 and leaves the fp32 sum, the routed scale
(1 for Gemma-4) and any TP reduction to the caller. Same GEMM configs and
kernels as the runner's own call (``fused_experts`` -> ``fused_experts_impl``
with the layer's ``MoeRunnerConfig``), so the rows are the bits SGLang sums.
The end-of-layer kernel (``moe_expert_sum_end_of_layer_norm``) then sums each
token's rows in fp32 in routing order and rounds, as ``moe_sum_reduce_triton``
does, before the layer's norms: one launch instead of two.

Opt-in (``SGLANG_GEMMA4_MOE_SUM_FOLD=1``): its kernel and SGLang's deferred
path have run only on CPU so far (Triton's interpreter; SGLang's
``fused_experts_impl`` itself in fp16), not yet on a GPU.

Needs ``triple_rmsnorm`` (the MoE branch it runs in) and ``end_of_layer_norm``
(the kernel that sums); without either, or on the last layer of a pipeline
rank (no next layer to fold), the experts run as SGLang runs them. If the rows
were taken but the fold then does not apply, SGLang's own combine sums them
(:func:`sum_expert_rows`).

Delete when: SGLang's Gemma-4 MoE layer hands its experts' rows to the layer's
exit kernel itself (for example through the layer boundary's ``may_defer_sum``).
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch

from sglang_gemma4.kernels.end_of_layer_norm import EXPERT_SUM_FOLD_MAX_TOKENS as MAX_TOKENS
from sglang_gemma4.kernels.support import FUSED_DTYPES

PATCH_NAME = "moe_sum_fold"
# Opt-in until its kernel and SGLang's deferred Triton path have run on a GPU
# (see the README); then on by default like the other kernels.
OPT_IN_ENV = "SGLANG_GEMMA4_MOE_SUM_FOLD"
_ACTIVATIONS = ("gelu", "gelu_tanh")
logger = logging.getLogger("sglang_gemma4")
# deferral_problem reasons already warned about in this process.
_warned: set[str] = set()


def check() -> str | None:
    """Why SGLang's MoE code is not what this patch was written against, or None."""
    from sglang.srt.layers.moe.fused_moe_triton.layer import FusedMoE  # noqa: F401
    from sglang.srt.layers.moe.moe_runner.triton_utils import fused_moe
    from sglang.srt.layers.moe.topk import TopKOutputChecker  # noqa: F401
    from sglang.srt.layers.quantization.unquant import UnquantizedFusedMoEMethod  # noqa: F401

    params = inspect.signature(fused_moe.fused_experts_impl).parameters
    missing = [p for p in ("defer_sum", "filter_expert", "gate_up_interleaved") if p not in params]
    if missing:
        return f"fused_experts_impl has no parameter(s) {', '.join(missing)}"
    if not callable(getattr(fused_moe, "moe_combine_topk", None)):
        return "triton_utils.fused_moe.moe_combine_topk is gone"
    return None


def deferral_problem(experts: Any) -> str | None:
    """Why ``experts`` (a ``Gemma4MoE.experts``) cannot hand over unsummed rows, or None."""
    from sglang.srt.layers.moe.fused_moe_triton.layer import FusedMoE
    from sglang.srt.layers.quantization.unquant import UnquantizedFusedMoEMethod
    from sglang.srt.runtime_context import get_parallel

    if type(experts) is not FusedMoE:
        return f"experts are {type(experts).__name__}, not SGLang's FusedMoE"
    method = experts.quant_method
    if type(method) is not UnquantizedFusedMoEMethod:
        return f"experts use {type(method).__name__} (quantized)"
    backend = experts.runner_backend
    if backend is None or not backend.is_triton():
        return f"MoE runner backend is {backend}, not triton"
    other_library = ("use_flashinfer_cutlass", "use_flashinfer_trtllm_moe", "w13_swiglu_interleaved")
    if getattr(method, "_aiter_runner", None) is not None or any(getattr(method, f, False) for f in other_library):
        return "the unquantized method runs another kernel library"
    runner = getattr(method, "runner", None)
    if runner is None or getattr(runner, "lora_enabled", False):
        return "no runner, or MoE LoRA is enabled"
    if getattr(experts, "_dwdp_bound", False):
        return "experts are bound to DWDP prefetching"
    if experts.moe_tp_size != 1 or experts.moe_ep_size != 1 or get_parallel().tp_size != 1:
        return "TP or EP > 1: the expert sum must come before the all-reduce"
    if getattr(experts, "w13_weight_bias", None) is not None or getattr(experts, "w2_weight_bias", None) is not None:
        return "experts have biases"
    cfg = runner.config
    if cfg.activation not in _ACTIVATIONS or not cfg.is_gated:
        return f"activation {cfg.activation!r} (gated={cfg.is_gated})"
    if cfg.routed_scaling_factor not in (None, 1.0) or cfg.apply_router_weight_on_input:
        return "routed scaling or routing weights on the input"
    if cfg.no_combine or cfg.gemm1_alpha is not None or cfg.gemm1_clamp_limit is not None or cfg.swiglu_limit is not None:
        return "a runner config the deferred call does not reproduce"
    if cfg.num_experts is None or cfg.num_experts != cfg.num_local_experts:
        return "the runner filters experts"
    return None


def _may_defer(experts: Any, hidden_states: torch.Tensor) -> bool:
    from sglang.srt.model_executor.runner_backend_utils.tc_piecewise_cuda_graph import (
        is_in_tc_piecewise_cuda_graph,
    )

    return (
        on_triton_moe_device(hidden_states)
        and hidden_states.dtype in FUSED_DTYPES
        and hidden_states.dim() == 2
        and hidden_states.is_contiguous()
        and 0 < hidden_states.shape[0] <= MAX_TOKENS
        and not torch.compiler.is_compiling()
        and not is_in_tc_piecewise_cuda_graph()
        and _experts_defer(experts)
    )


def _experts_defer(experts: Any) -> bool:
    """Whether the experts can hand over their rows; the first time a reason
    says no, one warning (the patch is on, so its user expects it to act)."""
    problem = deferral_problem(experts)
    if problem is not None and problem not in _warned:
        _warned.add(problem)
        logger.warning("patch %s: MoE layers keep SGLang's top-k sum: %s", PATCH_NAME, problem)
    return problem is None


def on_triton_moe_device(t: torch.Tensor) -> bool:
    """SGLang's Triton MoE path runs on CUDA (the CPU has its native MoE)."""
    return t.is_cuda


def run_deferred_experts(experts: Any, hidden_states: torch.Tensor, topk_weights, topk_ids) -> torch.Tensor:
    """SGLang's ``fused_experts_impl`` with ``defer_sum``, with the arguments its
    runner passes for this layer (``fused_experts`` of an unquantized layer,
    :func:`deferral_problem` having ruled the others out)."""
    from sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe import fused_experts_impl

    cfg = experts.quant_method.runner.config
    return fused_experts_impl(
        hidden_states,
        experts.w13_weight,
        experts.w2_weight,
        topk_weights,
        topk_ids,
        inplace=False,
        activation=cfg.activation,
        is_gated=cfg.is_gated,
        filter_expert=False,
        gate_up_interleaved=cfg.gate_up_interleaved,
        defer_sum=True,
    )


def experts_output(moe: Any, hidden_states: torch.Tensor, router_logits: torch.Tensor, defer: bool) -> torch.Tensor:
    """``Gemma4MoE.forward``: ``[T, H]``; with ``defer`` and where the experts
    allow it, their unsummed ``[T, top_k, H]`` rows instead."""
    if not (defer and _may_defer(moe.experts, hidden_states)):
        return moe(hidden_states, router_logits)
    from sglang.srt.layers.moe.topk import TopKOutputChecker

    topk_output = moe.topk(hidden_states, router_logits)
    if not TopKOutputChecker.format_is_standard(topk_output):
        # As Gemma4MoE.forward continues.
        return moe.experts(hidden_states, topk_output).view(hidden_states.shape)
    return run_deferred_experts(moe.experts, hidden_states, topk_output.topk_weights, topk_output.topk_ids)


def sum_expert_rows(expert_rows: torch.Tensor) -> torch.Tensor:
    """``[T, H]``: the rows summed by SGLang's own combine (routed scale 1)."""
    from sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe import moe_combine_topk

    out = torch.empty(
        (expert_rows.shape[0], expert_rows.shape[2]), dtype=expert_rows.dtype, device=expert_rows.device
    )
    return moe_combine_topk(expert_rows, out, None)
