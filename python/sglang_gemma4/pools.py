"""KV-pool calculator for Gemma-4 on SGLang: ``python -m sglang_gemma4 pools``.

SGLang gives a hybrid sliding-window model two KV pools: the full-attention
pool (one row per token for each full-attention layer) and the sliding-window
(SWA) pool (one row per token for each sliding layer). From a KV budget of
``B`` bytes and ``r = --swa-full-tokens-ratio`` it solves (sglang 0.5.23,
``model_executor/pool_configurator.py``)::

    cell        = full_layers * full_row + r * swa_layers * swa_row     (_recompute_cell_size)
    full_tokens = floor(floor(B / cell) / page) * page                  (calculate_pool_sizes,
    swa_tokens  = floor(floor(full_tokens * r) / page) * page            _solve_pool_sizes)

with ``full_row = kv_heads_full * (head_dim_full + v_head_dim_full) * bytes``
(``global_head_dim`` and ``num_global_key_value_heads`` for Gemma-4) and
``swa_row`` from the sliding layers' ``head_dim`` and ``num_key_value_heads``;
heads divide by the attention TP size (at least one per GPU). A frozen-KV MTP
draft (Gemma-4 assistant) is priced as ``draft_layers`` more full-attention
layers in ``cell`` although it allocates no pool (docs/serving-defaults.md).

:func:`pool_sizes` is that arithmetic, in the same float/integer steps, for the
path SGLang takes by default (no unified memory pool, no fused draft, no
mxfp8 KV, radix cache on or no ``--max-running-requests``; otherwise
``SWARequestCapPoolConfigurator`` ignores the ratio). :func:`sglang_pool_sizes`
runs SGLang's own ``HybridSWAPoolConfigurator`` on the CPU for the same inputs
(``--check-sglang``); the tests hold the two equal on the built-in configs.

Concurrency (:func:`concurrency`) is a planning estimate, not a scheduler
simulation: a request of ``L`` tokens keeps ``L`` rows in every full-attention
layer; in the SWA pool one request at a time is being prefilled and holds its
peak reservation (SGLang's ``estimate_swa_kv_tokens`` with the prompt chunked
at ``--chunked-prefill-size``), every other request holds
``min(L, window) + page`` rows.

Built-in configs (``configs/*.json``) carry the public config.json fields of
the four Gemma-4 checkpoints that matter here; each file lists what was not
checked against the published file under ``_provenance``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from sglang_gemma4.srt.arg_groups.gemma4_overrides import (
    MOE_RATIO_ARCHS,
    MOE_SWA_FULL_TOKENS_RATIO,
    UnreadableExpertConfig,
    expert_layout,
)

GIB = 1 << 30
# Fallback of ServerArgs.swa_full_tokens_ratio (arg_groups/fields/schedule.py:150-162).
SGLANG_DEFAULT_SWA_FULL_TOKENS_RATIO = 0.8
KV_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "fp8_e4m3": 1, "fp8_e5m2": 1}
# transformers' Gemma4TextConfig pops global_head_dim with this default.
_DEFAULT_GLOBAL_HEAD_DIM = 512
BUILTIN_CONFIGS = {
    "E2B": "gemma-4-E2B-it.json",
    "E4B": "gemma-4-E4B-it.json",
    "26B-A4B": "gemma-4-26B-A4B-it.json",
    "31B": "gemma-4-31B-it.json",
}
_FULL, _SLIDING = "full_attention", "sliding_attention"


class ConfigError(ValueError):
    """A model config the calculator cannot size (missing or malformed fields)."""


@dataclasses.dataclass(frozen=True)
class KVGeometry:
    """What SGLang's pool sizing reads from a Gemma-4 config."""

    name: str
    architecture: str
    full_layers: int
    swa_layers: int
    full_kv_heads: int
    full_head_dim: int
    swa_kv_heads: int
    swa_head_dim: int
    # SGLang's window: Gemma-4's inclusive ``sliding_window`` minus one
    # (models/gemma4_causal.py:83, gemma4_mm.py:314).
    window: int
    context_len: int
    kv_shared_layers: int

    def full_row_bytes(self, kv_bytes: int, tp: int = 1) -> int:
        """Bytes one token takes in one full-attention layer (K and V) on one GPU."""
        return max(1, self.full_kv_heads // tp) * 2 * self.full_head_dim * kv_bytes

    def swa_row_bytes(self, kv_bytes: int, tp: int = 1) -> int:
        """Bytes one token takes in one sliding layer (K and V) on one GPU."""
        return max(1, self.swa_kv_heads // tp) * 2 * self.swa_head_dim * kv_bytes


@dataclasses.dataclass(frozen=True)
class Pools:
    ratio: float
    full_tokens: int
    swa_tokens: int
    cell_bytes: float

    def admits_a_request(self, geom: KVGeometry, page_size: int) -> bool:
        """SGLang's start-up floor (``validate_swa_pool_size``): SWA pool > window + page."""
        return self.swa_tokens > geom.window + page_size


@dataclasses.dataclass(frozen=True)
class Fit:
    """Concurrent requests of one length each pool can hold."""

    full: int
    swa: int

    @property
    def requests(self) -> int:
        return min(self.full, self.swa)

    @property
    def binding(self) -> str:
        return "full" if self.full <= self.swa else "sliding-window"


def _require(fields: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in fields:
        raise ConfigError(f"{where}: missing field {key!r}")
    value = fields[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{where}: field {key!r}={value!r} has the wrong type")
    return value


def _positive_int(fields: dict[str, Any], key: str, where: str, default: int | None = None) -> int:
    value = fields.get(key, default) if default is not None else _require(fields, key, int, where)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{where}: field {key!r}={value!r} is not a positive integer")
    return value


def text_fields(config: dict[str, Any]) -> dict[str, Any]:
    """The language-model part of a config.json (``text_config`` when present)."""
    text = config.get("text_config", config)
    if not isinstance(text, dict):
        raise ConfigError("text_config is not an object")
    return text


def architecture_of(config: dict[str, Any]) -> str:
    archs = config.get("architectures")
    if not isinstance(archs, list) or not archs or not isinstance(archs[0], str):
        raise ConfigError("config.json: 'architectures' is missing or not a list of names")
    return archs[0]


def geometry(config: dict[str, Any], name: str = "model") -> KVGeometry:
    """Read the KV layout of a Gemma-4 config.json, as transformers + SGLang interpret it.

    Full-attention layers use ``global_head_dim`` (default 512) and, when
    ``attention_k_eq_v`` is set, ``num_global_key_value_heads``; sliding layers
    use ``head_dim`` and ``num_key_value_heads`` (transformers' per-layer
    config, flattened by SGLang's ``_apply_gemma4_attention_overrides``).
    Every layer counts, KV-shared ones included: SGLang gives them pool rows.
    """
    where = f"{name} text_config"
    text = text_fields(config)
    layers = _positive_int(text, "num_hidden_layers", where)
    layer_types = _require(text, "layer_types", list, where)
    if len(layer_types) != layers or any(t not in (_FULL, _SLIDING) for t in layer_types):
        raise ConfigError(
            f"{where}: layer_types must list {layers} entries of {_FULL!r}/{_SLIDING!r}"
        )
    swa_kv_heads = _positive_int(text, "num_key_value_heads", where)
    full_kv_heads = swa_kv_heads
    if text.get("attention_k_eq_v", False) and text.get("num_global_key_value_heads") is not None:
        full_kv_heads = _positive_int(text, "num_global_key_value_heads", where)
    kv_shared = text.get("num_kv_shared_layers", 0) or 0
    if isinstance(kv_shared, bool) or not isinstance(kv_shared, int) or not 0 <= kv_shared <= layers:
        raise ConfigError(f"{where}: num_kv_shared_layers={kv_shared!r} is out of range")
    return KVGeometry(
        name=name,
        architecture=architecture_of(config),
        full_layers=layer_types.count(_FULL),
        swa_layers=layer_types.count(_SLIDING),
        full_kv_heads=full_kv_heads,
        full_head_dim=_positive_int(text, "global_head_dim", where, default=_DEFAULT_GLOBAL_HEAD_DIM),
        swa_kv_heads=swa_kv_heads,
        swa_head_dim=_positive_int(text, "head_dim", where),
        window=_positive_int(text, "sliding_window", where) - 1,
        context_len=_positive_int(text, "max_position_embeddings", where),
        kv_shared_layers=kv_shared,
    )


def load_config(model: str) -> tuple[str, dict[str, Any]]:
    """``(display name, config.json dict)`` for a built-in name, a directory or a config.json path."""
    by_name = {k.lower(): k for k in BUILTIN_CONFIGS}
    key = by_name.get(model.lower().removeprefix("gemma-4-").removesuffix("-it"))
    if key is not None:
        text = resources.files("sglang_gemma4").joinpath("configs", BUILTIN_CONFIGS[key]).read_text()
        return f"gemma-4-{key}", json.loads(text)
    path = Path(model)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ConfigError(
            f"{model!r} is neither a built-in model ({', '.join(BUILTIN_CONFIGS)}) "
            "nor a directory or file holding a config.json"
        )
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: not a JSON object")
    return str(path.parent if path.name == "config.json" else path), config


def plugin_ratio(config: dict[str, Any]) -> tuple[float, str]:
    """The ratio SGLang resolves with the plugin when the user sets none, and why."""
    arch = architecture_of(config)
    if arch not in MOE_RATIO_ARCHS:
        return SGLANG_DEFAULT_SWA_FULL_TOKENS_RATIO, f"{arch} is not a Gemma-4 architecture the plugin sizes"
    try:
        layout = expert_layout(text_fields(config))
    except UnreadableExpertConfig as e:
        return SGLANG_DEFAULT_SWA_FULL_TOKENS_RATIO, f"cannot tell MoE from dense ({e}): SGLang's default"
    if layout == "dense":
        return SGLANG_DEFAULT_SWA_FULL_TOKENS_RATIO, "dense: the plugin keeps SGLang's default"
    return MOE_SWA_FULL_TOKENS_RATIO, "MoE: the plugin's default"


def pool_sizes(
    geom: KVGeometry,
    kv_mem_bytes: int,
    ratio: float,
    *,
    page_size: int = 1,
    kv_bytes: int = 2,
    tp: int = 1,
    draft_layers: int = 0,
) -> Pools:
    """Full and SWA pool tokens for a KV budget, as SGLang 0.5.23 sizes them.

    Mirrors ``HybridSWAPoolConfigurator._recompute_cell_size`` (hybrid branch),
    ``calculate_pool_sizes`` (no unified memory) and ``_solve_pool_sizes``;
    ``draft_layers`` are the private draft layers SGLang prices at the
    full-attention row size (``_full_cell_bytes``).
    """
    full_row = geom.full_row_bytes(kv_bytes, tp)
    cell = full_row * (geom.full_layers + draft_layers) + ratio * (geom.swa_row_bytes(kv_bytes, tp) * geom.swa_layers)
    max_total = int(kv_mem_bytes // cell)
    full_tokens = max_total // page_size * page_size
    swa_tokens = int(full_tokens * ratio) // page_size * page_size
    return Pools(ratio=ratio, full_tokens=full_tokens, swa_tokens=swa_tokens, cell_bytes=cell)


def swa_peak_reservation(prompt_len: int, new_tokens: int, window: int, page_size: int, chunk: int | None) -> int:
    """SWA rows SGLang reserves for one request at admission.

    Mirrors ``estimate_swa_kv_tokens`` (mem_cache/prefill_budget.py:27-59):
    the prompt part beyond the window that one chunk writes, plus the window
    (or the whole request if shorter), plus a page.
    """
    allocated = prompt_len if chunk is None else min(prompt_len, chunk)
    return max(allocated - window, 0) + min(prompt_len + new_tokens, window) + page_size


def concurrency(
    pools: Pools,
    geom: KVGeometry,
    context_len: int,
    prompt_len: int,
    *,
    page_size: int = 1,
    chunked_prefill_size: int | None = 8192,
) -> Fit:
    """How many requests of ``context_len`` tokens (``prompt_len`` of them prompt) fit at once.

    Full pool: ``floor(full_tokens / context_len)``. SWA pool: one request
    prefilling at its peak reservation, the others holding
    ``min(context_len, window) + page_size`` rows each.
    """
    full = pools.full_tokens // context_len
    peak = swa_peak_reservation(prompt_len, context_len - prompt_len, geom.window, page_size, chunked_prefill_size)
    steady = min(context_len, geom.window) + page_size
    swa = 0 if pools.swa_tokens < peak else 1 + (pools.swa_tokens - peak) // steady
    return Fit(full=full, swa=swa)


def sglang_pool_sizes(
    config: dict[str, Any],
    kv_mem_bytes: int,
    ratio: float,
    *,
    page_size: int = 1,
    kv_dtype: str = "bfloat16",
    draft_layers: int = 0,
) -> Pools:
    """The same numbers from SGLang's own ``HybridSWAPoolConfigurator``, run on the CPU.

    Builds SGLang's ``ModelConfig`` from the config (so its Gemma-4 config
    parsing is exercised too) and hands the configurator the few fields of a
    ``KVCacheConfigurator`` it reads; a frozen-KV MTP draft appears as SGLang
    sees a Gemma-4 assistant (``eagle_draft_num_layers``, no SWA layers).
    Publishes a placeholder runtime context if the process has none. TP=1.
    """
    import types

    import torch
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.model_executor.pool_configurator import HybridSWAPoolConfigurator
    from sglang.srt.runtime_context import get_context, get_memory, get_schedule, publish
    from sglang.srt.server_args import ServerArgs
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    try:
        get_context().server_args  # noqa: B018 - raises ValueError when nothing is published
    except ValueError:
        publish(ServerArgs(model_path="dummy", device="cpu"), role="test")

    torch_dtype = {
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
        "fp8_e4m3": torch.float8_e4m3fn,
        "fp8_e5m2": torch.float8_e5m2,
    }[kv_dtype]
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "config.json").write_text(json.dumps(config))
        model_config = ModelConfig(model_path=tmp)
    layer_info = types.SimpleNamespace(
        full_attention_layer_ids=model_config.full_attention_layer_ids,
        swa_attention_layer_ids=model_config.swa_attention_layer_ids,
    )
    spec = SpeculativeAlgorithm.FROZEN_KV_MTP if draft_layers else SpeculativeAlgorithm.NONE
    kvc = types.SimpleNamespace(
        kv_cache_dtype_str=kv_dtype,
        model_config=model_config,
        kv_cache_dtype=torch_dtype,
        layer_info=layer_info,
        sliding_window_size=text_fields(config)["sliding_window"] - 1,
        page_size=page_size,
        spec_algorithm=spec,
        is_draft_worker=False,
        spec_aux_config=types.SimpleNamespace(
            eagle_draft_num_layers=draft_layers or None, eagle_draft_swa_num_layers=None
        ),
        fused_entry_bytes=lambda sub_pool: None,
    )
    with get_schedule().override(swa_full_tokens_ratio=ratio), get_memory().override(enable_unified_memory=False):
        configurator = HybridSWAPoolConfigurator(kvc)
        result = configurator.calculate_pool_sizes(kv_mem_bytes, page_size)
    return Pools(
        ratio=ratio,
        full_tokens=result.full_max_total_num_tokens,
        swa_tokens=result.swa_max_total_num_tokens,
        cell_bytes=configurator._cell_size,
    )


def _rows(
    geom: KVGeometry, pools: Sequence[Pools], args: argparse.Namespace
) -> list[tuple[str, ...]]:
    fits = [
        concurrency(p, geom, args.context_len, args.prompt_len, page_size=args.page_size,
                    chunked_prefill_size=args.chunked_prefill_size)
        for p in pools
    ]
    rows = [
        ("full-attention pool (tokens)", *(f"{p.full_tokens:,}" for p in pools)),
        ("sliding-window pool (tokens)", *(f"{p.swa_tokens:,}" for p in pools)),
        ("bytes per full-pool token", *(f"{p.cell_bytes:,.0f}" for p in pools)),
        (f"requests of {args.context_len:,} tokens, full pool", *(f"{f.full:,}" for f in fits)),
        ("  ... sliding-window pool", *(f"{f.swa:,}" for f in fits)),
        ("  concurrent requests (binding pool)", *(f"{f.requests:,} ({f.binding})" for f in fits)),
    ]
    for p in pools:
        if not p.admits_a_request(geom, args.page_size):
            rows.append((f"ratio {p.ratio:g}: SGLang refuses to start", "SWA pool <= window + page", ""))
    return rows


def _print_table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))


def plot_capacity(
    path: str,
    geom: KVGeometry,
    args: argparse.Namespace,
    kv_mem_bytes: int,
    marks: dict[str, float],
) -> None:
    """Pool tokens and concurrent requests against the ratio, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = [round(0.02 * i, 2) for i in range(1, 51)]
    pools = [
        pool_sizes(geom, kv_mem_bytes, r, page_size=args.page_size, kv_bytes=KV_DTYPE_BYTES[args.kv_dtype],
                   tp=args.tp, draft_layers=args.mtp_draft_layers)
        for r in ratios
    ]
    fits = [
        concurrency(p, geom, args.context_len, args.prompt_len, page_size=args.page_size,
                    chunked_prefill_size=args.chunked_prefill_size)
        for p in pools
    ]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 8), sharex=True)
    top.plot(ratios, [p.full_tokens / 1e6 for p in pools], label="full-attention pool")
    top.plot(ratios, [p.swa_tokens / 1e6 for p in pools], label="sliding-window pool")
    top.set_ylabel("capacity (million tokens)")
    top.set_title(f"{geom.name}: {args.kv_mem_gb:g} GiB of KV cache, TP={args.tp}, {args.kv_dtype}")
    bottom.plot(ratios, [f.full for f in fits], label="full pool fits")
    bottom.plot(ratios, [f.swa for f in fits], label="sliding-window pool fits")
    bottom.plot(ratios, [f.requests for f in fits], "k--", label="concurrent requests")
    bottom.set_ylabel(f"requests of {args.context_len:,} tokens")
    bottom.set_xlabel("--swa-full-tokens-ratio")
    for ax in (top, bottom):
        for label, r in marks.items():
            ax.axvline(r, color="grey", linestyle=":")
            ax.annotate(label, (r, 1), xycoords=("data", "axes fraction"), rotation=90,
                        va="top", ha="right", fontsize=8)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cmd_pools(args: argparse.Namespace) -> int:
    try:
        name, config = load_config(args.model)
        geom = geometry(config, name)
        ours, why = plugin_ratio(config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.prompt_len is None:
        args.prompt_len = args.context_len
    if not 0 < args.prompt_len <= args.context_len:
        print("error: --prompt-len must be in (0, --context-len]", file=sys.stderr)
        return 2
    kv_mem_bytes = int(args.kv_mem_gb * GIB)
    kv_bytes = KV_DTYPE_BYTES[args.kv_dtype]
    if args.context_len > geom.context_len:
        print(f"note: --context-len {args.context_len:,} exceeds the model's {geom.context_len:,}", file=sys.stderr)
    ratios = {"SGLang default": SGLANG_DEFAULT_SWA_FULL_TOKENS_RATIO, "with sglang-gemma4": ours}
    pools = [
        pool_sizes(geom, kv_mem_bytes, r, page_size=args.page_size, kv_bytes=kv_bytes, tp=args.tp,
                   draft_layers=args.mtp_draft_layers)
        for r in ratios.values()
    ]

    print(
        f"{geom.name} ({geom.architecture}): {geom.full_layers} full-attention layers "
        f"({geom.full_kv_heads} KV heads x {geom.full_head_dim}), {geom.swa_layers} sliding layers "
        f"({geom.swa_kv_heads} KV heads x {geom.swa_head_dim}, window {geom.window + 1})"
    )
    if geom.kv_shared_layers:
        print(f"  {geom.kv_shared_layers} KV-shared layers: SGLang still gives them pool rows, counted here")
    if args.mtp_draft_layers:
        print(f"  + {args.mtp_draft_layers} frozen-KV MTP draft layers priced as full-attention rows (as SGLang does)")
    print(
        f"KV budget {args.kv_mem_gb:g} GiB, {args.kv_dtype}, TP={args.tp}, page {args.page_size}; "
        f"requests: {args.context_len:,} tokens, {args.prompt_len:,} of them prompt, "
        f"chunked prefill {args.chunked_prefill_size:,}"
    )
    print(f"plugin ratio: {ours:g} ({why})\n")
    header = ("", *(f"{label} ({r:g})" for label, r in ratios.items()))
    _print_table(_rows(geom, pools, args), header)

    if args.check_sglang:
        if args.tp != 1:
            print("\n--check-sglang runs at TP=1 only", file=sys.stderr)
            return 2
        theirs = [
            sglang_pool_sizes(config, kv_mem_bytes, r, page_size=args.page_size, kv_dtype=args.kv_dtype,
                              draft_layers=args.mtp_draft_layers)
            for r in ratios.values()
        ]
        same = [(p.full_tokens, p.swa_tokens) == (t.full_tokens, t.swa_tokens) for p, t in zip(pools, theirs)]
        for p, t, ok in zip(pools, theirs, same):
            print(f"\nSGLang HybridSWAPoolConfigurator, ratio {p.ratio:g}: full {t.full_tokens:,}, "
                  f"SWA {t.swa_tokens:,} -> {'same' if ok else 'DIFFERENT'}", end="")
        print()
        if not all(same):
            return 1

    if args.plot:
        marks = {f"SGLang {SGLANG_DEFAULT_SWA_FULL_TOKENS_RATIO:g}": SGLANG_DEFAULT_SWA_FULL_TOKENS_RATIO}
        if not math.isclose(ours, SGLANG_DEFAULT_SWA_FULL_TOKENS_RATIO):
            marks[f"plugin {ours:g}"] = ours
        plot_capacity(args.plot, geom, args, kv_mem_bytes, marks)
        print(f"\nplot written to {os.path.abspath(args.plot)}")
    return 0


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Register ``pools`` on the ``python -m sglang_gemma4`` command line."""
    p = subparsers.add_parser(
        "pools",
        help="full and sliding-window KV pool capacities, SGLang's default ratio vs the plugin's",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--model", required=True,
                   help=f"built-in name ({', '.join(BUILTIN_CONFIGS)}) or a directory / config.json")
    p.add_argument("--kv-mem-gb", type=float, required=True,
                   help="GPU memory for the KV cache in GiB (SGLang's 'GB' in its memory log lines)")
    p.add_argument("--context-len", type=int, default=9216,
                   help="tokens per request, prompt + output (default 9216: 8k prompt + 1k output)")
    p.add_argument("--prompt-len", type=int, default=None, help="prompt tokens per request (default: --context-len)")
    p.add_argument("--page-size", type=int, default=1, help="SGLang --page-size (default 1)")
    p.add_argument("--chunked-prefill-size", type=int, default=8192,
                   help="SGLang --chunked-prefill-size (default 8192, SGLang's choice for 60-160 GB GPUs)")
    p.add_argument("--kv-dtype", choices=sorted(KV_DTYPE_BYTES), default="bfloat16", help="KV cache dtype")
    p.add_argument("--tp", type=int, default=1, help="attention tensor-parallel size (KV heads split across GPUs)")
    p.add_argument("--mtp-draft-layers", type=int, default=0,
                   help="layers of a Gemma-4 assistant draft (frozen-KV MTP); SGLang prices each like a "
                        "full-attention layer")
    p.add_argument("--check-sglang", action="store_true",
                   help="also run SGLang's HybridSWAPoolConfigurator on the CPU and compare (imports sglang)")
    p.add_argument("--plot", metavar="FILE.png", help="draw capacity against the ratio (needs matplotlib)")
    p.set_defaults(func=cmd_pools)
