"""The patch registry: what each patch hooks, whether it may apply, and the report.

A *patch* is one capability (a fused kernel, a fixed upstream defect, a default,
a debug trap). It is declared in a module under ``sglang_gemma4.srt`` (mirroring
the SGLang file it changes) as a module-level ``PATCHES = [Patch(...)]``::

    PATCHES = [
        Patch(
            name="router_scale",
            summary="native Gemma4RMSNorm honours the router scale folded into its weight",
            hooks=(Hook("sglang.srt.layers.layernorm.Gemma4RMSNorm.forward_native",
                        _forward_native, "replace", params=("self", "x")),),
            delete_when="Gemma4RMSNorm.forward_native multiplies by weight when with_scale=False",
            check=_optional_extra_check,   # () -> None if fine, else the reason to skip
        )
    ]

:func:`apply_all` (called by ``plugin.register``) decides per patch:

* ``disabled`` -- named in ``SGLANG_GEMMA4_DISABLE`` (``all`` or a comma list);
* ``off``      -- opt-in patch whose switch (``Patch.opt_in_env``) is not set;
* ``skipped``  -- the installed sglang is not the version the patch was written
  for, a hook target is missing, a target lost a parameter the hook relies on,
  or ``Patch.check`` returned a reason. One WARNING names the patch and why.
* ``applied``  -- every hook registered with SGLang's ``HookRegistry``.

Several patches may list the same :class:`Hook` (one owner of a method that
several capabilities change, e.g. ``Gemma4DecoderLayer.forward``): it is
registered once, when the first of them applies, and the hook asks
:func:`active` which of its patches are on.

Errors at run time propagate. A hook that raises gets a note naming the patch
and the switch that turns it off; nothing falls back silently, because a
fallback that hides an exception could also hide wrong numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.metadata
import inspect
import logging
import os
import pkgutil
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

from sglang_gemma4 import SUPPORTED_SGLANG_VERSION

DISABLE_ENV = "SGLANG_GEMMA4_DISABLE"

logger = logging.getLogger("sglang_gemma4")

HookKind = Literal["around", "replace", "before", "after"]
State = Literal["applied", "skipped", "disabled", "off"]


@dataclasses.dataclass(frozen=True)
class Hook:
    """One SGLang attribute to wrap.

    ``target`` is a dotted path (``module.Class.method`` or ``module.function``).
    ``kind`` follows ``sglang.srt.plugins.hook_registry.HookType``: an ``around``
    hook is called as ``fn(original, *args, **kwargs)``; ``replace`` as
    ``fn(*args, **kwargs)``. ``params`` are parameter names the target must still
    have, checked before anything is registered.
    """

    target: str
    fn: Callable
    kind: HookKind = "around"
    params: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Patch:
    """One named capability. See the module docstring."""

    name: str
    summary: str
    hooks: tuple[Hook, ...]
    delete_when: str
    check: Callable[[], str | None] | None = None
    opt_in_env: str | None = None
    # A patch of CUDA-only code (say, an attention backend whose module imports
    # CUDA kernels) is "off" on a machine without CUDA, not "skipped".
    needs_cuda: bool = False
    sglang_versions: tuple[str, ...] = (SUPPORTED_SGLANG_VERSION,)

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(h.target for h in self.hooks)


@dataclasses.dataclass
class PatchStatus:
    name: str
    state: State
    reason: str = ""
    summary: str = ""


# name -> status; filled once per process by apply_all().
_status: dict[str, PatchStatus] = {}
# hook -> (owner object, attribute, original value), for suspended().
_originals: dict[Hook, tuple[object, str, object]] = {}
# hook -> names of the applied patches that list it (registered once).
_hook_owners: dict[Hook, list[str]] = {}
# Patches inside a suspended() block: not active() even though applied.
_suspended: set[str] = set()
_applied_once = False


def active(name: str) -> bool:
    """Whether patch ``name`` is applied in this process and not suspended."""
    st = _status.get(name)
    return st is not None and st.state == "applied" and name not in _suspended


def env_flag(name: str) -> bool:
    """SGLang-style boolean env var: 1/true/yes/on (case-insensitive)."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def disabled_names() -> set[str]:
    """Names in ``SGLANG_GEMMA4_DISABLE``; ``{"all"}`` turns everything off."""
    raw = os.environ.get(DISABLE_ENV, "")
    names = {n.strip() for n in raw.split(",") if n.strip()}
    if names & {"all", "1", "true", "yes", "on", "*"}:
        return {"all"}
    return names


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def installed_sglang_version() -> str | None:
    try:
        return importlib.metadata.version("sglang")
    except importlib.metadata.PackageNotFoundError:
        return None


def discover(package: str = "sglang_gemma4.srt") -> tuple[list[Patch], list[PatchStatus]]:
    """Import every module under ``package`` and collect its ``PATCHES``.

    A module that fails to import (its SGLang imports moved, say) yields a
    ``skipped`` status named after the module instead of stopping the others.
    """
    patches: list[Patch] = []
    failures: list[PatchStatus] = []
    pkg = importlib.import_module(package)
    for info in sorted(pkgutil.walk_packages(pkg.__path__, package + "."), key=lambda i: i.name):
        try:
            mod = importlib.import_module(info.name)
        except Exception as e:  # noqa: BLE001 - any import failure skips that module only
            short = info.name.removeprefix(package + ".")
            failures.append(
                PatchStatus(short, "skipped", f"module {info.name} failed to import: {type(e).__name__}: {e}")
            )
            continue
        patches.extend(getattr(mod, "PATCHES", ()))
    return patches, failures


def _resolve(target: str) -> tuple[object, str, object]:
    owner_path, attr = target.rsplit(".", 1)
    owner = pkgutil.resolve_name(owner_path)
    raw = owner.__dict__[attr] if isinstance(owner, type) and attr in owner.__dict__ else getattr(owner, attr)
    return owner, attr, raw


def incompatibility(patch: Patch, sglang_version: str | None) -> str | None:
    """Why ``patch`` cannot apply to the installed SGLang, or None if it can."""
    if sglang_version not in patch.sglang_versions:
        return (
            f"written for sglang {', '.join(patch.sglang_versions)}, "
            f"found {sglang_version or 'no sglang'}"
        )
    for hook in patch.hooks:
        try:
            _, _, raw = _resolve(hook.target)
        except (ImportError, AttributeError, KeyError, ValueError) as e:
            return f"hook target {hook.target} not found ({type(e).__name__}: {e})"
        fn = raw.__func__ if isinstance(raw, (classmethod, staticmethod)) else raw
        if hook.params:
            try:
                have = set(inspect.signature(fn).parameters)
            except (TypeError, ValueError):
                return f"hook target {hook.target} has no inspectable signature"
            missing = [p for p in hook.params if p not in have]
            if missing:
                return f"hook target {hook.target} changed: parameter(s) {', '.join(missing)} gone"
    if patch.check is not None:
        try:
            reason = patch.check()
        except Exception as e:  # noqa: BLE001 - a broken check must not break the server
            return f"compatibility check raised {type(e).__name__}: {e}"
        if reason:
            return reason
    return None


def _with_patch_note(hook: Hook, fn: Callable) -> Callable:
    """Wrap a hook so an exception raised through it names the patch(es) listing it."""

    def hooked(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            names = ",".join(_hook_owners.get(hook, ())) or "?"
            note = (
                f"[sglang-gemma4] raised in a call routed through patch '{names}'; "
                f"to rule the plugin out, restart with {DISABLE_ENV}={names}"
            )
            # Nested hooks of one patch (or re-raises) would otherwise repeat it.
            if note not in getattr(e, "__notes__", ()):
                e.add_note(note)
            raise

    hooked.__name__ = getattr(fn, "__name__", "hook")
    hooked.__qualname__ = f"sglang_gemma4.{getattr(fn, '__qualname__', hooked.__name__)}"
    hooked.__doc__ = fn.__doc__
    return hooked


def _register_hooks(patch: Patch) -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    kinds = {
        "around": HookType.AROUND,
        "replace": HookType.REPLACE,
        "before": HookType.BEFORE,
        "after": HookType.AFTER,
    }
    for hook in patch.hooks:
        if hook in _hook_owners:  # listed by a patch applied before: registered already
            _hook_owners[hook].append(patch.name)
            continue
        _originals[hook] = _resolve(hook.target)
        HookRegistry.register(hook.target, _with_patch_note(hook, hook.fn), kinds[hook.kind])
        _hook_owners[hook] = [patch.name]


def apply_all(patches: Sequence[Patch], import_failures: Sequence[PatchStatus] = ()) -> list[PatchStatus]:
    """Decide and register every patch once per process; return the status table."""
    global _applied_once
    if _applied_once:
        return list(_status.values())
    _applied_once = True

    version = installed_sglang_version()
    disabled = disabled_names()
    known = {p.name for p in patches}
    unknown = disabled - known - {"all"}
    if unknown:
        logger.warning(
            "%s names unknown patch(es) %s; known: %s",
            DISABLE_ENV, ", ".join(sorted(unknown)), ", ".join(sorted(known)),
        )
    for st in import_failures:
        _status[st.name] = st
    for patch in patches:
        if "all" in disabled or patch.name in disabled:
            _status[patch.name] = PatchStatus(patch.name, "disabled", f"{DISABLE_ENV}", patch.summary)
            continue
        if patch.opt_in_env and not env_flag(patch.opt_in_env):
            _status[patch.name] = PatchStatus(patch.name, "off", f"opt-in: set {patch.opt_in_env}=1", patch.summary)
            continue
        if patch.needs_cuda and not _cuda_available():
            _status[patch.name] = PatchStatus(patch.name, "off", "needs a CUDA device", patch.summary)
            continue
        reason = incompatibility(patch, version)
        if reason is None:
            try:
                _register_hooks(patch)
            except Exception as e:  # noqa: BLE001
                reason = f"registering hooks failed: {type(e).__name__}: {e}"
        if reason is not None:
            _status[patch.name] = PatchStatus(patch.name, "skipped", reason, patch.summary)
        else:
            _status[patch.name] = PatchStatus(patch.name, "applied", "", patch.summary)
    for st in _status.values():
        if st.state == "skipped":
            logger.warning("patch %s skipped: %s", st.name, st.reason)
    return list(_status.values())


def already_applied() -> bool:
    return _applied_once


def status() -> list[PatchStatus]:
    """The status table of this process (empty before ``register()`` ran)."""
    return list(_status.values())


def summary_line(version: str | None = None) -> str:
    by_state: dict[str, list[str]] = {}
    for st in _status.values():
        by_state.setdefault(st.state, []).append(st.name)
    parts = [f"sglang-gemma4 on sglang {version or installed_sglang_version()}"]
    for state in ("applied", "skipped", "disabled", "off"):
        if state in by_state:
            parts.append(f"{state}: {', '.join(by_state[state])}")
    return "; ".join(parts)


@contextlib.contextmanager
def suspended(*names: str) -> Iterator[None]:
    """Temporarily put back SGLang's own attributes for the named applied patches (all if none).

    For tests and ``python -m sglang_gemma4 check``, which compare the model with
    and without the plugin in one process. Build fresh modules on each side:
    SGLang's fused ops bind their forward method at first call, so a module
    first run inside the block keeps SGLang's path afterwards, and vice versa.
    Module-level functions rebound by ``from X import Y`` elsewhere are not
    restored; our patches hook methods.

    The named patches are not :func:`active` inside the block; a hook that
    another, unsuspended patch also lists stays in place (it asks ``active``).
    """
    chosen = set(names or (n for owners in _hook_owners.values() for n in owners))
    swapped: list[tuple[object, str, object]] = []
    added = chosen - _suspended
    _suspended.update(added)
    try:
        for hook, (owner, attr, original) in _originals.items():
            if not set(_hook_owners.get(hook, ())) <= chosen:
                continue
            current = owner.__dict__.get(attr) if isinstance(owner, type) else getattr(owner, attr)
            swapped.append((owner, attr, current))
            setattr(owner, attr, original)
        yield
    finally:
        for owner, attr, current in reversed(swapped):
            setattr(owner, attr, current)
        _suspended.difference_update(added)
