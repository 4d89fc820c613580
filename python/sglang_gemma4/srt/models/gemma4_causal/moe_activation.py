"""Patch ``moe_gelu_tanh``: Gemma-4's MoE experts use tanh-GELU, as the reference model does.

Why: transformers' Gemma-4 experts apply ``hidden_activation``
(``gelu_pytorch_tanh``): ``down(gelu_tanh(gate(x)) * up(x))``. SGLang 0.5.23's
``Gemma4MoE`` gives its experts the default ``activation="gelu"``
(models/gemma4_causal.py:236), which its CUDA/ROCm triton runner maps to the
erf GELU kernel (triton_utils/fused_moe.py:836-858 -> elementwise/activation.cuh
``kGELU``), and so does the torch.compile MoE path used by
``--enable-torch-compile`` at batch size 1 (fused_moe_native.py:41, ``F.gelu``).
Only the eager CPU path gets tanh, because ``GeluAndMul()`` defaults to it. The
two GELUs differ by up to 4.7e-4 (|x| ~ 2.7); rounded to bf16 they differ for
9% of standard-normal inputs, so every 26B-A4B MoE layer computes a slightly
different function than the checkpoint was trained with. SGLang's own
``gemma4_diffusion`` already passes ``"gelu_tanh"`` to the same class.

How: after ``Gemma4MoE.__init__`` has built its experts with ``"gelu"``, the
layer's shared ``MoeRunnerConfig`` (read at run time by the quant method, its
runner and the native paths) is switched to ``"gelu_tanh"`` where every
path the layer can take computes tanh-GELU for that name (:func:`plan_activation`):
unquantized experts on the triton runner (CUDA, ROCm, MUSA) or on SGLang's
native paths. The two native paths reject ``"gelu_tanh"`` upstream, so they are
hooked to compute it here (:func:`gelu_tanh_experts_grouped`, eager;
:func:`gelu_tanh_experts_gathered`, torch.compile). Paths where ``"gelu_tanh"``
is rejected or not verified keep ``"gelu"`` with one warning per reason:
XPU (``forward_xpu`` asserts silu/gelu/relu2), the AMX CPU kernel, quantized
experts, and the flashinfer / aiter / deep_gemm / triton_kernels / other
runners. On Ascend ``"gelu"`` already runs tanh-GELU (``NPUGeluAndMul``).

Delete when: ``Gemma4MoE`` in gemma4_causal.py passes ``"gelu_tanh"`` (from
``config.hidden_activation``) and SGLang's native MoE paths accept it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from sglang_gemma4.registry import Hook, Patch

logger = logging.getLogger("sglang_gemma4")

_MOE = "sglang.srt.models.gemma4_causal.Gemma4MoE"
_NATIVE = "sglang.srt.layers.moe.fused_moe_native"
# transformers' name for tanh-GELU, and SGLang's MoE activation string for it.
_REFERENCE_ACTIVATION = "gelu_pytorch_tanh"
GELU_TANH = "gelu_tanh"

_warned: set[str] = set()


@dataclasses.dataclass(frozen=True)
class ActivationPlan:
    """What a Gemma-4 MoE layer's experts are configured with, and why."""

    activation: str
    reason: str
    # Whether the path computes tanh-GELU with that activation (False: erf or not verified).
    matches_reference: bool


def current_platform() -> str:
    """The platform class deciding which MoE forward SGLang runs:
    ``npu``, ``xpu``, ``gpu`` (CUDA, ROCm, MUSA), ``cpu_amx`` (SGLang's CPU engine
    with AMX) or ``native`` (any other CPU: ``forward_native``)."""
    from sglang.srt.utils import cpu_has_amx_support, is_cpu, is_cuda, is_hip, is_musa, is_npu, is_xpu

    if is_npu():
        return "npu"
    if is_xpu():
        return "xpu"
    if is_cuda() or is_hip() or is_musa():
        return "gpu"
    if is_cpu() and cpu_has_amx_support():
        return "cpu_amx"
    return "native"


def plan_activation(experts: torch.nn.Module, platform: str) -> ActivationPlan:
    """The activation ``experts`` (a FusedMoE built with ``"gelu"``) should run with on ``platform``.

    ``"gelu_tanh"`` is chosen only where every forward the layer can take
    computes ``gelu_tanh(gate) * up`` for it: the triton runner on a GPU
    (``forward_cuda``; also ``forward_hip``/``forward_musa``), and the native
    paths (``forward_native``/``forward_cpu`` without AMX, and the torch.compile
    path), which this patch hooks.
    """
    from sglang.srt.layers.quantization.unquant import UnquantizedFusedMoEMethod

    config = experts.moe_runner_config
    if platform == "npu":
        return ActivationPlan("gelu", "Ascend runs NPUGeluAndMul (tanh-GELU) for 'gelu'", True)
    if platform == "xpu":
        return ActivationPlan("gelu", "XPU: forward_xpu accepts only silu/gelu/relu2", False)
    if platform == "cpu_amx":
        return ActivationPlan(
            "gelu", "AMX CPU kernel fused_experts_cpu: its GELU variant and 'gelu_tanh' support are not verified", False
        )
    quant_method = experts.quant_method
    if type(quant_method) is not UnquantizedFusedMoEMethod:
        return ActivationPlan(
            "gelu", f"quantized experts ({type(quant_method).__name__}): 'gelu_tanh' not verified on their runners", False
        )
    backend = experts.runner_backend
    if backend is None or not backend.is_triton():
        name = getattr(backend, "value", backend)
        return ActivationPlan("gelu", f"MoE runner '{name}' rejects or does not verify 'gelu_tanh'", False)
    if experts.with_bias or config.apply_router_weight_on_input or not config.is_gated:
        return ActivationPlan("gelu", "experts with bias, router weight on input or no gate: not Gemma-4's layout", False)
    return ActivationPlan(GELU_TANH, f"unquantized experts, triton runner, platform {platform}", True)


def gemma4_moe_init(
    original: Callable[..., None], self: torch.nn.Module, hidden_size: int, layer_id: int, config: Any, *args, **kwargs
) -> None:
    """``Gemma4MoE.__init__``, then the experts' activation set by :func:`plan_activation`."""
    original(self, hidden_size, layer_id, config, *args, **kwargs)
    runner_config = self.experts.moe_runner_config
    if runner_config.activation != "gelu" or getattr(config, "hidden_activation", None) != _REFERENCE_ACTIVATION:
        # Chosen by the caller (gemma4_diffusion passes "gelu_tanh" itself), or another model.
        return
    plan = plan_activation(self.experts, current_platform())
    # One object: the quant method, its MoeRunner and runner core were all
    # handed this config and read .activation when they run.
    runner_config.activation = plan.activation
    if not plan.matches_reference and plan.reason not in _warned:
        _warned.add(plan.reason)
        logger.warning(
            "Gemma-4 MoE experts keep SGLang's activation='gelu' (%s); the reference model uses tanh-GELU "
            "and this path is not known to compute it (docs/upstream-defects.md)",
            plan.reason,
        )


def gelu_tanh_experts_grouped(
    x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor
) -> torch.Tensor:
    """``out[t] = sum_k w[t,k] * W2[e] (gelu_tanh(W1[e] x_t) * W3[e] x_t)``, ``e = topk_ids[t,k]``.

    ``w13[e]`` stacks ``W1[e]`` (gate) over ``W3[e]`` (up): ``[E, 2I, H]``;
    ``w2`` is ``[E, H, I]``. Loops over the experts that received tokens. The
    GEMMs and the activation run in ``x.dtype``; the weighted sum over ``k`` in
    ``topk_weights.dtype``, rounded once to ``x.dtype`` (SGLang's eager rounding).
    """
    num_tokens, top_k = topk_ids.shape
    flat_ids = topk_ids.reshape(-1)
    expert_out = x.new_empty(flat_ids.numel(), w2.shape[1])
    for expert in flat_ids.unique().tolist():
        slots = (flat_ids == expert).nonzero().squeeze(1)
        gate, up = F.linear(x[slots // top_k], w13[expert]).chunk(2, dim=-1)
        expert_out[slots] = F.linear(F.gelu(gate, approximate="tanh") * up, w2[expert])
    weighted = expert_out.view(num_tokens, top_k, -1).to(topk_weights.dtype) * topk_weights.unsqueeze(-1)
    return weighted.sum(dim=1).to(x.dtype)


def gelu_tanh_experts_gathered(
    x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor
) -> torch.Tensor:
    """The same sum as :func:`gelu_tanh_experts_grouped`, without data-dependent
    control flow (for torch.compile): each token's ``k`` expert matrices are
    gathered. All in ``x.dtype``, routing weights included (SGLang's compile-path rounding)."""
    gate_w, up_w = w13[topk_ids].chunk(2, dim=2)
    gate = torch.einsum("th,tkih->tki", x, gate_w)
    up = torch.einsum("th,tkih->tki", x, up_w)
    expert_out = torch.einsum("tki,tkhi->tkh", F.gelu(gate, approximate="tanh") * up, w2[topk_ids])
    return torch.einsum("tkh,tk->th", expert_out, topk_weights.to(expert_out.dtype))


def moe_forward_native(
    original: Callable[..., torch.Tensor], layer: torch.nn.Module, x: torch.Tensor, topk_output: Any, moe_runner_config: Any
) -> torch.Tensor:
    """SGLang's eager native MoE, which rejects ``"gelu_tanh"``, with that activation computed here."""
    if moe_runner_config.activation != GELU_TANH:
        return original(layer, x, topk_output, moe_runner_config)
    topk_weights, topk_ids, _ = topk_output
    return gelu_tanh_experts_grouped(x, layer.w13_weight, layer.w2_weight, topk_weights, topk_ids)


def fused_moe_forward_native(original: Callable[..., Any], layer: torch.nn.Module, dispatch_output: Any) -> Any:
    """SGLang's torch.compile MoE path, which rejects ``"gelu_tanh"``, with that activation computed here."""
    if layer.moe_runner_config.activation != GELU_TANH:
        return original(layer, dispatch_output)
    from sglang.srt.layers.moe.token_dispatcher import StandardCombineInput

    topk_weights, topk_ids, _ = dispatch_output.topk_output
    out = gelu_tanh_experts_gathered(
        dispatch_output.hidden_states, layer.w13_weight, layer.w2_weight, topk_weights, topk_ids
    )
    return StandardCombineInput(hidden_states=out)


def _check() -> str | None:
    import inspect

    from sglang.srt.layers.moe.moe_runner.base import MoeRunnerConfig
    from sglang.srt.models.gemma4_causal import Gemma4MoE

    if inspect.signature(Gemma4MoE.__init__).parameters["activation"].default != "gelu":
        return "Gemma4MoE no longer defaults to activation='gelu'"
    fields = {f.name for f in dataclasses.fields(MoeRunnerConfig)}
    missing = {"activation", "apply_router_weight_on_input", "is_gated"} - fields
    if missing:
        return f"MoeRunnerConfig lost field(s) {', '.join(sorted(missing))}"
    return None


PATCHES = [
    Patch(
        name="moe_gelu_tanh",
        summary="Gemma-4 MoE experts use tanh-GELU like the reference (SGLang: erf GELU on CUDA/torch.compile)",
        hooks=(
            Hook(
                f"{_MOE}.__init__",
                gemma4_moe_init,
                "around",
                params=("self", "hidden_size", "layer_id", "config", "activation"),
            ),
            Hook(
                f"{_NATIVE}.moe_forward_native",
                moe_forward_native,
                "around",
                params=("layer", "x", "topk_output", "moe_runner_config"),
            ),
            Hook(
                f"{_NATIVE}.fused_moe_forward_native",
                fused_moe_forward_native,
                "around",
                params=("layer", "dispatch_output"),
            ),
        ),
        delete_when="Gemma4MoE passes activation='gelu_tanh' and SGLang's native MoE paths accept it",
        check=_check,
    )
]
