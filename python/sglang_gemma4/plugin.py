"""SGLang entry point (``sglang.srt.plugins`` group, name ``gemma4``).

SGLang's ``load_plugins()`` calls :func:`register` early in every process it
starts (launcher, engine, each scheduler/TP worker, detokenizer). ``register``
finds our patches, applies the compatible and enabled ones through
``HookRegistry`` and logs one summary line, plus one warning per skipped patch.

Environment:

* ``SGLANG_GEMMA4_DISABLE=all`` or ``=name1,name2`` -- turn patches off.
* ``SGLANG_PLUGINS=...`` -- SGLang's own whitelist; leaving ``gemma4`` out of it
  keeps this plugin from loading at all.
* ``SGLANG_GEMMA4_LOG_LEVEL`` -- our logger's level (default ``INFO``).
* ``SGLANG_GEMMA4_PDL`` -- programmatic dependent launch of our kernels on
  sm_90+: ``auto`` (default: where measured faster), ``1`` every kernel, ``0``
  none (``sglang_gemma4.kernels.dependent_launch``).
"""

from __future__ import annotations

import logging
import os
import sys

from sglang_gemma4 import registry

logger = logging.getLogger("sglang_gemma4")


def _setup_logging() -> None:
    # load_plugins() runs before SGLang configures logging in the launcher, so
    # a summary left to the root logger would be lost there.
    if logger.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(asctime)s] [sglang-gemma4] %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(os.environ.get("SGLANG_GEMMA4_LOG_LEVEL", "INFO").upper())
    logger.propagate = False


def register() -> list[registry.PatchStatus]:
    """Apply our patches once per process and return the status table.

    Inside ``load_plugins()`` SGLang applies the registered hooks itself, after
    every plugin has registered (so hooks of several plugins on one target are
    chained). Called directly (tests, ``python -m sglang_gemma4 check``), we
    apply them here.
    """
    from sglang.srt.plugins.hook_registry import HookRegistry, _current_plugin_source

    _setup_logging()
    if registry.already_applied():
        return registry.status()
    patches, failures = registry.discover()
    table = registry.apply_all(patches, failures)
    if _current_plugin_source.get() is None:
        HookRegistry.apply_hooks()
    from sglang_gemma4.kernels import dependent_launch

    logger.info("%s; %s", registry.summary_line(), dependent_launch.describe())
    return table
