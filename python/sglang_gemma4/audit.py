"""Accuracy audit: SGLang 0.5.23's Gemma-4 against transformers' Gemma-4 (the reference).

Three parts, each a function returning plain numbers (used by the tests and by
``python -m sglang_gemma4 check``):

* :func:`gelu_gap` -- how far erf-GELU and tanh-GELU are apart.
* :func:`moe_activation_audit` -- the MoE experts' activation: which one SGLang
  configures with and without the plugin, and what the erf path does to a tiny
  MoE model's logits and greedy tokens. The erf path is run through SGLang's
  torch.compile MoE forward (``fused_moe_forward_native``), which maps the
  activation name to math as the CUDA triton runner does (``"gelu"`` -> erf,
  ``"gelu_tanh"`` -> tanh) and runs on a CPU.
* :func:`feature_sweep` -- one tiny model per Gemma-4 feature SGLang implements
  (``harness.TINY_CONFIGS`` and the multimodal wrapper's text path): logits at
  every position through SGLang's ``LogitsProcessor`` (final-logit softcapping
  included), the next-token logits of the model's own forward, and greedy tokens.
  (``check`` also prints final hidden states, stock and with the plugin.)

Divergences found and their causes are written up, with reproductions, in
docs/upstream-defects.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Iterator

import torch

from sglang_gemma4 import harness, registry

# fp32 tiny models computing the same function agree to ~1e-5 in logits
# (softcap 30); a real defect is orders of magnitude above it.
LOGITS_TOL = 1e-4
MM_CONFIG = "mm_dense"
MOE_PATCH = "moe_gelu_tanh"

# What each tiny model exercises (configs not listed are shown by name).
FEATURES: dict[str, str] = {
    "dense": "sliding + full layers, partial RoPE 1/4, logit softcap",
    "partial_rope": "partial RoPE 1/2 on full layers",
    "global_head_dim": "global_head_dim != head_dim",
    "k_eq_v": "k_eq_v (V = K on full layers)",
    "k_eq_v_global": "k_eq_v + global head dim + global K/V heads",
    "kv_shared": "KV sharing (+ PLE)",
    "ple": "per-layer embeddings (PLE)",
    "double_wide_mlp": "double-wide MLP on KV-shared layers",
    "moe": "MoE (router, experts, dense MLP)",
    "moe_ple": "MoE + PLE",
    MM_CONFIG: "multimodal wrapper, text path",
}

# Stock SGLang's divergences from the reference: (where, cause, the patch fixing it).
# docs/upstream-defects.md has reproductions and the proposed upstream changes.
STOCK_DIVERGENCES: list[tuple[str, str, str]] = [
    (
        "MoE models on native paths (CPU, ROCm, CUDA under torch.compile)",
        "router scale dropped by the native Gemma4RMSNorm",
        "router_scale",
    ),
    ("MoE models on CUDA triton and torch.compile", "experts use erf-GELU, the reference tanh-GELU", "moe_gelu_tanh"),
]


@dataclasses.dataclass
class GeluGap:
    """erf-GELU against tanh-GELU."""

    max_abs_diff: float  # over [lo, hi]
    at: float
    bf16_mismatch_uniform: float  # fraction of bf16 inputs uniform in [lo, hi] whose bf16 outputs differ
    bf16_mismatch_normal: float  # the same for standard-normal inputs


def _bf16_mismatch(x: torch.Tensor) -> float:
    x = x.to(torch.bfloat16).double()
    erf = torch.nn.functional.gelu(x).to(torch.bfloat16)
    tanh = torch.nn.functional.gelu(x, approximate="tanh").to(torch.bfloat16)
    return (erf != tanh).double().mean().item()


def gelu_gap(lo: float = -10.0, hi: float = 10.0, points: int = 400_001) -> GeluGap:
    """``max |gelu(x) - gelu_tanh(x)|`` on an fp64 grid over ``[lo, hi]``, and how
    often the two differ once inputs and outputs are rounded to bf16."""
    x = torch.linspace(lo, hi, points, dtype=torch.float64)
    gap = (torch.nn.functional.gelu(x) - torch.nn.functional.gelu(x, approximate="tanh")).abs()
    i = int(gap.argmax())
    normal = torch.randn(points, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return GeluGap(gap[i].item(), x[i].item(), _bf16_mismatch(x), _bf16_mismatch(normal))


def pin_compile_moe_path(model: torch.nn.Module) -> None:
    """Route every MoE layer of ``model`` through SGLang's torch.compile MoE forward,
    as SGLang does under ``--enable-torch-compile`` at batch size 1."""
    for module in model.modules():
        quant_method = getattr(module, "quant_method", None)
        if hasattr(module, "moe_runner_config") and hasattr(quant_method, "enter_torch_compile"):
            quant_method.enter_torch_compile(num_tokens=1)


def experts_activation(model: torch.nn.Module) -> str:
    """The activation name the first MoE layer's experts are configured with."""
    for module in model.modules():
        if hasattr(module, "moe_runner_config"):
            return module.moe_runner_config.activation
    raise ValueError("model has no MoE layer")


@dataclasses.dataclass
class MoeActivationAudit:
    stock_activation: str
    plugin_activation: str
    stock: harness.LogitsParity  # SGLang with its stock experts' activation, fp32, vs transformers
    plugin: harness.LogitsParity
    bf16_max_logit_diff: float  # stock against plugin activation, bf16, same weights and path
    bf16_top1_agreement: float

    @property
    def ok(self) -> bool:
        return self.plugin.ok(LOGITS_TOL)


def _moe_pair(stock: bool, dtype: torch.dtype, device: str) -> harness.ModelPair:
    # Only this patch is suspended: the router fix stays, so the activation is all that differs.
    if stock:
        with registry.suspended(MOE_PATCH):
            pair = harness.build_pair("moe", dtype=dtype, device=device)
    else:
        pair = harness.build_pair("moe", dtype=dtype, device=device)
    pin_compile_moe_path(pair.sglang)
    return pair


def moe_activation_audit(
    ids: torch.Tensor, *, steps: int = 3, bf16_tokens: int = 64, device: str = "cpu"
) -> MoeActivationAudit:
    """The tiny MoE model on SGLang's torch.compile MoE path with the experts' stock
    activation and with the plugin's: fp32 logits and greedy tokens against
    transformers, and in bf16 against each other over ``bf16_tokens`` positions."""
    stock, plugin = _moe_pair(True, torch.float32, device), _moe_pair(False, torch.float32, device)
    long_ids = harness.prompt(bf16_tokens, seed=2).to(device)
    stock_bf16 = harness.sglang_logits(_moe_pair(True, torch.bfloat16, device).sglang, long_ids).float()
    plugin_bf16 = harness.sglang_logits(_moe_pair(False, torch.bfloat16, device).sglang, long_ids).float()
    return MoeActivationAudit(
        experts_activation(stock.sglang),
        experts_activation(plugin.sglang),
        harness.compare_logits(stock, ids, steps),
        harness.compare_logits(plugin, ids, steps),
        (stock_bf16 - plugin_bf16).abs().max().item(),
        (stock_bf16.argmax(-1) == plugin_bf16.argmax(-1)).float().mean().item(),
    )


@dataclasses.dataclass
class SweepRow:
    config: str
    features: str
    logits: harness.LogitsParity

    @property
    def ok(self) -> bool:
        return self.logits.ok(LOGITS_TOL)


def feature_sweep(
    ids: torch.Tensor, *, steps: int = 3, configs: Iterable[str] | None = None, device: str = "cpu"
) -> list[SweepRow]:
    """Every tiny config (default: all of ``harness.TINY_CONFIGS`` and the multimodal
    wrapper) with the plugin as registered in this process, fp32."""
    rows = []
    for name in configs if configs is not None else [*harness.TINY_CONFIGS, MM_CONFIG]:
        if name == MM_CONFIG:
            pair = harness.build_mm_pair("dense", device=device)
        else:
            pair = harness.build_pair(name, device=device)
        rows.append(SweepRow(name, FEATURES.get(name, name), harness.compare_logits(pair, ids, steps)))
    return rows


@dataclasses.dataclass
class AuditReport:
    gelu: GeluGap
    moe: MoeActivationAudit
    sweep: list[SweepRow]
    steps: int

    @property
    def failed(self) -> list[str]:
        bad = [f"audit:{row.config}" for row in self.sweep if not row.ok]
        return bad if self.moe.ok else ["audit:moe_activation", *bad]


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """PyTorch's CPU ops on one thread inside the block: on these tiny models the
    threads' synchronisation costs more than the ops (7x the CPU time on 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_audit(ids: torch.Tensor, *, steps: int = 3, device: str = "cpu") -> AuditReport:
    """GELU gap, MoE activation audit and feature sweep for prompt ``ids``."""
    with single_thread():
        return AuditReport(
            gelu_gap(),
            moe_activation_audit(ids, steps=steps, device=device),
            feature_sweep(ids, steps=steps, device=device),
            steps,
        )


def _tokens(parity: harness.LogitsParity) -> str:
    return "match" if parity.tokens_match else f"{parity.sglang_tokens} vs {parity.hf_tokens}"


def format_report(report: AuditReport) -> list[str]:
    """The report as lines of text (``check`` prints them)."""
    g, m = report.gelu, report.moe
    lines = [
        f"GELU: max |gelu - gelu_tanh| = {g.max_abs_diff:.2e} at |x| = {abs(g.at):.2f}; bf16 outputs differ "
        f"for {100 * g.bf16_mismatch_uniform:.0f}% of inputs uniform in [-10, 10], "
        f"{100 * g.bf16_mismatch_normal:.0f}% of standard-normal inputs",
        f"MoE experts' activation: stock SGLang '{m.stock_activation}' (erf on CUDA triton and torch.compile), "
        f"with plugin '{m.plugin_activation}'",
        f"  tiny MoE model, torch.compile MoE path, fp32 logits vs transformers: '{m.stock_activation}' "
        f"{m.stock.max_abs_diff:.2e} (greedy {_tokens(m.stock)}), '{m.plugin_activation}' "
        f"{m.plugin.max_abs_diff:.2e} (greedy {_tokens(m.plugin)}) -> {'ok' if m.ok else 'FAIL'}",
        f"  bf16, '{m.stock_activation}' vs '{m.plugin_activation}': max logit diff {m.bf16_max_logit_diff:.2e}, "
        f"top-1 agreement {100 * m.bf16_top1_agreement:.1f}%",
        f"feature sweep with the plugin (fp32, tolerance {LOGITS_TOL:g}, {report.steps} greedy steps):",
    ]
    header = ("config", "features", "logits max|diff|", "top-1 agree", "greedy", "result")
    rows = [
        (
            r.config,
            r.features,
            f"{r.logits.max_abs_diff:.2e}",
            f"{100 * r.logits.top1_agreement:.0f}%",
            _tokens(r.logits),
            "ok" if r.ok else "FAIL",
        )
        for r in report.sweep
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    fmt = "  " + "  ".join(f"{{:<{w}}}" for w in widths)
    lines += [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*row) for row in rows]
    states = {status.name: status.state for status in registry.status()}
    lines.append("stock SGLang divergences found (see docs/upstream-defects.md), and the patch fixing each:")
    lines += [
        f"  {where}: {cause} (patch {patch}: {states.get(patch, 'not registered')})"
        for where, cause, patch in STOCK_DIVERGENCES
    ]
    return lines
