"""Benchmark: what programmatic dependent launch (PDL) gains or loses in a layer, after the GEMMs.

The plugin launches some of its kernels with PDL on sm_90+
(``sglang_gemma4.kernels.dependent_launch``: its table, from this benchmark;
``SGLANG_GEMMA4_PDL=1`` all of them, ``=0`` none). In a model layer
each of them follows the cuBLAS GEMM that produces its input; the GEMM itself
is launched without PDL, so only the edge into our kernel can overlap. This
times each plugin kernel of a decode layer right after its GEMM, as in the
model (our kernels back to back would overlap more than a layer lets them):

    qkv_proj GEMM -> qkv_norm_rope         (Q-only GEMM on KV-shared layers)
    o_proj GEMM   -> triple_rmsnorm / post_attn_norm_add
    down GEMM     -> end_of_layer_norm                               (dense, MoE)
    down GEMM     -> rmsnorm_add -> PLE gate GEMM -> gelu_tanh_mul
                  -> PLE projection GEMM -> end_of_layer_norm        (PLE)

(the MoE's routing, expert GEMMs and attention are left out: their outputs are
precomputed inputs; in the model the MoE layer's end-of-layer kernel follows
SGLang's top-k sum of the experts rather than a GEMM). Implementations: ``pdl_off`` and ``pdl_on``, the same
calls captured without and with PDL for every kernel, ``pdl_auto``, the
plugin's default (PDL where ``dependent_launch.AUTO_MAX_ROWS`` says), and
``pdl_<family>``, PDL for one family of kernels only (``FAMILIES``). Reported
per layer and, times the layers of that kind, per decode step.

Run on the GPU machine (torch + triton + CUDA, no sglang)::

    PYTHONPATH=python python3 benchmarks/benchmark_dependent_launch.py
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from layer_decode import DTYPE, EPS, HEAD_DIM, KINDS, PLE_DIM, LayerInputs, LayerKind  # noqa: E402

from sglang_gemma4.kernels import end_of_layer_norm as eol  # noqa: E402
from sglang_gemma4.kernels import ple_tail as pt  # noqa: E402
from sglang_gemma4.kernels import qkv_norm_rope as qnr  # noqa: E402
from sglang_gemma4.kernels import triple_rmsnorm as tri  # noqa: E402
from sglang_gemma4.kernels.dependent_launch import dependent_launch  # noqa: E402

BATCHES = [1, 8, 32, 128, 512]
# Kernel families, each launched with PDL alone in a variant of its own.
FAMILIES = ("qkv_norm_rope", "post_attn", "ple_tail", "end_of_layer")  # as dependent_launch names them


class GemmInputs:
    """The GEMM weights of one layer and the activations they multiply (bf16, scaled ~1/sqrt(k))."""

    def __init__(self, k: LayerKind, t: LayerInputs, tokens: int) -> None:
        gen = torch.Generator(device="cuda").manual_seed(7)

        def randn(*shape: int) -> torch.Tensor:
            return (torch.randn(*shape, device="cuda", generator=gen) * shape[0] ** -0.5).to(DTYPE)

        h = k.hidden
        qkv_cols = t.q_size if k.kv_shared else t.q_size + 2 * t.kv_size
        self.x_in = randn(tokens, h)
        self.w_qkv = randn(h, qkv_cols)
        self.attn = randn(tokens, t.q_size)
        self.w_o = randn(t.q_size, h)
        inner = k.moe_intermediate if k.kind == "moe" else k.intermediate
        self.act = randn(tokens, inner)
        self.w_down = randn(inner, h)
        if k.kind == "ple":
            self.w_ple_gate = randn(h, PLE_DIM)
            self.w_ple_proj = randn(PLE_DIM, h)


def layer_with_gemms(k: LayerKind, t: LayerInputs, g: GemmInputs, mode_of: Callable[[str], str]) -> torch.Tensor:
    """The layer's GEMMs and plugin kernels, each kernel family launched in the PDL mode ``mode_of(family)``."""

    def family(name: str):
        return dependent_launch(mode_of(name))

    heads = dict(num_q_heads=k.q_heads, num_kv_heads=k.kv_heads, head_dim=HEAD_DIM)
    qkv = g.x_in @ g.w_qkv
    with family("qkv_norm_rope"):
        if k.kv_shared:
            qnr.qkv_norm_rope(qkv, None, None, t.positions, t.cos_sin_cache, t.w_q, None, EPS, **heads)
        else:
            q, key, value = qkv.split([t.q_size, t.kv_size, t.kv_size], dim=-1)
            qnr.qkv_norm_rope(q, key, value, t.positions, t.cos_sin_cache, t.w_q, t.w_k, EPS, **heads)
    attn_out = g.attn @ g.w_o
    with family("post_attn"):
        if k.kind == "moe":
            tri.post_attn_triple_rmsnorm(
                attn_out, t.h, t.w_post_attn, t.w_pre_ff, t.w_router, t.w_pre_ff_2, EPS, residual_out=t.h
            )
        else:
            tri.post_attn_norm_add(attn_out, t.h, t.w_post_attn, t.w_pre_ff, EPS, residual_out=t.h)
    mlp_out = g.act @ g.w_down
    if k.kind == "dense":
        with family("end_of_layer"):
            return eol.dense_end_of_layer_norm(mlp_out, t.w_post_ff, t.h, t.scalar, t.w_next, EPS)[0]
    if k.kind == "moe":
        with family("end_of_layer"):
            return eol.moe_end_of_layer_norm(
                mlp_out, t.w_post_1, t.experts, t.w_post_2, t.w_post_ff, t.h, t.scalar, t.w_next, EPS
            )[0]
    with family("ple_tail"):
        stream = pt.rmsnorm_add(mlp_out, t.w_post_ff, t.h, EPS)
    gate = stream @ g.w_ple_gate
    with family("ple_tail"):
        g_act = pt.gelu_tanh_mul(gate, t.ple)
    projected = g_act @ g.w_ple_proj
    with family("end_of_layer"):
        return eol.ple_end_of_layer_norm(projected, t.w_ple, stream, t.scalar, t.w_next, EPS)[0]


def _mode_for(only: str | None, mode: str, family: str) -> str:
    return mode if only is None else ("on" if family == only else "off")


def variants(k: LayerKind) -> dict[str, Callable[[str], str]]:
    """``pdl_off``, ``pdl_on`` (every kernel), ``pdl_auto`` (the plugin's default:
    the measured table) and ``pdl_<family>`` (that family only)."""
    families = FAMILIES if k.kind == "ple" else tuple(f for f in FAMILIES if f != "ple_tail")
    return {
        **{f"pdl_{m}": partial(_mode_for, None, m) for m in ("off", "on", "auto")},
        **{f"pdl_{f}": partial(_mode_for, f, "on") for f in families},
    }


def measure(k: LayerKind, tokens: int) -> list[dict]:
    t = LayerInputs(k, tokens, seed=0)
    g = GemmInputs(k, t, tokens)
    if k.kind == "moe":
        t.experts = t.w2_out.sum(dim=1)  # moe_sum_reduce's output: the experts run outside this sequence
    h_in = t.h.clone()
    outputs = {}
    for name, mode_of in variants(k).items():
        t.h.copy_(h_in)
        outputs[name] = layer_with_gemms(k, t, g, mode_of).clone()
        if not torch.equal(outputs[name], outputs["pdl_off"]):
            raise AssertionError(f"{k.name} x {tokens}: {name} changed the layer's output")
    times = harness.graph_us_interleaved(
        {name: [partial(layer_with_gemms, k, t, g, mode_of)] for name, mode_of in variants(k).items()}
    )
    base = {"op": "dependent_launch", "model": k.model, "layer": k.name, "kind": k.kind, "hidden": k.hidden,
            "tokens": tokens, "layers_of_kind": k.layers}
    return [{**base, "impl": name, "us": round(us, 3), "bitwise_same": True} for name, us in times.items()]


def summarize(rows: list[dict]) -> list[dict]:
    table = []
    for (layer, tokens), impls in harness.impls_by_size(rows, "layer", "tokens"):
        off, on = impls["pdl_off"], impls["pdl_on"]
        table.append({
            "layer": layer, "tokens": tokens, "pdl_off_us": off["us"], "pdl_on_us": on["us"],
            "saved_us": round(off["us"] - on["us"], 3),
            "step_saved_us": round((off["us"] - on["us"]) * off["layers_of_kind"], 1),
            "pdl_auto_us": impls["pdl_auto"]["us"],
            "auto_saved_us": round(off["us"] - impls["pdl_auto"]["us"], 3),
            "auto_step_saved_us": round((off["us"] - impls["pdl_auto"]["us"]) * off["layers_of_kind"], 1),
            **{f"saved_{f}_us": round(off["us"] - impls[f"pdl_{f}"]["us"], 3) for f in FAMILIES if f"pdl_{f}" in impls},
        })
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="*", default=BATCHES)
    args = parser.parse_args()
    started = time.perf_counter()
    rows: list[dict] = []
    for k in KINDS:
        for tokens in args.batches:
            rows += measure(k, tokens)
        print(f"[{time.perf_counter() - started:6.1f}s] {k.name} done", flush=True)
    table = summarize(rows)
    path = harness.write_results(
        "dependent_launch",
        rows,
        copy_bw=harness.copy_bandwidth_TBps(),
        plot=lambda r, p: harness.plot_vs_tokens(r, p, title="layer kernels after their GEMMs (bf16)", group_key="layer"),
        extra={
            "impls": {
                "pdl_off": "the plugin kernels launched without PDL, each after its GEMM (torch.matmul, cuBLAS)",
                "pdl_on": "the same calls, every kernel launched with PDL (SGLANG_GEMMA4_PDL=1)",
                "pdl_auto": "the plugin's default (SGLANG_GEMMA4_PDL unset): PDL where dependent_launch.AUTO_MAX_ROWS says",
                "pdl_<family>": "only that family with PDL: qkv_norm_rope, post_attn (triple_rmsnorm / "
                "post_attn_norm_add), ple_tail (rmsnorm_add, gelu_tanh_mul), end_of_layer (end_of_layer_norm)",
            },
            "summary": table,
        },
    )
    print(f"wrote {path} ({time.perf_counter() - started:.0f}s)")
    harness.print_table(
        table,
        ["layer", "tokens", "pdl_off_us", "pdl_on_us", "saved_us", "auto_saved_us", "auto_step_saved_us"]
        + [f"saved_{f}_us" for f in FAMILIES],
    )


if __name__ == "__main__":
    main()
