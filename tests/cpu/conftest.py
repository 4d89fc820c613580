"""CPU test fixtures: SGLang's Gemma-4 on CPU with the plugin registered once per process."""

import pytest
import torch

# The tiny models are far too small for intra-op threads to pay off; on a 2-core
# CI machine they only contend (measured ~7x less CPU time with one thread).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def plugin_table():
    """Initialise SGLang's CPU context and register the plugin; returns the status table."""
    from sglang_gemma4 import harness, plugin

    harness.init_sglang()
    return {s.name: s for s in plugin.register()}
