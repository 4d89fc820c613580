"""Run SGLang's Gemma-4 on a CPU next to transformers' Gemma-4 (DESIGN.md section 7).

Used by the CPU tests and by ``python -m sglang_gemma4 check``:

* :func:`init_sglang` -- a single-process gloo "cluster" and SGLang's runtime
  context, as a TP=1 scheduler process would have it (idempotent).
* :data:`TINY_CONFIGS` -- tiny Gemma-4 text configs, one per feature we touch.
* :func:`build_pair` -- transformers' ``Gemma4ForCausalLM`` with random weights,
  and SGLang's ``Gemma4ForCausalLM`` loaded from that model's state dict.
* :class:`SDPAAttention` -- our own attention backend: causal, sliding window,
  K/V kept per layer so KV-shared layers can read their owner's cache.
* :func:`sglang_hidden` / :func:`hf_hidden` -- final hidden states (after the
  final norm) for one prompt.
* :func:`sglang_logits` / :func:`hf_logits` -- logits at every position (SGLang's
  ``LogitsProcessor``, final-logit softcapping included); :func:`greedy_tokens`
  and :func:`compare_logits` -- greedy decoding by re-running the prefill.
* :func:`build_mm_pair` -- the same for the multimodal wrapper
  (``Gemma4ForConditionalGeneration``), text only.

Imports sglang; never imported by ``sglang_gemma4.kernels``.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Callable

import torch

_initialized = False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_sglang(device: str = "cpu") -> None:
    """World-size-1 process group + SGLang runtime context, once per process."""
    global _initialized
    if _initialized:
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))

    import sglang.srt.layers.logits_processor as logits_processor
    import sglang.srt.layers.rotary_embedding.base as rope_base
    from sglang.srt.distributed import parallel_state
    from sglang.srt.distributed.parallel_state import (
        init_distributed_environment,
        initialize_model_parallel,
    )
    from sglang.srt.runtime_context import SpawnRanks, get_parallel, publish, reset_context
    from sglang.srt.server_args import ServerArgs

    if device == "cpu":
        # Otherwise the rotary module imports vllm on a machine with neither CUDA nor
        # SGLang's CPU engine.
        rope_base._is_cpu = True
        # Final-logit softcapping is a Triton kernel (libdevice tanh, which Triton's
        # interpreter does not run) except on SGLang's CPU engine, which computes
        # cap * tanh(logits / cap) in PyTorch.
        logits_processor._is_cpu = True
    init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo")
    reset_context()
    publish(
        ServerArgs(model_path="dummy", tp_size=1, device=device),
        role="test",
        ranks=SpawnRanks(world_rank=0),
    )
    get_parallel().override_permanently(world_group=parallel_state._WORLD)
    initialize_model_parallel(backend="gloo")
    _initialized = True


def _base(**overrides) -> dict:
    cfg = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        global_head_dim=32,
        sliding_window=8,
        layer_types=["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
        hidden_size_per_layer_input=0,
        num_kv_shared_layers=0,
        rms_norm_eps=1e-6,
        final_logit_softcapping=30.0,
    )
    cfg.update(overrides)
    return cfg


_MOE = dict(enable_moe_block=True, num_experts=8, top_k_experts=2, moe_intermediate_size=32)
_PLE = dict(hidden_size_per_layer_input=16, vocab_size_per_layer_input=128)
_KV_SHARED = dict(
    num_hidden_layers=6,
    layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
    num_kv_shared_layers=3,
)
# Full-attention layers with their own head size (E2B..31B: 256 sliding, 512 full).
_GLOBAL_HEAD_DIM = dict(head_dim=16, global_head_dim=32)

# name -> kwargs of transformers' Gemma4TextConfig. A fresh config object is made
# per model: transformers writes _attn_implementation into the one it uses.
TINY_CONFIGS: dict[str, dict] = {
    "dense": _base(),
    "ple": _base(**_PLE),
    "moe": _base(**_MOE),
    "moe_ple": _base(**_MOE, **_PLE),
    "kv_shared": _base(**_PLE, **_KV_SHARED),
    "k_eq_v": _base(attention_k_eq_v=True),
    "global_head_dim": _base(**_GLOBAL_HEAD_DIM),
    # 26B-A4B / 31B attention: larger full-attention heads, fewer of them for K/V, V = K.
    "k_eq_v_global": _base(
        **_GLOBAL_HEAD_DIM, num_key_value_heads=2, num_global_key_value_heads=1, attention_k_eq_v=True
    ),
    # E2B: KV-shared layers get an MLP twice as wide.
    "double_wide_mlp": _base(**_PLE, **_KV_SHARED, use_double_wide_mlp=True),
    # Full-attention RoPE on half the head instead of the default quarter.
    "partial_rope": _base(
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.5, "rope_theta": 1_000_000.0},
        }
    ),
}


def make_config(name: str):
    from transformers import Gemma4TextConfig

    return Gemma4TextConfig(**TINY_CONFIGS[name])


def sglang_text_config(name: str):
    """``make_config(name)`` as SGLang's config loader hands it to the model.

    transformers states the full-attention head size and K/V head count as
    per-layer overrides; SGLang's loader flattens them into ``head_dim`` /
    ``num_key_value_heads`` (full attention) and ``swa_head_dim`` /
    ``swa_num_key_value_heads`` (sliding). It does so for model type ``gemma4``
    (the published checkpoints); for a text-only ``gemma4_text`` one only with
    the plugin's ``gemma4_text_config`` patch (docs/upstream-defects.md).
    """
    from types import SimpleNamespace

    from sglang.srt.utils.hf_transformers.config import _apply_gemma4_attention_overrides

    config = make_config(name)
    _apply_gemma4_attention_overrides(SimpleNamespace(text_config=config))
    return config


def _randomize(model: torch.nn.Module, seed: int) -> None:
    # Norm weights near 1 and projections small keep activations O(1) through
    # the layers, where rounding differences are visible rather than saturated.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name or name.endswith("scale"):
                p.copy_(1.0 + 0.3 * noise)
            else:
                p.copy_(0.1 * noise)
        for name, b in model.named_buffers():
            if name.endswith("layer_scalar"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen))


@dataclasses.dataclass
class ModelPair:
    name: str
    hf: torch.nn.Module
    sglang: torch.nn.Module


def _private_rope_modules() -> None:
    """Make the next SGLang model build RotaryEmbedding modules of its own.

    SGLang shares one RotaryEmbedding per shape among all models of a process
    (``rotary_embedding.factory._ROPE_DICT``); casting one model with ``.to(dtype)``
    would cast the cos/sin cache of every other model built here.
    """
    from sglang.srt.layers.rotary_embedding import factory

    factory._ROPE_DICT.clear()


def build_pair(
    name: str, *, seed: int = 0, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> ModelPair:
    """transformers' model with random weights, and SGLang's loaded from it."""
    init_sglang(device)
    from sglang.srt.models.gemma4_causal import Gemma4ForCausalLM as SGLangGemma4
    from transformers.models.gemma4.modeling_gemma4 import Gemma4ForCausalLM as HFGemma4

    hf = HFGemma4(make_config(name)).eval()
    _randomize(hf, seed)
    _private_rope_modules()
    sg = SGLangGemma4(sglang_text_config(name))
    sg.load_weights(hf.state_dict().items())
    sg.eval()
    return ModelPair(name, hf.to(device, dtype), sg.to(device, dtype))


class SDPAAttention:
    """Minimal attention backend: one prompt, causal, optional sliding window.

    K/V are kept per ``layer.layer_id``: a KV-shared layer's RadixAttention
    carries its owner's layer id and passes ``k = v = None``.
    """

    def __init__(self) -> None:
        self.kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
        n = q.shape[0]
        q = q.reshape(n, layer.tp_q_head_num, layer.qk_head_dim)
        if k is not None:
            self.kv[layer.layer_id] = (
                k.reshape(n, layer.tp_k_head_num, -1),
                v.reshape(n, layer.tp_v_head_num, -1),
            )
        k, v = self.kv[layer.layer_id]
        i = torch.arange(n, device=q.device)[:, None]
        j = torch.arange(n, device=q.device)[None, :]
        mask = j <= i
        if layer.sliding_window_size is not None and layer.sliding_window_size >= 0:
            mask = mask & (i - j <= layer.sliding_window_size)
        group = layer.tp_q_head_num // layer.tp_k_head_num
        out = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(0, 1).float(),
            k.repeat_interleave(group, 1).transpose(0, 1).float(),
            v.repeat_interleave(group, 1).transpose(0, 1).float(),
            attn_mask=mask,
            scale=layer.scaling,
        )
        return out.transpose(0, 1).reshape(n, -1).to(q.dtype)


def _forward_batch(ids: torch.Tensor):
    from sglang.srt.model_executor.forward_batch_info import CaptureHiddenMode, ForwardBatch, ForwardMode

    n, dev = ids.shape[0], ids.device
    return ForwardBatch(
        forward_mode=ForwardMode.EXTEND,
        batch_size=1,
        input_ids=ids,
        req_pool_indices=torch.zeros(1, dtype=torch.int64, device=dev),
        seq_lens=torch.tensor([n], device=dev),
        out_cache_loc=torch.arange(n, device=dev),
        seq_lens_sum=n,
        positions=torch.arange(n, device=dev),
        extend_seq_lens=torch.tensor([n], device=dev),
        extend_seq_lens_cpu=[n],
        capture_hidden_mode=CaptureHiddenMode.NULL,
    )


@torch.no_grad()
def sglang_hidden(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """SGLang's final hidden states ``[tokens, hidden]`` for one prompt (prefill)."""
    from sglang.srt.model_executor.forward_context import ForwardContext, forward_context

    with forward_context(ForwardContext(attn_backend=SDPAAttention())):
        return model.model(ids, torch.arange(ids.shape[0], device=ids.device), _forward_batch(ids))


@torch.no_grad()
def hf_hidden(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model.model(ids[None]).last_hidden_state[0]


def prompt(n: int = 12, vocab: int = 128, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


@dataclasses.dataclass
class Parity:
    name: str
    max_abs_diff: float
    cosine: float

    def ok(self, tol: float) -> bool:
        return self.max_abs_diff <= tol


def compare(pair: ModelPair, ids: torch.Tensor, run: Callable = sglang_hidden) -> Parity:
    ours = run(pair.sglang, ids).float()
    ref = hf_hidden(pair.hf, ids).float()
    cos = torch.nn.functional.cosine_similarity(ours.flatten(), ref.flatten(), dim=0).item()
    return Parity(pair.name, (ours - ref).abs().max().item(), cos)


@torch.no_grad()
def sglang_logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """SGLang's logits ``[tokens, vocab]`` at every prompt position.

    The final hidden states go through the model's own ``LogitsProcessor`` and
    LM head with decode-mode metadata, under which it keeps every row (an
    extend batch keeps only the last one); final-logit softcapping included.
    """
    from sglang.srt.layers.logits_processor import LogitsMetadata
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    hidden = sglang_hidden(model, ids)
    out = model.logits_processor(ids, hidden, model.lm_head, LogitsMetadata(forward_mode=ForwardMode.DECODE))
    return out.next_token_logits


@torch.no_grad()
def hf_logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids[None]).logits[0]


@torch.no_grad()
def sglang_next_logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Logits of the next token after ``ids``: one prefill through ``model.forward``
    (for the multimodal wrapper its own forward: position shift, PLE ids, embedding routine)."""
    from sglang.srt.model_executor.forward_context import ForwardContext, forward_context

    with forward_context(ForwardContext(attn_backend=SDPAAttention())):
        out = model(ids, torch.arange(ids.shape[0], device=ids.device), _forward_batch(ids))
    return out.next_token_logits[-1]


@torch.no_grad()
def hf_next_logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return hf_logits(model, ids)[-1]


def greedy_tokens(next_logits: Callable, ids: torch.Tensor, steps: int) -> list[int]:
    """``steps`` greedy tokens after ``ids``, re-running the prefill on the growing prompt."""
    tokens: list[int] = []
    for _ in range(steps):
        token = int(next_logits(ids).argmax())
        tokens.append(token)
        ids = torch.cat([ids, ids.new_tensor([token])])
    return tokens


@dataclasses.dataclass
class LogitsParity:
    """Logits of SGLang against transformers: every prompt position, then greedy steps."""

    name: str
    max_abs_diff: float
    top1_agreement: float
    sglang_tokens: list[int]
    hf_tokens: list[int]

    @property
    def tokens_match(self) -> bool:
        return self.sglang_tokens == self.hf_tokens

    def ok(self, tol: float) -> bool:
        return self.max_abs_diff <= tol and self.tokens_match


def compare_logits(pair: ModelPair, ids: torch.Tensor, steps: int = 3) -> LogitsParity:
    """Logits at every prompt position, and the next-token logits of the model's own
    forward (max of both differences); top-1 agreement over the prompt; ``steps``
    greedy tokens from each model."""
    ours = sglang_logits(pair.sglang, ids).float()
    ref = hf_logits(pair.hf, ids).float()
    ours_next = sglang_next_logits(pair.sglang, ids).float()
    agree = (ours.argmax(-1) == ref.argmax(-1)).float().mean().item()

    def continue_greedy(next_logits: Callable, first: torch.Tensor) -> list[int]:
        token = int(first.argmax())
        return [token, *greedy_tokens(next_logits, torch.cat([ids, ids.new_tensor([token])]), steps - 1)]

    return LogitsParity(
        pair.name,
        max((ours - ref).abs().max().item(), (ours_next - ref[-1]).abs().max().item()),
        agree,
        continue_greedy(lambda x: sglang_next_logits(pair.sglang, x), ours_next),
        continue_greedy(lambda x: hf_next_logits(pair.hf, x), ref[-1]),
    )


def _mm_config(name: str):
    from transformers import Gemma4Config, Gemma4VisionConfig

    vision = Gemma4VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, head_dim=16, patch_size=4, position_embedding_size=64,
    )
    return Gemma4Config(text_config=make_config(name), vision_config=vision, audio_config=None)


def build_mm_pair(
    name: str = "dense", *, seed: int = 0, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> ModelPair:
    """transformers' ``Gemma4ForConditionalGeneration`` (tiny vision tower, no audio) with
    random weights, and SGLang's, configured as SGLang's loader configures it.

    The pair's text path is what :func:`compare_logits` measures; :func:`sglang_logits`
    and :func:`sglang_hidden` go through ``model.model``, which for SGLang's wrapper is
    its ``Gemma4TextModel``, while greedy decoding runs the wrapper's own forward.
    """
    init_sglang(device)
    from sglang.srt.models.gemma4_mm import Gemma4ForConditionalGeneration as SGLangGemma4MM
    from sglang.srt.utils.hf_transformers.config import _apply_gemma4_attention_overrides
    from transformers.models.gemma4.modeling_gemma4 import Gemma4ForConditionalGeneration as HFGemma4MM

    hf = HFGemma4MM(_mm_config(name)).eval()
    _randomize(hf, seed)
    config = _mm_config(name)
    _apply_gemma4_attention_overrides(config)
    _private_rope_modules()
    sg = SGLangGemma4MM(config)
    sg.load_weights(hf.state_dict().items())
    sg.eval()
    return ModelPair(f"mm_{name}", hf.to(device, dtype), sg.to(device, dtype))
