"""Benchmark: one Gemma-4 decoder layer's decode step, outside the GEMMs and attention.

For each layer kind (E2B/E4B PLE layers, with and without KV sharing; the
26B-A4B MoE layer; the 31B dense layer) this builds the non-GEMM,
non-attention work of one decode step three times, captures each in a CUDA
graph and reports microseconds and launches per layer at batch 1..512:

* ``sglang``: the launches SGLang 0.5.23 issues (DESIGN.md section 4), one
  single-op stand-in per launch (benchmarks/sglang_ops.py; the machine has no
  sglang / sgl_kernel / FlashInfer), eager ops (the PLE tail, a KV-shared
  layer's dummy key) as the same PyTorch ops:

      input_layernorm | qkv_rmsnorm, [zeros], rope, [kv_store] | post_attention_layernorm,
      fused_add_rmsnorm | gelu_tanh_and_mul | tail

  tail: dense ``rmsnorm_residual_scalar``; MoE router norm, pre_ff_norm_2,
  routing, moe_align (2), expert activation, moe_sum_reduce,
  ``dual_rmsnorm_residual_scalar``; PLE seven eager ops.
* ``fused``: the plugin's sequence, from the kernels in
  ``sglang_gemma4.kernels`` that are importable (the JSON lists them): the
  next layer's input norm folded into this layer's last kernel
  (end_of_layer_norm), q/k/v norm + RoPE in one launch and Q only on
  KV-shared layers (qkv_norm_rope), the post-attention norms in one launch
  (triple_rmsnorm: the MoE triple norm, the dense/PLE norm + add + pre-FFN
  norm), the PLE tail in three kernels (ple_tail). Ops without a plugin
  kernel stay SGLang's stand-ins. Each of these is wired into the model by a
  plugin patch (attention_prologue, triple_rmsnorm, post_attn_norm_add,
  ple_tail, end_of_layer_norm).
* ``torch_compile``: Inductor on the fp32 references of each stretch between
  GEMMs (qkv norm+RoPE; post-attention norm+add+norms; MLP activation; the
  layer tail with the next input norm), ``torch.compile`` defaults (static at
  batch 1, then dynamic in the token count); the KV store and MoE internals
  stay stand-ins (not pointwise/norm work Inductor would own).

GEMM outputs and the attention output are precomputed inputs. Shapes are the
sliding-attention layers' (head_dim 256). Per decode step the saving is
``(sglang - fused) x layers of that kind`` (DESIGN.md section 6).

Run on the GPU machine (torch + triton + CUDA, no sglang)::

    PYTHONPATH=python python3 benchmarks/layer_decode.py
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
import time
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import sglang_ops as so  # noqa: E402

DTYPE = torch.bfloat16
DEVICE = "cuda"  # a module constant so a CPU dry run (Triton interpreter) can swap it
EPS = 1e-6
BATCHES = [1, 8, 32, 128, 512]
HEAD_DIM = 256
PLE_DIM = 256
NUM_EXPERTS, TOP_K, MOE_BLOCK_M = 128, 8, 16
MAX_POS = 8192


@dataclasses.dataclass(frozen=True)
class LayerKind:
    model: str
    kind: str  # "dense" | "moe" | "ple"
    hidden: int
    q_heads: int
    kv_heads: int
    intermediate: int
    layers: int  # layers of this kind in the model
    kv_shared: bool = False
    moe_intermediate: int = 0

    @property
    def name(self) -> str:
        return f"{self.model} {self.kind}{' kv-shared' if self.kv_shared else ''}"


# DESIGN.md section 6. E2B: 35 layers, the last 20 KV-shared with a double-wide MLP;
# E4B: 42 layers, the last 18 KV-shared.
KINDS = [
    LayerKind("E2B", "ple", 1536, 8, 1, 6144, 15),
    LayerKind("E2B", "ple", 1536, 8, 1, 12288, 20, kv_shared=True),
    LayerKind("E4B", "ple", 2560, 8, 2, 10240, 24),
    LayerKind("E4B", "ple", 2560, 8, 2, 10240, 18, kv_shared=True),
    LayerKind("26B-A4B", "moe", 2816, 16, 8, 2112, 30, moe_intermediate=704),
    LayerKind("31B", "dense", 5376, 32, 16, 21504, 60),
]
LAYERS_PER_MODEL = {"E2B": 35, "E4B": 42, "26B-A4B": 30, "31B": 60}

# Issue 6's targets.
LAUNCH_TARGETS = {"moe": 9, "dense": 5, "ple": 7}
SPEEDUP_MIN, SPEEDUP_BATCH_MAX = 1.8, 32


# --------------------------------------------------------------------------- plugin kernels


def load_plugin_kernels() -> tuple[dict[str, ModuleType], dict[str, str]]:
    """The plugin's kernel modules that import and have what this benchmark calls."""
    wanted = {
        "end_of_layer_norm": ("dense_end_of_layer_norm", "moe_end_of_layer_norm", "ple_end_of_layer_norm"),
        "qkv_norm_rope": ("qkv_norm_rope",),
        "triple_rmsnorm": ("post_attn_triple_rmsnorm", "post_attn_norm_add"),
        "ple_tail": ("rmsnorm_add", "gelu_tanh_mul", "rmsnorm_add_scale"),
    }
    found, missing = {}, {}
    for name, functions in wanted.items():
        try:
            mod = importlib.import_module(f"sglang_gemma4.kernels.{name}")
        except Exception as e:  # noqa: BLE001 - report and benchmark without it
            missing[name] = f"{type(e).__name__}: {e}"
            continue
        absent = [f for f in functions if not hasattr(mod, f)]
        if absent:
            missing[name] = f"lacks {', '.join(absent)}"
        else:
            found[name] = mod
    return found, missing


# --------------------------------------------------------------------------- inputs


class LayerInputs:
    """One decode step's non-GEMM inputs of one layer (GEMM outputs precomputed)."""

    def __init__(self, k: LayerKind, tokens: int, seed: int) -> None:
        gen = torch.Generator(device=DEVICE).manual_seed(seed)

        def randn(*shape: int, scale: float = 1.0, dtype: torch.dtype = DTYPE) -> torch.Tensor:
            return (scale * torch.randn(*shape, device=DEVICE, generator=gen)).to(dtype)

        def weight(n: int) -> torch.Tensor:
            return randn(n, scale=0.1) + 1

        h, t = k.hidden, tokens
        self.tokens = tokens
        self.q_size, self.kv_size = k.q_heads * HEAD_DIM, k.kv_heads * HEAD_DIM
        self.h = randn(t, h)  # the stream entering the layer (also its residual)
        self.w_in, self.w_post_attn, self.w_pre_ff, self.w_post_ff, self.w_next = (weight(h) for _ in range(5))
        self.qkv = randn(t, self.q_size + 2 * self.kv_size)  # qkv GEMM output
        self.q_only = randn(t, self.q_size)  # the Q-only GEMM output of a KV-shared layer
        self.w_q, self.w_k = weight(HEAD_DIM), weight(HEAD_DIM)
        self.positions = torch.randint(0, MAX_POS, (t,), device=DEVICE, generator=gen)
        angles = torch.arange(MAX_POS, device=DEVICE, dtype=torch.float32)[:, None] / (
            10000.0 ** (torch.arange(0, HEAD_DIM, 2, device=DEVICE, dtype=torch.float32) / HEAD_DIM)
        )
        self.cos_sin_cache = torch.cat((angles.cos(), angles.sin()), dim=-1)
        slots = max(4 * t, 1024)
        self.k_cache = torch.empty(slots, self.kv_size, device=DEVICE, dtype=DTYPE)
        self.v_cache = torch.empty_like(self.k_cache)
        self.loc = torch.randperm(slots, device=DEVICE, generator=gen)[:t]
        self.attn_out = randn(t, h)  # o_proj output
        self.gate_up = randn(t, 2 * k.intermediate)  # gate_up GEMM output
        self.mlp_out = randn(t, h)  # down GEMM output
        self.scalar = torch.tensor([0.7], device=DEVICE, dtype=DTYPE)
        if k.kind == "ple":
            self.gate = randn(t, PLE_DIM)  # per_layer_input_gate output
            self.per_layer_inputs = randn(t, LAYERS_PER_MODEL[k.model], PLE_DIM)
            self.ple = self.per_layer_inputs[:, 3, :]
            self.projected = randn(t, h)  # per_layer_projection output
            self.w_ple = weight(h)
        if k.kind == "moe":
            self.w_router = weight(h) * h**-0.5
            self.w_pre_ff_2, self.w_post_1, self.w_post_2 = weight(h), weight(h), weight(h)
            self.router_logits = randn(t, NUM_EXPERTS)  # router GEMM output
            self.w13_out = randn(t * TOP_K, 2 * k.moe_intermediate)  # fused_moe w13 output
            self.w2_out = randn(t, TOP_K, h)  # fused_moe w2 output (routed weights applied)

    def split_qkv(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)


# --------------------------------------------------------------------------- sequences


def moe_internals(t: LayerInputs, top_k_sum: bool = True) -> torch.Tensor:
    """Routing, alignment, expert activation and the top-k sum: SGLang's launches. Without
    ``top_k_sum`` the experts' unsummed rows (the plugin's ``moe_sum_fold`` sums them in the
    end-of-layer kernel)."""
    _, ids = so.topk_routing(t.router_logits, TOP_K)
    so.moe_align(ids, NUM_EXPERTS, MOE_BLOCK_M)
    so.gelu_tanh_and_mul(t.w13_out)
    return so.moe_sum_reduce(t.w2_out) if top_k_sum else t.w2_out


def sglang_layer(k: LayerKind, t: LayerInputs) -> torch.Tensor:
    so.rmsnorm(t.h, t.w_in, EPS)  # input_layernorm; its output feeds the qkv GEMM
    q, key, value = t.split_qkv()
    if k.kv_shared:
        so.qkv_rmsnorm(q, None, None, t.w_q, None, k.q_heads, k.kv_heads, HEAD_DIM, EPS)
        dummy_key = torch.zeros_like(q[:, : t.kv_size])
        so.rope(t.positions, q, dummy_key, t.cos_sin_cache, k.q_heads, k.kv_heads, HEAD_DIM)
    else:
        so.qkv_rmsnorm(q, key, value, t.w_q, t.w_k, k.q_heads, k.kv_heads, HEAD_DIM, EPS)
        so.rope(t.positions, q, key, t.cos_sin_cache, k.q_heads, k.kv_heads, HEAD_DIM)
        so.kv_store(key, value, t.k_cache, t.v_cache, t.loc)
    ffn_in = so.rmsnorm(t.attn_out, t.w_post_attn, EPS)
    so.fused_add_rmsnorm(ffn_in, t.h, t.w_pre_ff, EPS)  # t.h becomes the residual r
    so.gelu_tanh_and_mul(t.gate_up)
    if k.kind == "dense":
        return so.rmsnorm_residual_scalar(t.mlp_out, t.w_post_ff, t.h, t.scalar, EPS)
    if k.kind == "moe":
        so.rmsnorm(t.h, t.w_router, EPS)
        so.rmsnorm(t.h, t.w_pre_ff_2, EPS)
        h2 = moe_internals(t)
        return so.dual_rmsnorm_residual_scalar(t.mlp_out, t.w_post_1, h2, t.w_post_2, t.w_post_ff, t.h, t.scalar, EPS)
    stream = so.rmsnorm(t.mlp_out, t.w_post_ff, EPS) + t.h
    F.gelu(t.gate, approximate="tanh") * t.ple
    return (stream + so.rmsnorm(t.projected, t.w_ple, EPS)) * t.scalar


def plugin_layer(kernels: dict[str, ModuleType], k: LayerKind, t: LayerInputs, moe_sum_fold: bool = False) -> torch.Tensor:
    eol, qnr, tri, pt = (kernels.get(n) for n in ("end_of_layer_norm", "qkv_norm_rope", "triple_rmsnorm", "ple_tail"))
    if eol is None:  # the previous layer's end did not produce this layer's normalized input
        so.rmsnorm(t.h, t.w_in, EPS)
    heads = dict(num_q_heads=k.q_heads, num_kv_heads=k.kv_heads, head_dim=HEAD_DIM)
    if k.kv_shared and qnr is not None:
        qnr.qkv_norm_rope(t.q_only, None, None, t.positions, t.cos_sin_cache, t.w_q, None, EPS, **heads)
    elif k.kv_shared:
        so.qkv_rmsnorm(t.q_only, None, None, t.w_q, None, k.q_heads, k.kv_heads, HEAD_DIM, EPS)
        so.rope(t.positions, t.q_only, torch.zeros_like(t.q_only[:, : t.kv_size]), t.cos_sin_cache, k.q_heads, k.kv_heads, HEAD_DIM)
    else:
        q, key, value = t.split_qkv()
        if qnr is not None:
            qnr.qkv_norm_rope(q, key, value, t.positions, t.cos_sin_cache, t.w_q, t.w_k, EPS, **heads)
        else:
            so.qkv_rmsnorm(q, key, value, t.w_q, t.w_k, k.q_heads, k.kv_heads, HEAD_DIM, EPS)
            so.rope(t.positions, q, key, t.cos_sin_cache, k.q_heads, k.kv_heads, HEAD_DIM)
        so.kv_store(key, value, t.k_cache, t.v_cache, t.loc)
    if k.kind == "moe" and tri is not None:
        tri.post_attn_triple_rmsnorm(t.attn_out, t.h, t.w_post_attn, t.w_pre_ff, t.w_router, t.w_pre_ff_2, EPS, residual_out=t.h)
    elif tri is not None:
        tri.post_attn_norm_add(t.attn_out, t.h, t.w_post_attn, t.w_pre_ff, EPS, residual_out=t.h)
    else:
        ffn_in = so.rmsnorm(t.attn_out, t.w_post_attn, EPS)
        so.fused_add_rmsnorm(ffn_in, t.h, t.w_pre_ff, EPS)
        if k.kind == "moe":
            so.rmsnorm(t.h, t.w_router, EPS)
            so.rmsnorm(t.h, t.w_pre_ff_2, EPS)
    so.gelu_tanh_and_mul(t.gate_up)
    if k.kind == "dense":
        if eol is not None:
            return eol.dense_end_of_layer_norm(t.mlp_out, t.w_post_ff, t.h, t.scalar, t.w_next, EPS)[0]
        return so.rmsnorm_residual_scalar(t.mlp_out, t.w_post_ff, t.h, t.scalar, EPS)
    if k.kind == "moe":
        if moe_sum_fold and eol is not None and t.tokens <= eol.EXPERT_SUM_FOLD_MAX_TOKENS:
            rows = moe_internals(t, top_k_sum=False)
            return eol.moe_expert_sum_end_of_layer_norm(
                t.mlp_out, t.w_post_1, rows, t.w_post_2, t.w_post_ff, t.h, t.scalar, t.w_next, EPS
            )[0]
        h2 = moe_internals(t)
        if eol is not None:
            return eol.moe_end_of_layer_norm(
                t.mlp_out, t.w_post_1, h2, t.w_post_2, t.w_post_ff, t.h, t.scalar, t.w_next, EPS
            )[0]
        return so.dual_rmsnorm_residual_scalar(t.mlp_out, t.w_post_1, h2, t.w_post_2, t.w_post_ff, t.h, t.scalar, EPS)
    if pt is not None:
        stream = pt.rmsnorm_add(t.mlp_out, t.w_post_ff, t.h, EPS)
        pt.gelu_tanh_mul(t.gate, t.ple)
    else:
        stream = so.rmsnorm(t.mlp_out, t.w_post_ff, EPS) + t.h
        F.gelu(t.gate, approximate="tanh") * t.ple
    if eol is not None:
        return eol.ple_end_of_layer_norm(t.projected, t.w_ple, stream, t.scalar, t.w_next, EPS)[0]
    if pt is not None:
        return pt.rmsnorm_add_scale(t.projected, t.w_ple, stream, t.scalar, EPS)
    return (stream + so.rmsnorm(t.projected, t.w_ple, EPS)) * t.scalar


# --------------------------------------------------------------------------- torch.compile of the references


def _norm(x: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + EPS)
    return y if w is None else y * w.float()


def ref_qkv_norm_rope(q, key, value, positions, cache, w_q, w_k, q_heads: int, kv_heads: int):
    def norm_rope(x, w, heads):
        n = _norm(x.reshape(x.shape[0], heads, HEAD_DIM), w).to(x.dtype).float()
        cs = cache[positions][:, None, :]
        half = HEAD_DIM // 2
        c, s = cs[..., :half], cs[..., half:]
        x1, x2 = n[..., :half], n[..., half:]
        return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), -1).to(x.dtype).reshape(x.shape)

    if key is None:
        return norm_rope(q, w_q, q_heads), None, None
    v = _norm(value.reshape(value.shape[0], kv_heads, HEAD_DIM)).to(value.dtype).reshape(value.shape)
    return norm_rope(q, w_q, q_heads), norm_rope(key, w_k, kv_heads), v


def ref_post_attn(attn_out, residual, w_post_attn, w_pre_ff, w_router=None, w_pre_ff_2=None):
    s = _norm(attn_out, w_post_attn).to(attn_out.dtype).float() + residual.float()
    r = s.to(attn_out.dtype)
    outs = [r, _norm(s, w_pre_ff).to(r.dtype)]
    if w_router is not None:
        outs += [_norm(r, w_router).to(r.dtype), _norm(r, w_pre_ff_2).to(r.dtype)]
    return outs


def ref_gelu_and_mul(x):
    n = x.shape[-1] // 2
    return (F.gelu(x[:, :n].float(), approximate="tanh") * x[:, n:].float()).to(x.dtype)


def ref_dense_tail(x, w, residual, scalar, w_next):
    h = ((_norm(x, w) + residual.float()) * scalar.float()).to(x.dtype)
    return h, _norm(h, w_next).to(h.dtype)


def ref_moe_tail(h1, w1, h2, w2, w3, residual, scalar, w_next):
    h = ((_norm(_norm(h1, w1) + _norm(h2, w2), w3) + residual.float()) * scalar.float()).to(h1.dtype)
    return h, _norm(h, w_next).to(h.dtype)


def ref_ple_first(x, w, residual):
    return (_norm(x, w).to(x.dtype).float() + residual.float()).to(x.dtype)


def ref_ple_gelu_mul(gate, ple):
    return (F.gelu(gate.float(), approximate="tanh").to(gate.dtype).float() * ple.float()).to(gate.dtype)


def ref_ple_last(x, w, stream, scalar, w_next):
    h = ((_norm(x, w).to(x.dtype).float() + stream.float()).to(x.dtype).float() * scalar.float()).to(x.dtype)
    return h, _norm(h, w_next).to(h.dtype)


class CompiledStretches:
    """Fresh ``torch.compile`` wrappers of every reference stretch (one set per layer kind)."""

    def __init__(self) -> None:
        torch._dynamo.reset()  # no cache or dynamic-shape decisions carried over from another kind
        c = torch.compile
        self.qkv_norm_rope, self.post_attn, self.gelu_and_mul = c(ref_qkv_norm_rope), c(ref_post_attn), c(ref_gelu_and_mul)
        self.dense_tail, self.moe_tail = c(ref_dense_tail), c(ref_moe_tail)
        self.ple_first, self.ple_gelu_mul, self.ple_last = c(ref_ple_first), c(ref_ple_gelu_mul), c(ref_ple_last)


def compiled_layer(c: CompiledStretches, k: LayerKind, t: LayerInputs) -> torch.Tensor:
    if k.kv_shared:
        c.qkv_norm_rope(t.q_only, None, None, t.positions, t.cos_sin_cache, t.w_q, None, k.q_heads, k.kv_heads)
    else:
        q, key, value = t.split_qkv()
        _, key, value = c.qkv_norm_rope(q, key, value, t.positions, t.cos_sin_cache, t.w_q, t.w_k, k.q_heads, k.kv_heads)
        so.kv_store(key, value, t.k_cache, t.v_cache, t.loc)
    if k.kind == "moe":
        r, *_ = c.post_attn(t.attn_out, t.h, t.w_post_attn, t.w_pre_ff, t.w_router, t.w_pre_ff_2)
    else:
        r, _ = c.post_attn(t.attn_out, t.h, t.w_post_attn, t.w_pre_ff)
    c.gelu_and_mul(t.gate_up)
    if k.kind == "dense":
        return c.dense_tail(t.mlp_out, t.w_post_ff, r, t.scalar, t.w_next)[0]
    if k.kind == "moe":
        return c.moe_tail(t.mlp_out, t.w_post_1, moe_internals(t), t.w_post_2, t.w_post_ff, r, t.scalar, t.w_next)[0]
    stream = c.ple_first(t.mlp_out, t.w_post_ff, r)
    c.ple_gelu_mul(t.gate, t.ple)
    return c.ple_last(t.projected, t.w_ple, stream, t.scalar, t.w_next)[0]


# --------------------------------------------------------------------------- measurement


def check_outputs_agree(k: LayerKind, tokens: int, impls: dict[str, Callable]) -> None:
    """Every sequence computes the same layer output from the same inputs (to a few bf16
    roundings) before it is timed; each gets fresh inputs, as the sequences update some in place."""
    outputs = {name: fn(k, LayerInputs(k, tokens, seed=123)).float() for name, fn in impls.items()}
    want = outputs["sglang"]
    for name, got in outputs.items():
        torch.testing.assert_close(got, want, rtol=2**-6, atol=2**-5, msg=lambda m: f"{k.name} {name}: {m}")


def measure(k: LayerKind, tokens: int, impls: dict[str, Callable]) -> list[dict]:
    check_outputs_agree(k, tokens, impls)
    per_set = 2 * (k.hidden * 8 + 2 * k.intermediate) * tokens * DTYPE.itemsize
    sets = [LayerInputs(k, tokens, seed=i) for i in range(harness.input_sets(per_set))]
    base = {
        "op": "layer_decode", "model": k.model, "layer": k.name, "kind": k.kind, "kv_shared": k.kv_shared,
        "hidden": k.hidden, "tokens": tokens, "layers_of_kind": k.layers,
    }
    times = harness.graph_us_interleaved({name: [partial(fn, k, s) for s in sets] for name, fn in impls.items()})
    return [
        {**base, "impl": name, "us": round(times[name], 3), "launches": harness.count_launches(partial(fn, k, sets[0])), "bytes": None}
        for name, fn in impls.items()
    ]


def summarize(rows: list[dict]) -> list[dict]:
    table = []
    for (layer, tokens), impls in harness.impls_by_size(rows, "layer", "tokens"):
        s, f = impls["sglang"], impls["fused"]
        line = {
            "layer": layer, "tokens": tokens, "sglang_us": s["us"], "fused_us": f["us"],
            "compile_us": impls.get("torch_compile", {}).get("us", float("nan")),
            "x_sglang": s["us"] / f["us"], "launches_sglang": s["launches"], "launches_fused": f["launches"],
            "step_saved_us": (s["us"] - f["us"]) * s["layers_of_kind"],
        }
        verdicts = []
        if f["launches"] > LAUNCH_TARGETS[s["kind"]]:
            verdicts.append(f"LAUNCHES>{LAUNCH_TARGETS[s['kind']]}")
        if tokens <= SPEEDUP_BATCH_MAX and line["x_sglang"] < SPEEDUP_MIN:
            verdicts.append("BELOW_1.8X")
        if "torch_compile" in impls and f["us"] > impls["torch_compile"]["us"]:
            verdicts.append("SLOWER_THAN_COMPILE")
        line["verdict"] = ",".join(verdicts) or "ok"
        table.append(line)
    return table


def per_step(rows: list[dict]) -> list[dict]:
    """Per model and batch: the per-layer times summed over the model's layers."""
    out: dict[tuple, dict] = {}
    for r in rows:
        key = (r["model"], r["tokens"])
        entry = out.setdefault(key, {"model": r["model"], "tokens": r["tokens"]})
        entry[f"{r['impl']}_us"] = round(entry.get(f"{r['impl']}_us", 0.0) + r["us"] * r["layers_of_kind"], 1)
    for entry in out.values():
        entry["saved_us"] = round(entry["sglang_us"] - entry["fused_us"], 1)
    return sorted(out.values(), key=lambda e: (e["model"], e["tokens"]))


def markdown(doc: dict) -> str:
    """README tables from a results JSON: per-layer time and launches, and per decode step."""
    lines = [
        f"{doc['device']}, torch {doc['torch']}, triton {doc['triton']}, {doc['date']}; plugin kernels: "
        f"{', '.join(doc['plugin_kernels'])}",
        "",
        "| layer | batch | SGLang 0.5.23 us (launches) | plugin us (launches) | torch.compile us | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for line in summarize(doc["rows"]):
        lines.append(
            f"| {line['layer']} | {line['tokens']} | {line['sglang_us']:.1f} ({line['launches_sglang']}) | "
            f"{line['fused_us']:.1f} ({line['launches_fused']}) | {line['compile_us']:.1f} | {line['x_sglang']:.2f}x |"
        )
    lines += ["", "| model | batch | SGLang 0.5.23 us/step | plugin us/step | saved us/step |", "|---|---|---|---|---|"]
    for e in doc["per_step"]:
        lines.append(f"| {e['model']} | {e['tokens']} | {e['sglang_us']:.0f} | {e['fused_us']:.0f} | {e['saved_us']:.0f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    harness.plot_vs_tokens(rows, path, title="decode layer, non-GEMM work (bf16)", group_key="layer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="*", default=BATCHES)
    parser.add_argument("--models", nargs="*", default=list(LAYERS_PER_MODEL), choices=list(LAYERS_PER_MODEL))
    parser.add_argument("--no-compile", action="store_true", help="skip the torch_compile implementation")
    parser.add_argument("--markdown", type=Path, help="print README tables from this results JSON and exit")
    parser.add_argument(
        "--moe-sum-fold", action="store_true",
        help="time the MoE layer with the opt-in moe_sum_fold (SGLANG_GEMMA4_MOE_SUM_FOLD=1): its top-k sum "
        "done by the end-of-layer kernel up to EXPERT_SUM_FOLD_MAX_TOKENS tokens",
    )
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return

    started = time.perf_counter()
    kernels, missing = load_plugin_kernels()
    print(f"plugin kernels: {sorted(kernels)}; missing: {missing or 'none'}")
    copy_bw = harness.copy_bandwidth_TBps()
    rows: list[dict] = []
    for k in (k for k in KINDS if k.model in args.models):
        impls: dict[str, Callable] = {
            "sglang": sglang_layer, "fused": partial(plugin_layer, kernels, moe_sum_fold=args.moe_sum_fold),
        }
        if not args.no_compile:
            impls["torch_compile"] = partial(compiled_layer, CompiledStretches())
        for tokens in args.batches:
            rows += measure(k, tokens, impls)
        print(f"[{time.perf_counter() - started:6.1f}s] {k.name} done", flush=True)

    path = harness.write_results(
        "layer_decode",
        rows,
        copy_bw=copy_bw,
        plot=plot,
        extra={
            "dtype": "bfloat16",
            "plugin_kernels": sorted(kernels),
            "plugin_kernels_missing": missing,
            "moe_sum_fold": args.moe_sum_fold,
            "per_step": per_step(rows),
            "notes": {
                "scope": "one decoder layer's decode step without its GEMMs and attention (their outputs are inputs); "
                "sliding-attention shapes (head_dim 256); the layer's input norm counted at its start for sglang, "
                "folded into the previous layer's end for fused",
                "sglang": "SGLang 0.5.23's launches (DESIGN.md section 4), each a single-op stand-in "
                "(benchmarks/sglang_ops.py) or the same eager PyTorch op",
                "fused": "the plugin kernels listed in plugin_kernels; SGLang's stand-ins for the rest",
                "torch_compile": "torch.compile (defaults) of fp32 references of each stretch between GEMMs; "
                "KV store and MoE internals as stand-ins",
                "per_step": "sum over the model's layers of the per-layer time of each kind",
            },
            "targets": {"launches_max": LAUNCH_TARGETS, "speedup_vs_sglang_min": SPEEDUP_MIN,
                        "speedup_batch_max": SPEEDUP_BATCH_MAX, "never_slower_than": "torch_compile"},
        },
    )
    print(f"wrote {path} ({time.perf_counter() - started:.0f}s)")
    harness.print_table(per_step(rows), ["model", "tokens", "sglang_us", "fused_us", "torch_compile_us", "saved_us"])
    harness.print_table(
        summarize(rows),
        ["layer", "tokens", "sglang_us", "fused_us", "compile_us", "x_sglang", "launches_sglang", "launches_fused",
         "step_saved_us", "verdict"],
    )


if __name__ == "__main__":
    main()
