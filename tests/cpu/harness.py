"""Helpers for CPU tests. The model harness itself is ``sglang_gemma4.harness``
(shared with ``python -m sglang_gemma4 check``); this module adds what only tests need."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import torch

from sglang_gemma4 import harness, registry

# Same function in fp32 through two code bases: agreement to rounding noise.
PARITY_TOL = 1e-4


def run_python(code: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (a new process is the only honest way to
    test what ``load_plugins()`` does at start-up). ``env`` entries are added to
    a copy of ours; the value ``"<unset>"`` removes the key instead."""
    full = dict(os.environ)
    for k, v in (env or {}).items():
        if v == "<unset>":
            full.pop(k, None)
        else:
            full[k] = v
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=full, capture_output=True, text=True, timeout=timeout,
    )


def parity_with_and_without(name: str, ids: torch.Tensor | None = None) -> tuple[harness.Parity, harness.Parity]:
    """(stock SGLang vs transformers, SGLang + plugin vs transformers), fresh models each side."""
    ids = harness.prompt() if ids is None else ids
    with registry.suspended():
        stock = harness.compare(harness.build_pair(name), ids)
    patched = harness.compare(harness.build_pair(name), ids)
    return stock, patched
