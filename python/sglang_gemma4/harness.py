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

# name -> kwargs of transformers' Gemma4TextConfig. A fresh config object is made
# per model: transformers writes _attn_implementation into the one it uses.
TINY_CONFIGS: dict[str, dict] = {
    "dense": _base(),
    "ple": _base(**_PLE),
    "moe": _base(**_MOE),
    "moe_ple": _base(**_MOE, **_PLE),
    "kv_shared": _base(**_PLE, **_KV_SHARED),
    "k_eq_v": _base(attention_k_eq_v=True),
}


def make_config(name: str):
    from transformers import Gemma4TextConfig

    return Gemma4TextConfig(**TINY_CONFIGS[name])


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


def build_pair(
    name: str, *, seed: int = 0, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> ModelPair:
    """transformers' model with random weights, and SGLang's loaded from it."""
    init_sglang(device)
    from sglang.srt.models.gemma4_causal import Gemma4ForCausalLM as SGLangGemma4
    from transformers.models.gemma4.modeling_gemma4 import Gemma4ForCausalLM as HFGemma4

    hf = HFGemma4(make_config(name)).eval()
    _randomize(hf, seed)
    sg = SGLangGemma4(make_config(name))
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
    from sglang.srt.model_executor.forward_batch_info import ForwardBatch, ForwardMode

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
