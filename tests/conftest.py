"""Shared pytest set-up.

Tests marked ``interpret`` run Triton kernels on CPU tensors and need
``TRITON_INTERPRET=1`` in the environment before triton is first imported, so
they run in a pytest process of their own (``make test`` starts two). Tests
marked ``gpu`` need CUDA and run on the GPU machine only.
"""

import os

import pytest

_INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"


def pytest_collection_modifyitems(config, items):
    import torch

    has_cuda = torch.cuda.is_available()
    for item in items:
        if "interpret" in item.keywords and not _INTERPRETING:
            item.add_marker(pytest.mark.skip(reason="needs TRITON_INTERPRET=1 (run via `make test`)"))
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
