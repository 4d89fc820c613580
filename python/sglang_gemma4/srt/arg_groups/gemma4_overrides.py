"""Server-argument defaults for Gemma-4, applied while SGLang resolves its server args.

Both patches act in the launcher: SGLang's ``load_plugins()`` runs there before
``ServerArgs.resolve_once()`` (DESIGN.md sections 2 and 3), and the resolved
arguments travel to the scheduler processes with their declarations.

Patch ``moe_swa_ratio`` -- KV-pool split for MoE Gemma-4.

Why: SGLang sizes the two KV pools of a hybrid sliding-window model as
``full_tokens = budget / (full_bytes + ratio * swa_bytes)`` and
``swa_tokens = ratio * full_tokens`` (``HybridSWAPoolConfigurator``), with
``ratio = --swa-full-tokens-ratio``, default 0.8. 25 of the 30 layers of
26B-A4B are sliding-window, so at 0.8 the sliding-window rows take ~89% of
every token's bytes and the full-attention pool, which long prompts need,
starves: the original series measured ~594k full-pool tokens at 0.8 against
~2.1M at 0.15 on one 180 GB GPU, and -16% median TTFT on 8k-input
summarisation. On dense 31B and E4B the same series found 0.15 harmful (their
weights leave less room, and the sliding-window pool then blocks admission).

How: for ``Gemma4ForCausalLM`` and ``Gemma4ForConditionalGeneration`` with
``num_experts > 0`` (and ``enable_moe_block``) in the text config, declare
``swa_full_tokens_ratio = 0.15`` when the user did not set it. The declaration
comes from :func:`moe_swa_full_tokens_ratio_override`, a provider with SGLang's
``register_model_override`` contract, appended by an ``around`` hook on
``collect_model_override_declarations`` so that ``SGLANG_GEMMA4_DISABLE``, the
version pin and the status table govern it like every other patch (a provider
registered at import time could not be turned off). SGLang then validates and
stashes it exactly like its own model overrides (``model_hook.py:233-237``).
Which of the three outcomes applied (MoE default, dense untouched, user value
kept) is logged. A config whose expert fields cannot be read leaves SGLang's
default in place with one warning.

Side effect, accepted on purpose: like DeepSeek-V4's own 0.1 default, the
declaration makes ``handle_cache_compatibility`` record
``_swa_full_tokens_ratio_explicitly_set=True``. In sglang 0.5.23 only
``DSV4PoolConfigurator`` reads that flag, so it changes nothing for Gemma-4;
see docs/serving-defaults.md.

Delete when: SGLang declares ``swa_full_tokens_ratio`` for MoE Gemma-4 itself
(the hook already steps aside, with a log line, when an upstream provider does).

Patch ``mm_prefill_cuda_graph`` -- breakable prefill CUDA graphs for multimodal Gemma-4.

Why: SGLang turns the breakable prefill CUDA graph off for every multimodal
architecture outside ``multimodal_breakable_cuda_graph_supported_model_archs``
(``cuda_graph_hook.py:228-238``); Gemma-4 is not listed, so its language-model
prefill runs eagerly even for text-only requests.

How: opt-in with ``SGLANG_ENABLE_PIECEWISE_CUDA_GRAPH_FOR_MM=1`` (the name
users of the original series know; SGLang's "piecewise" prefill graph is now
called "breakable"). An ``around`` hook on
``is_multimodal_breakable_cuda_graph_supported`` answers yes for
``Gemma4ForConditionalGeneration``, so the language model's prefill is captured
while the vision and audio towers stay eager. Logged once per process when it
changes SGLang's answer.

Delete when: SGLang lists the Gemma-4 multimodal architecture in
``multimodal_breakable_cuda_graph_supported_model_archs``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal

from sglang_gemma4.registry import Hook, Patch

logger = logging.getLogger(__name__)

# The value the original series measured on 26B-A4B (and DeepSeek-V4's own
# default is 0.1 for the same reason: few full-attention layers).
MOE_SWA_FULL_TOKENS_RATIO = 0.15
RATIO_FIELD = "swa_full_tokens_ratio"
MOE_RATIO_ARCHS = ("Gemma4ForCausalLM", "Gemma4ForConditionalGeneration")
# Gemma4Unified, DiffusionGemma and EmbeddingGemma2 are multimodal in SGLang's
# sense too, but their prefill under graphs was never measured: they stay out.
MM_GRAPH_ARCHS = ("Gemma4ForConditionalGeneration",)
MM_GRAPH_ENV = "SGLANG_ENABLE_PIECEWISE_CUDA_GRAPH_FOR_MM"

_OVERRIDES = "sglang.srt.arg_groups.overrides"
_MODEL_CONFIG = "sglang.srt.configs.model_config"
_SOURCE = "sglang_gemma4[moe_swa_ratio]"

ExpertLayout = Literal["moe", "dense"]


class UnreadableExpertConfig(ValueError):
    """The text config does not say clearly whether the model has experts."""


def text_config_of(hf_config: Any) -> Any:
    """The language-model config: ``text_config`` of a multimodal config, else the config."""
    text = getattr(hf_config, "text_config", None)
    return hf_config if text is None else text


def expert_layout(text_config: Any) -> ExpertLayout:
    """``"moe"`` if the text config has experts, ``"dense"`` if it has none.

    MoE means ``num_experts`` is a positive int and ``enable_moe_block`` is
    true (SGLang builds the MoE block from the flag and loads ``num_experts``
    experts). Dense means ``num_experts`` is null or 0 and the flag is off, the
    shape public dense checkpoints ship. Anything else raises
    :class:`UnreadableExpertConfig`.

    ``text_config`` is a config object, or the ``text_config`` dict of a
    config.json, where absent keys take transformers' defaults
    (``num_experts=None``, ``enable_moe_block=False``).
    """
    if isinstance(text_config, dict):
        num_experts = text_config.get("num_experts")
        moe_block = text_config.get("enable_moe_block", False)
    else:
        if not hasattr(text_config, "num_experts"):
            raise UnreadableExpertConfig("the text config has no num_experts field")
        num_experts = text_config.num_experts
        moe_block = getattr(text_config, "enable_moe_block", False)
    if num_experts is not None and (isinstance(num_experts, bool) or not isinstance(num_experts, int) or num_experts < 0):
        raise UnreadableExpertConfig(f"num_experts={num_experts!r} is not a non-negative integer")
    if not isinstance(moe_block, bool):
        raise UnreadableExpertConfig(f"enable_moe_block={moe_block!r} is not a boolean")
    has_experts = bool(num_experts)
    if has_experts != moe_block:
        raise UnreadableExpertConfig(f"num_experts={num_experts!r} disagrees with enable_moe_block={moe_block!r}")
    return "moe" if has_experts else "dense"


def moe_swa_full_tokens_ratio_override(server_args: Any, hf_config: Any) -> dict[str, Any]:
    """``{"swa_full_tokens_ratio": 0.15}`` for MoE Gemma-4 when the user left it unset, else ``{}``.

    Same contract as a ``register_model_override`` provider: reads
    ``(server_args, hf_config)`` through SGLang's resolving view, mutates
    neither, returns a declaration. Logs which outcome applied.
    """
    from sglang.srt.arg_groups.model_override_base import resolving_view

    current = getattr(resolving_view(server_args), RATIO_FIELD)
    arch = (getattr(hf_config, "architectures", None) or ["?"])[0]
    if current is not None:
        logger.info("%s: keeping %s=%s as given", arch, RATIO_FIELD, current)
        return {}
    try:
        layout = expert_layout(text_config_of(hf_config))
    except UnreadableExpertConfig as e:
        logger.warning(
            "%s: cannot tell MoE from dense (%s); leaving %s to SGLang's default",
            arch, e, RATIO_FIELD,
        )
        return {}
    if layout == "dense":
        logger.info("%s: dense checkpoint, leaving %s to SGLang's default", arch, RATIO_FIELD)
        return {}
    logger.info(
        "%s: MoE checkpoint, %s=%s (SGLang's default gives the sliding-window pool most of "
        "the KV memory); pass --swa-full-tokens-ratio to choose another value",
        arch, RATIO_FIELD, MOE_SWA_FULL_TOKENS_RATIO,
    )
    return {RATIO_FIELD: MOE_SWA_FULL_TOKENS_RATIO}


def _collect_with_moe_swa_ratio(
    original: Callable, architecture: str, server_args: Any, hf_config: Any
) -> list[tuple[str, dict[str, Any]]]:
    declarations = original(architecture, server_args, hf_config)
    if architecture not in MOE_RATIO_ARCHS:
        return declarations
    owners = [source for source, declared in declarations if RATIO_FIELD in declared]
    if owners:
        # SGLang's rule: one owner per field and architecture. Upstream now has one.
        logger.info("%s: %s already declared by %s; not adding ours", architecture, RATIO_FIELD, ", ".join(owners))
        return declarations
    declared = moe_swa_full_tokens_ratio_override(server_args, hf_config)
    return [*declarations, (_SOURCE, declared)] if declared else declarations


_mm_graph_logged = False


def _mm_breakable_graph_supported(original: Callable, model_architectures: Sequence[str]) -> bool:
    global _mm_graph_logged
    if original(model_architectures):
        return True
    matched = [arch for arch in model_architectures or () if arch in MM_GRAPH_ARCHS]
    if not matched:
        return False
    if not _mm_graph_logged:
        _mm_graph_logged = True
        logger.info(
            "%s=1: breakable prefill CUDA graph allowed for %s (language-model prefill "
            "captured, vision/audio towers eager)",
            MM_GRAPH_ENV, ", ".join(matched),
        )
    return True


def _check_ratio_is_overridable() -> str | None:
    from sglang.srt.arg_groups.arg_utils import fallbacks_of, resolvable_fields
    from sglang.srt.server_args import ServerArgs

    # A model override naming a non-resolvable field makes SGLang raise while
    # resolving: that would stop the server, so do not apply at all.
    if RATIO_FIELD not in resolvable_fields(ServerArgs):
        return f"ServerArgs.{RATIO_FIELD} is no longer a resolvable (model-overridable) field"
    if fallbacks_of(ServerArgs).get(RATIO_FIELD) is None:
        return f"ServerArgs.{RATIO_FIELD} has no fallback default any more"
    return None


def _check_mm_allowlist() -> str | None:
    import sglang.srt.configs.model_config as model_config

    if not hasattr(model_config, "multimodal_breakable_cuda_graph_supported_model_archs"):
        return "configs/model_config.py has no multimodal_breakable_cuda_graph_supported_model_archs"
    return None


PATCHES = [
    Patch(
        name="moe_swa_ratio",
        summary=f"swa_full_tokens_ratio={MOE_SWA_FULL_TOKENS_RATIO} for MoE Gemma-4 unless set (bigger full-attention KV pool)",
        hooks=(
            Hook(
                f"{_OVERRIDES}.collect_model_override_declarations",
                _collect_with_moe_swa_ratio,
                "around",
                params=("architecture", "server_args", "hf_config"),
            ),
        ),
        delete_when="SGLang declares swa_full_tokens_ratio for MoE Gemma-4 in its own model overrides",
        check=_check_ratio_is_overridable,
    ),
    Patch(
        name="mm_prefill_cuda_graph",
        summary="breakable prefill CUDA graph for multimodal Gemma-4 (language model captured, towers eager)",
        hooks=(
            Hook(
                f"{_MODEL_CONFIG}.is_multimodal_breakable_cuda_graph_supported",
                _mm_breakable_graph_supported,
                "around",
                params=("model_architectures",),
            ),
        ),
        delete_when="Gemma4ForConditionalGeneration is in multimodal_breakable_cuda_graph_supported_model_archs",
        check=_check_mm_allowlist,
        opt_in_env=MM_GRAPH_ENV,
    ),
]
