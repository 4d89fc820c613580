"""Patch ``gemma4_text_config``: text-only Gemma-4 checkpoints load.

Why: transformers (5.x) states Gemma-4's full-attention head size
(``global_head_dim``, 512 on every published size against 256 for sliding
layers) and K/V head count as per-layer overrides, and raises
``AmbiguousGlobalPerLayerAttributeError`` (a RuntimeError) on any read of the
global ``head_dim``. SGLang 0.5.23 flattens them into its own attributes
(``_apply_gemma4_attention_overrides``, utils/hf_transformers/config.py:115)
only for the multimodal model types in ``_GEMMA4_MODEL_TYPES`` (config.py:66),
which lack ``gemma4_text``. A text-only checkpoint (``Gemma4ForCausalLM``,
model type ``gemma4_text``, what transformers saves for a text-only Gemma-4)
therefore fails in SGLang's config parser (``hasattr(config, "head_dim")`` at
config.py:267 raises) before a model is built.

How: ``get_hf_text_config`` (which the parser calls just before that line, and
``ModelConfig`` calls later) applies SGLang's own flattening to a
``gemma4_text`` config that still carries per-layer overrides: ``head_dim`` /
``num_key_value_heads`` become the full-attention values, ``swa_head_dim`` /
``swa_num_key_value_heads`` the sliding ones, exactly as for a multimodal
checkpoint's text config. Idempotent: a flattened config has no overrides left.

Delete when: ``_GEMMA4_MODEL_TYPES`` includes ``gemma4_text`` and
``_apply_gemma4_attention_overrides`` takes a text config itself.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from sglang_gemma4.registry import Hook, Patch

_COMMON = "sglang.srt.utils.hf_transformers.common"
TEXT_MODEL_TYPE = "gemma4_text"


def flatten_text_config(config: Any) -> None:
    """SGLang's Gemma-4 attention-shape flattening, applied to a text config in place."""
    from sglang.srt.utils.hf_transformers.config import _apply_gemma4_attention_overrides

    # The function reads the text config from a parent config's ``text_config``.
    _apply_gemma4_attention_overrides(SimpleNamespace(text_config=config))


def get_hf_text_config(original: Callable[..., Any], config: Any) -> Any:
    """``get_hf_text_config``, with a per-layer ``gemma4_text`` config flattened first."""
    if getattr(config, "model_type", None) == TEXT_MODEL_TYPE and getattr(config, "is_heterogeneous", False):
        flatten_text_config(config)
    return original(config)


def _check() -> str | None:
    from sglang.srt.utils.hf_transformers import config as hf_config

    if TEXT_MODEL_TYPE in hf_config._GEMMA4_MODEL_TYPES:
        return f"SGLang already flattens {TEXT_MODEL_TYPE} configs"
    if not callable(getattr(hf_config, "_apply_gemma4_attention_overrides", None)):
        return "sglang.srt.utils.hf_transformers.config._apply_gemma4_attention_overrides is gone"
    return None


PATCHES = [
    Patch(
        name="gemma4_text_config",
        summary="text-only Gemma-4 checkpoints (model type gemma4_text) load: per-layer head dims flattened",
        hooks=(Hook(f"{_COMMON}.get_hf_text_config", get_hf_text_config, "around", params=("config",)),),
        delete_when="_GEMMA4_MODEL_TYPES includes gemma4_text (and the flattening accepts a text config)",
        check=_check,
    )
]
