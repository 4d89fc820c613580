"""sglang-gemma4: an SGLang plugin for Google's Gemma-4 models.

Importing this package imports neither sglang nor triton: ``kernels`` runs on
machines with torch + triton only, and ``plugin.register`` is what SGLang's
``load_plugins()`` calls through the ``sglang.srt.plugins`` entry point.
"""

__version__ = "0.1.0"

SUPPORTED_SGLANG_VERSION = "0.5.23"
