"""SGLang's Gemma-4 with and without the plugin against transformers' Gemma-4, fp32, on CPU.

Run twice by ``make test``: without the Triton interpreter every fused path
falls back (CPU tensors), with it the fused kernels run on CPU tensors.
"""

import pytest

from sglang_gemma4 import harness
from tests.cpu.harness import PARITY_TOL, parity_with_and_without

MOE_CONFIGS = {"moe", "moe_ple"}


@pytest.mark.parametrize("name", sorted(harness.TINY_CONFIGS))
@pytest.mark.parametrize("mode", [pytest.param("plain"), pytest.param("interpret", marks=pytest.mark.interpret)])
def test_parity_with_plugin(plugin_table, name, mode):
    stock, patched = parity_with_and_without(name)
    assert patched.max_abs_diff <= PARITY_TOL, patched
    if name not in MOE_CONFIGS:
        # Where stock SGLang is already right, the plugin must not move it.
        assert stock.max_abs_diff <= PARITY_TOL, stock


def test_parity_detects_a_wrong_model(plugin_table):
    """The comparison can fail: one perturbed weight breaks parity."""
    import torch

    pair = harness.build_pair("dense")
    w = pair.sglang.model.layers[1].mlp.down_proj.weight
    with torch.no_grad():
        w.add_(0.01 * torch.randn(w.shape, generator=torch.Generator().manual_seed(0)))
    assert harness.compare(pair, harness.prompt()).max_abs_diff > PARITY_TOL
