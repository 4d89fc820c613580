"""CPU test fixtures: SGLang's Gemma-4 on CPU with the plugin registered once per process."""

import pytest


@pytest.fixture(scope="session")
def plugin_table():
    """Initialise SGLang's CPU context and register the plugin; returns the status table."""
    from sglang_gemma4 import harness, plugin

    harness.init_sglang()
    return {s.name: s for s in plugin.register()}
