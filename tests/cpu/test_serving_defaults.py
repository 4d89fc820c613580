"""Gemma-4 serving defaults (srt/arg_groups/gemma4_overrides.py) through SGLang's real server-args resolution.

Each test resolves ``ServerArgs(model_path=<dir with a config.json>, device="cpu")``
with SGLang's own pipeline. In this process the plugin is registered by the
``plugin_table`` fixture; the disable switch and SGLANG_PLUGINS are start-up
conditions, so two fresh processes (run side by side) cover them.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import subprocess
import sys
import textwrap
import types

import pytest

from sglang_gemma4 import pools
from sglang_gemma4.srt.arg_groups import gemma4_overrides as ov

RATIO = "swa_full_tokens_ratio"
OUR_SOURCE = "sglang_gemma4[moe_swa_ratio]"
S, F = "sliding_attention", "full_attention"


def _tiny_text(**overrides) -> dict:
    # Text-only Gemma-4 configs (model_type gemma4_text) must keep one head shape:
    # SGLang 0.5.23 flattens per-layer shapes only for model_type gemma4.
    text = dict(
        model_type="gemma4_text", vocab_size=128, hidden_size=64, intermediate_size=96,
        num_hidden_layers=6, num_attention_heads=2, num_key_value_heads=2, head_dim=32,
        global_head_dim=32, sliding_window=16, layer_types=[S] * 5 + [F],
        hidden_size_per_layer_input=0, vocab_size_per_layer_input=0, max_position_embeddings=4096,
    )
    text.update(overrides)
    return text


MOE = dict(enable_moe_block=True, num_experts=4, top_k_experts=2, moe_intermediate_size=32)


def _builtin(name: str, **text_overrides) -> dict:
    config = pools.load_config(name)[1]
    config["text_config"].update(text_overrides)
    return config


CONFIGS = {
    # The shipped public configs, resolved as SGLang would resolve the checkpoints.
    "moe_mm": lambda: _builtin("26B-A4B"),
    "dense_mm": lambda: _builtin("31B"),
    "moe_causal": lambda: {"architectures": ["Gemma4ForCausalLM"], **_tiny_text(**MOE)},
    "dense_causal": lambda: {"architectures": ["Gemma4ForCausalLM"], **_tiny_text()},
    # Missing num_experts next to enable_moe_block=true: cannot tell MoE from dense.
    "moe_flag_without_experts": lambda: _builtin("26B-A4B", num_experts=None),
    "negative_experts": lambda: {"architectures": ["Gemma4ForCausalLM"], **_tiny_text(**{**MOE, "num_experts": -4})},
}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("gemma4_models")
    dirs = {}
    for name, make in CONFIGS.items():
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps(make()))
        dirs[name] = str(root / name)
    return dirs


@pytest.fixture
def log(monkeypatch, caplog):
    """Our records, which the plugin's logger keeps from the root logger by default."""
    monkeypatch.setattr(logging.getLogger("sglang_gemma4"), "propagate", True)
    caplog.set_level(logging.INFO, logger="sglang_gemma4")
    return caplog


def _resolve(path: str, **kwargs):
    from sglang.srt.server_args import ServerArgs

    server_args = ServerArgs(model_path=path, device="cpu", **kwargs)
    server_args.resolve_once()
    return server_args


def _result(server_args, field: str):
    from sglang.srt.arg_groups.overrides import resolution_result

    return resolution_result(server_args, field)


def _ratio_sources(server_args) -> list[str]:
    return [source for source, declared in server_args._resolved_overrides if RATIO in declared]


def _our_messages(caplog, level: int) -> list[str]:
    return [
        r.getMessage() for r in caplog.records
        if r.name == ov.__name__ and r.levelno == level
    ]


@pytest.mark.parametrize("model", ["moe_mm", "moe_causal"])
def test_moe_gets_the_smaller_ratio(plugin_table, model_dirs, log, model):
    assert plugin_table["moe_swa_ratio"].state == "applied"
    server_args = _resolve(model_dirs[model])
    assert _result(server_args, RATIO) == ov.MOE_SWA_FULL_TOKENS_RATIO == 0.15
    assert _ratio_sources(server_args) == [OUR_SOURCE]
    assert any("MoE checkpoint" in m for m in _our_messages(log, logging.INFO))


@pytest.mark.parametrize("model", ["dense_mm", "dense_causal"])
def test_dense_keeps_sglang_default(plugin_table, model_dirs, log, model):
    server_args = _resolve(model_dirs[model])
    assert _result(server_args, RATIO) == pools.SGLANG_DEFAULT_SWA_FULL_TOKENS_RATIO
    assert _ratio_sources(server_args) == []
    assert _result(server_args, "_swa_full_tokens_ratio_explicitly_set") is False
    assert any("dense checkpoint" in m for m in _our_messages(log, logging.INFO))


@pytest.mark.parametrize("model", ["moe_mm", "moe_causal", "dense_mm", "dense_causal"])
@pytest.mark.parametrize("given", [0.5, 0.8])
def test_user_value_always_wins(plugin_table, model_dirs, log, model, given):
    server_args = _resolve(model_dirs[model], swa_full_tokens_ratio=given)
    assert _result(server_args, RATIO) == given
    assert _ratio_sources(server_args) == []
    assert any(f"keeping {RATIO}={given} as given" in m for m in _our_messages(log, logging.INFO))


@pytest.mark.parametrize("model", ["moe_flag_without_experts", "negative_experts"])
def test_unreadable_expert_fields_leave_sglang_alone_with_one_warning(plugin_table, model_dirs, log, model):
    server_args = _resolve(model_dirs[model])
    assert _result(server_args, RATIO) == pools.SGLANG_DEFAULT_SWA_FULL_TOKENS_RATIO
    assert _ratio_sources(server_args) == []
    warnings = _our_messages(log, logging.WARNING)
    assert len(warnings) == 1 and "cannot tell MoE from dense" in warnings[0]


def test_moe_default_is_recorded_like_deepseek_v4s(plugin_table, model_dirs):
    """SGLang records any declared ratio as explicitly set (kv_cache_hook.py:415-420); accepted, see docs."""
    server_args = _resolve(model_dirs["moe_mm"])
    assert _result(server_args, "_swa_full_tokens_ratio_explicitly_set") is True


def test_the_explicitly_set_flag_does_not_reach_gemma4_pool_sizing():
    """The premise of accepting that flag: only DeepSeek-V4's configurator reads it in 0.5.23."""
    from sglang.srt.model_executor import pool_configurator as pc

    readers = [
        name for name, obj in vars(pc).items()
        if inspect.isclass(obj) and obj.__module__ == pc.__name__
        and "_operator_swa_full_tokens_ratio" in inspect.getsource(obj)
    ]
    assert readers == ["DSV4PoolConfigurator"]
    assert "_swa_full_tokens_ratio_explicitly_set" in inspect.getsource(pc._operator_swa_full_tokens_ratio)


@pytest.mark.parametrize(
    "text, layout",
    [
        ({"num_experts": 128, "enable_moe_block": True}, "moe"),
        ({"num_experts": None, "enable_moe_block": False}, "dense"),
        ({"num_experts": 0}, "dense"),
        ({}, "dense"),  # config.json without the keys: transformers' defaults
        (types.SimpleNamespace(num_experts=None, enable_moe_block=False), "dense"),
        (types.SimpleNamespace(num_experts=8, enable_moe_block=True), "moe"),
    ],
)
def test_expert_layout(text, layout):
    assert ov.expert_layout(text) == layout


@pytest.mark.parametrize(
    "text, reason",
    [
        ({"num_experts": "128", "enable_moe_block": True}, "not a non-negative integer"),
        ({"num_experts": True, "enable_moe_block": True}, "not a non-negative integer"),
        ({"num_experts": -1}, "not a non-negative integer"),
        ({"num_experts": 128, "enable_moe_block": False}, "disagrees"),
        ({"num_experts": None, "enable_moe_block": True}, "disagrees"),
        ({"num_experts": 8, "enable_moe_block": "yes"}, "not a boolean"),
        (types.SimpleNamespace(enable_moe_block=True), "no num_experts field"),
    ],
)
def test_expert_layout_rejects_what_it_cannot_read(text, reason):
    with pytest.raises(ov.UnreadableExpertConfig, match=reason):
        ov.expert_layout(text)


def test_an_upstream_owner_of_the_field_is_left_alone(plugin_table):
    upstream = [("sglang_upstream_gemma4", {RATIO: 0.2})]
    hf_config = types.SimpleNamespace(architectures=["Gemma4ForCausalLM"], num_experts=8, enable_moe_block=True)
    assert ov._collect_with_moe_swa_ratio(lambda *a: list(upstream), "Gemma4ForCausalLM", object(), hf_config) == upstream


def test_other_architectures_are_untouched(plugin_table):
    declared = [("x", {"page_size": 64})]
    assert ov._collect_with_moe_swa_ratio(lambda *a: list(declared), "Gemma3ForCausalLM", None, None) == declared


@pytest.fixture
def cuda_prefill_default(monkeypatch):
    """The prefill CUDA-graph default a CUDA machine gets (breakable); CPU defaults to disabled."""
    from sglang.srt.model_executor import cuda_graph_config

    monkeypatch.setattr(cuda_graph_config, "default_prefill_backend", lambda: cuda_graph_config.Backend.BREAKABLE)


def _prefill_backend(server_args) -> str:
    return _result(server_args, "cuda_graph_config").prefill.backend


@pytest.mark.skipif(bool(os.environ.get(ov.MM_GRAPH_ENV)), reason=f"{ov.MM_GRAPH_ENV} is set for this session")
def test_multimodal_prefill_graph_stays_off_without_the_switch(plugin_table, model_dirs, cuda_prefill_default):
    assert plugin_table["mm_prefill_cuda_graph"].state == "off"
    assert _prefill_backend(_resolve(model_dirs["moe_mm"])) == "disabled"
    assert _prefill_backend(_resolve(model_dirs["moe_causal"])) == "breakable"


PROBE = """
import json, sys
from sglang.srt.model_executor import cuda_graph_config
cuda_graph_config.default_prefill_backend = lambda: cuda_graph_config.Backend.BREAKABLE
from sglang.srt.plugins import load_plugins
load_plugins()
from sglang.srt.arg_groups.overrides import resolution_result
from sglang.srt.server_args import ServerArgs
server_args = ServerArgs(model_path=sys.argv[1], device="cpu")
server_args.resolve_once()
print("RESULT", json.dumps({
    "ratio": resolution_result(server_args, "swa_full_tokens_ratio"),
    "prefill": resolution_result(server_args, "cuda_graph_config").prefill.backend,
}))
"""


@pytest.fixture(scope="module")
def fresh_processes(model_dirs) -> dict[str, tuple[dict, str]]:
    """Start-up with the ratio patch disabled, and with the plugin not whitelisted, side by side."""
    scenarios = {
        "disabled": {"SGLANG_GEMMA4_DISABLE": "moe_swa_ratio"},
        "not_whitelisted": {"SGLANG_PLUGINS": "some_other_plugin"},
    }
    running = {}
    for name, extra in scenarios.items():
        env = {k: v for k, v in os.environ.items() if k not in ("SGLANG_GEMMA4_DISABLE", "SGLANG_PLUGINS")}
        env.update(extra, **{ov.MM_GRAPH_ENV: "1"})
        running[name] = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(PROBE), model_dirs["moe_mm"]],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
    results = {}
    for name, proc in running.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        line = next(l for l in out.splitlines() if l.startswith("RESULT "))
        results[name] = (json.loads(line.removeprefix("RESULT ")), err)
    return results


def test_disable_switch_turns_the_ratio_off_and_leaves_the_rest(fresh_processes):
    result, stderr = fresh_processes["disabled"]
    assert result["ratio"] == pools.SGLANG_DEFAULT_SWA_FULL_TOKENS_RATIO
    # The multimodal switch was set in that process: its patch applied and acted.
    assert result["prefill"] == "breakable"
    summary = next(l for l in stderr.splitlines() if "[sglang-gemma4]" in l and "applied:" in l)
    assert "disabled: moe_swa_ratio" in summary and "mm_prefill_cuda_graph" in summary.split("applied:")[1]
    assert f"{ov.MM_GRAPH_ENV}=1: breakable prefill CUDA graph allowed" in stderr


def test_sglang_plugins_whitelist_keeps_sglang_as_it_is(fresh_processes):
    result, stderr = fresh_processes["not_whitelisted"]
    assert result == {"ratio": pools.SGLANG_DEFAULT_SWA_FULL_TOKENS_RATIO, "prefill": "disabled"}
    assert "[sglang-gemma4]" not in stderr


def test_multimodal_archs_are_multimodal_in_sglang():
    """The switch only matters for archs SGLang calls multimodal and does not yet allow."""
    from sglang.srt.configs import model_config

    for arch in ov.MM_GRAPH_ARCHS:
        assert arch in model_config.multimodal_model_archs
        assert arch not in model_config.multimodal_breakable_cuda_graph_supported_model_archs
