"""KV-pool calculator (``python -m sglang_gemma4 pools``): built-in configs, SGLang's own numbers, CLI."""

from __future__ import annotations

import json

import pytest

from sglang_gemma4 import pools
from sglang_gemma4.__main__ import main

GIB = pools.GIB

# DESIGN.md section 6: hidden, layers, heads, kv heads, global kv heads, PLE width, KV-shared layers.
DESIGN_TABLE = {
    "E2B": (1536, 35, 8, 1, None, 256, 20),
    "E4B": (2560, 42, 8, 2, None, 256, 18),
    "26B-A4B": (2816, 30, 16, 8, 2, 0, 0),
    "31B": (5376, 60, 32, 16, 4, 0, 0),
}
# full layers, sliding layers, bf16 bytes per token and layer (full, sliding), window, MoE?
GEOMETRY = {
    "E2B": (7, 28, 1 * 2 * 512 * 2, 1 * 2 * 256 * 2, 511, False),
    "E4B": (7, 35, 2 * 2 * 512 * 2, 2 * 2 * 256 * 2, 511, False),
    "26B-A4B": (5, 25, 2 * 2 * 512 * 2, 8 * 2 * 256 * 2, 1023, True),
    "31B": (10, 50, 4 * 2 * 512 * 2, 16 * 2 * 256 * 2, 1023, False),
}


@pytest.mark.parametrize("name", pools.BUILTIN_CONFIGS)
def test_builtin_configs_carry_the_design_table(name):
    text = pools.load_config(name)[1]["text_config"]
    hidden, layers, heads, kv, global_kv, ple, shared = DESIGN_TABLE[name]
    assert (text["hidden_size"], text["num_hidden_layers"], text["num_attention_heads"]) == (hidden, layers, heads)
    assert (text["num_key_value_heads"], text["num_global_key_value_heads"]) == (kv, global_kv)
    assert (text["head_dim"], text["global_head_dim"]) == (256, 512)
    assert (text["hidden_size_per_layer_input"], text["num_kv_shared_layers"]) == (ple, shared)


@pytest.mark.parametrize("name", pools.BUILTIN_CONFIGS)
def test_builtin_geometry(name):
    _, config = pools.load_config(name)
    geom = pools.geometry(config, name)
    full, swa, full_row, swa_row, window, moe = GEOMETRY[name]
    assert (geom.full_layers, geom.swa_layers, geom.window) == (full, swa, window)
    assert (geom.full_row_bytes(2), geom.swa_row_bytes(2)) == (full_row, swa_row)
    assert pools.plugin_ratio(config)[0] == (0.15 if moe else pools.SGLANG_DEFAULT_SWA_FULL_TOKENS_RATIO)


def test_builtin_names_are_forgiving():
    assert pools.load_config("gemma-4-26b-a4b-it")[0] == pools.load_config("26B-A4B")[0] == "gemma-4-26B-A4B"


@pytest.mark.parametrize("name", pools.BUILTIN_CONFIGS)
def test_sglang_reads_the_builtin_configs_as_we_do(plugin_table, name, tmp_path):
    """SGLang's ModelConfig (transformers + its Gemma-4 flattening) sees the same KV shapes."""
    from sglang.srt.configs.model_config import ModelConfig

    _, config = pools.load_config(name)
    (tmp_path / "config.json").write_text(json.dumps(config))
    mc = ModelConfig(model_path=str(tmp_path))
    geom = pools.geometry(config, name)
    assert mc.is_hybrid_swa
    assert (len(mc.full_attention_layer_ids), len(mc.swa_attention_layer_ids)) == (geom.full_layers, geom.swa_layers)
    assert (mc.get_num_kv_heads(1), mc.head_dim, mc.v_head_dim) == (geom.full_kv_heads, geom.full_head_dim, geom.full_head_dim)
    assert (mc.get_swa_num_kv_heads(1), mc.swa_head_dim, mc.swa_v_head_dim) == (geom.swa_kv_heads, geom.swa_head_dim, geom.swa_head_dim)
    assert mc.context_len == geom.context_len


@pytest.mark.parametrize("name", pools.BUILTIN_CONFIGS)
@pytest.mark.parametrize("ratio", [0.8, 0.15, 0.37])
@pytest.mark.parametrize(
    "kv_gib, page_size, kv_dtype, draft_layers",
    [(80, 1, "bfloat16", 0), (37.3, 64, "fp8_e4m3", 3)],
)
def test_formula_matches_sglangs_configurator(plugin_table, name, ratio, kv_gib, page_size, kv_dtype, draft_layers):
    _, config = pools.load_config(name)
    geom = pools.geometry(config, name)
    budget = int(kv_gib * GIB)
    ours = pools.pool_sizes(geom, budget, ratio, page_size=page_size, kv_bytes=pools.KV_DTYPE_BYTES[kv_dtype],
                            draft_layers=draft_layers)
    theirs = pools.sglang_pool_sizes(config, budget, ratio, page_size=page_size, kv_dtype=kv_dtype,
                                     draft_layers=draft_layers)
    assert (ours.full_tokens, ours.swa_tokens, ours.cell_bytes) == (theirs.full_tokens, theirs.swa_tokens, theirs.cell_bytes)
    assert ours.full_tokens % page_size == 0 and ours.swa_tokens % page_size == 0


def test_sglang_prices_a_frozen_kv_draft_as_full_attention_layers(plugin_table):
    """The MTP interaction documented in docs/serving-defaults.md, on SGLang's own configurator."""
    _, config = pools.load_config("26B-A4B")
    budget = 100 * GIB
    plain = pools.sglang_pool_sizes(config, budget, 0.15)
    with_draft = pools.sglang_pool_sizes(config, budget, 0.15, draft_layers=4)
    geom = pools.geometry(config)
    assert with_draft.cell_bytes - plain.cell_bytes == 4 * geom.full_row_bytes(2)
    assert with_draft.full_tokens < 0.8 * plain.full_tokens


def test_reproduces_the_original_series_logs():
    """One KV budget gives the logged 26B-A4B pools at both ratios (page 1), and the 31B ones (page 64)."""
    moe = pools.geometry(pools.load_config("26B-A4B")[1])
    budget = 2_138_243 * 51_200  # bytes per token at 0.15: 5 x 4,096 + 0.15 x 25 x 8,192
    at_08, at_015 = pools.pool_sizes(moe, budget, 0.8), pools.pool_sizes(moe, budget, 0.15)
    assert (at_08.full_tokens, at_08.swa_tokens) == (593_956, 475_164)
    assert (at_015.full_tokens, at_015.swa_tokens) == (2_138_243, 320_736)

    dense = pools.geometry(pools.load_config("31B")[1])
    budget = 132_992 * 737_280  # bytes per token at 0.8: 10 x 8,192 + 0.8 x 50 x 16,384
    at_08, at_015 = pools.pool_sizes(dense, budget, 0.8, page_size=64), pools.pool_sizes(dense, budget, 0.15, page_size=64)
    assert (at_08.full_tokens, at_08.swa_tokens) == (132_992, 106_368)
    assert (at_015.full_tokens, at_015.swa_tokens) == (478_720, 71_808)


@pytest.mark.parametrize(
    "prompt, new, window, page, chunk",
    [(8192, 1024, 1023, 1, 8192), (8192, 1024, 1023, 64, 4096), (100, 20, 511, 1, 8192), (600, 0, 511, 16, None)],
)
def test_swa_reservation_is_sglangs(plugin_table, prompt, new, window, page, chunk):
    from sglang.srt.mem_cache.prefill_budget import estimate_swa_kv_tokens

    assert pools.swa_peak_reservation(prompt, new, window, page, chunk) == estimate_swa_kv_tokens(
        prompt, new, sliding_window_size=window, page_size=page, allocation_limit=chunk
    )


def test_concurrency():
    geom = pools.geometry(pools.load_config("26B-A4B")[1])
    p = pools.Pools(ratio=0.15, full_tokens=92_160, swa_tokens=8_193 + 3 * 1_024 + 1_023, cell_bytes=1.0)
    fit = pools.concurrency(p, geom, 9_216, 8_192, page_size=1, chunked_prefill_size=8_192)
    # full: 92,160 // 9,216; SWA: one prefill peak (7,169 + 1,023 + 1) + 3 windows of 1,024.
    assert (fit.full, fit.swa, fit.requests, fit.binding) == (10, 4, 4, "sliding-window")
    short = pools.concurrency(p, geom, 100, 100, page_size=1)
    assert short.swa == (p.swa_tokens - 101) // 101 + 1


def test_sglang_default_ratio_is_sglangs(plugin_table):
    from sglang.srt.arg_groups.arg_utils import fallbacks_of
    from sglang.srt.server_args import ServerArgs

    assert fallbacks_of(ServerArgs)["swa_full_tokens_ratio"] == pools.SGLANG_DEFAULT_SWA_FULL_TOKENS_RATIO


def test_cli_side_by_side(capsys):
    assert main(["pools", "--model", "26B-A4B", "--kv-mem-gb", "80", "--context-len", "9216", "--prompt-len", "8192"]) == 0
    out = capsys.readouterr().out
    geom = pools.geometry(pools.load_config("26B-A4B")[1])
    for ratio in (0.8, 0.15):
        p = pools.pool_sizes(geom, 80 * GIB, ratio)
        assert f"{p.full_tokens:,}" in out and f"{p.swa_tokens:,}" in out
    assert "SGLang default (0.8)" in out and "with sglang-gemma4 (0.15)" in out and "MoE" in out


def test_cli_dense_model_from_a_directory(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(pools.load_config("31B")[1]))
    assert main(["pools", "--model", str(tmp_path), "--kv-mem-gb", "60"]) == 0
    out = capsys.readouterr().out
    assert "with sglang-gemma4 (0.8)" in out and "dense" in out


def test_cli_check_sglang(plugin_table, capsys):
    assert main(["pools", "--model", "E2B", "--kv-mem-gb", "20", "--page-size", "16", "--check-sglang"]) == 0
    assert capsys.readouterr().out.count("-> same") == 2


def _broken(tmp_path, **text_changes):
    config = pools.load_config("26B-A4B")[1]
    for key, value in text_changes.items():
        if value is None:
            del config["text_config"][key]
        else:
            config["text_config"][key] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    return str(tmp_path)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"num_key_value_heads": None}, "missing field 'num_key_value_heads'"),
        ({"layer_types": ["sliding_attention"] * 3}, "layer_types must list 30"),
        ({"sliding_window": "1024"}, "'sliding_window'='1024'"),
        ({"num_kv_shared_layers": 99}, "num_kv_shared_layers=99"),
    ],
)
def test_cli_rejects_bad_configs_cleanly(tmp_path, capsys, changes, message):
    assert main(["pools", "--model", _broken(tmp_path, **changes), "--kv-mem-gb", "10"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_cli_rejects_unknown_models_and_bad_lengths(tmp_path, capsys):
    assert main(["pools", "--model", "gemma-5", "--kv-mem-gb", "10"]) == 2
    assert "neither a built-in model" in capsys.readouterr().err
    (tmp_path / "config.json").write_text("{not json")
    assert main(["pools", "--model", str(tmp_path), "--kv-mem-gb", "10"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["pools", "--model", "E4B", "--kv-mem-gb", "10", "--context-len", "100", "--prompt-len", "200"]) == 2


def test_cli_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    target = tmp_path / "pools.png"
    assert main(["pools", "--model", "26B-A4B", "--kv-mem-gb", "80", "--plot", str(target)]) == 0
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_check_command_is_still_there():
    with pytest.raises(SystemExit) as done:
        main(["check", "--help"])
    assert done.value.code == 0
