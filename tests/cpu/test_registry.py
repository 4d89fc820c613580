"""The patch registry: decisions, the disable switch, skips with reasons, run-time errors."""

import logging

import pytest

from sglang_gemma4 import plugin, registry
from sglang_gemma4.registry import Hook, Patch


class Target:
    """A hook target of our own, so these tests leave SGLang untouched."""

    def double(self, x):
        return 2 * x

    def triple(self, x):
        return 3 * x


HERE = __name__


def _add_one(original, self, x):
    return original(self, x) + 1


def _explode(original, self, x):
    raise ValueError("boom")


def _forget_test_targets():
    from sglang.srt.plugins.hook_registry import HookRegistry

    for target in [t for t in HookRegistry._hooks if t.startswith(f"{HERE}.")]:
        del HookRegistry._hooks[target]
        HookRegistry._patched.discard(target)


@pytest.fixture
def fresh_registry(monkeypatch):
    """An empty registry state for one test; the session's real state comes back after."""
    monkeypatch.setattr(registry, "_status", {})
    monkeypatch.setattr(registry, "_originals", {})
    monkeypatch.setattr(registry, "_hook_owners", {})
    monkeypatch.setattr(registry, "_suspended", set())
    monkeypatch.setattr(registry, "_applied_once", False)
    saved = {name: Target.__dict__[name] for name in ("double", "triple")}
    _forget_test_targets()
    yield
    _forget_test_targets()
    for name, fn in saved.items():
        setattr(Target, name, fn)


def _apply(patches):
    from sglang.srt.plugins.hook_registry import HookRegistry

    table = {s.name: s for s in registry.apply_all(patches)}
    HookRegistry.apply_hooks()
    return table


def good_patch(name="good", method="double", fn=_add_one):
    return Patch(name, "test patch", (Hook(f"{HERE}.Target.{method}", fn, "around", params=("self", "x")),), "never")


def test_applies_and_reports(fresh_registry):
    table = _apply([good_patch()])
    assert table["good"].state == "applied"
    assert Target().double(5) == 11
    assert "applied: good" in registry.summary_line()


def test_missing_target_is_skipped_with_warning_and_others_apply(fresh_registry, caplog):
    missing = Patch("missing", "x", (Hook(f"{HERE}.Target.no_such_method", _add_one),), "never")
    with caplog.at_level(logging.WARNING, logger="sglang_gemma4"):
        table = _apply([missing, good_patch()])
    assert table["missing"].state == "skipped"
    assert "no_such_method" in table["missing"].reason
    assert table["good"].state == "applied"
    assert Target().double(1) == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"patch missing skipped: {table['missing'].reason}"]


def test_changed_signature_is_skipped(fresh_registry):
    changed = Patch("changed", "x", (Hook(f"{HERE}.Target.double", _add_one, params=("self", "y")),), "never")
    table = _apply([changed])
    assert table["changed"].state == "skipped"
    assert "parameter(s) y gone" in table["changed"].reason
    assert Target().double(1) == 2


def test_failing_check_is_skipped(fresh_registry):
    p = Patch("checked", "x", (Hook(f"{HERE}.Target.double", _add_one),), "never", check=lambda: "shape moved")
    assert _apply([p])["checked"].reason == "shape moved"


def test_other_sglang_version_skips_every_patch(fresh_registry, monkeypatch):
    monkeypatch.setattr(registry, "installed_sglang_version", lambda: "0.5.24")
    table = _apply([good_patch()])
    assert table["good"].state == "skipped"
    assert table["good"].reason == "written for sglang 0.5.23, found 0.5.24"
    assert Target().double(1) == 2


@pytest.mark.parametrize("value", ["all", "1", "good,other"])
def test_disable_switch(fresh_registry, monkeypatch, value):
    monkeypatch.setenv(registry.DISABLE_ENV, value)
    table = _apply([good_patch(), good_patch("other", "triple")])
    assert table["good"].state == "disabled"
    assert Target().double(1) == 2


def test_disable_one_keeps_the_others(fresh_registry, monkeypatch):
    monkeypatch.setenv(registry.DISABLE_ENV, "good")
    table = _apply([good_patch(), good_patch("other", "triple")])
    assert (table["good"].state, table["other"].state) == ("disabled", "applied")
    assert Target().triple(1) == 4


def test_opt_in_patch_is_off_until_its_switch_is_set(fresh_registry, monkeypatch):
    p = Patch("trap", "x", (Hook(f"{HERE}.Target.double", _add_one),), "never", opt_in_env="SGLANG_TEST_TRAP")
    monkeypatch.delenv("SGLANG_TEST_TRAP", raising=False)
    assert _apply([p])["trap"].state == "off"
    assert Target().double(1) == 2


def test_cuda_only_patch_is_off_without_cuda(fresh_registry, monkeypatch):
    monkeypatch.setattr(registry, "_cuda_available", lambda: False)
    p = Patch("cuda_only", "x", (Hook(f"{HERE}.Target.double", _add_one),), "never", needs_cuda=True)
    st = _apply([p])["cuda_only"]
    assert (st.state, st.reason) == ("off", "needs a CUDA device")
    assert Target().double(1) == 2


def _explode_twice(original, self, x):
    return Target.triple(self, x)


def test_nested_hooks_of_one_patch_note_once(fresh_registry):
    p = Patch(
        "nested", "x",
        (Hook(f"{HERE}.Target.double", _explode_twice), Hook(f"{HERE}.Target.triple", _explode)),
        "never",
    )
    _apply([p])
    with pytest.raises(ValueError) as info:
        Target().double(1)
    assert len(info.value.__notes__) == 1


def test_runtime_error_names_the_patch(fresh_registry):
    _apply([good_patch("explosive", fn=_explode)])
    with pytest.raises(ValueError, match="boom") as info:
        Target().double(1)
    notes = "".join(getattr(info.value, "__notes__", []))
    assert "patch 'explosive'" in notes and f"{registry.DISABLE_ENV}=explosive" in notes


def test_apply_all_runs_once(fresh_registry):
    _apply([good_patch()])
    assert registry.apply_all([good_patch("late", "triple")]) == registry.status()
    assert Target().triple(1) == 3


def test_suspended_restores_and_reapplies(fresh_registry):
    _apply([good_patch()])
    with registry.suspended("good"):
        assert Target().double(1) == 2
    assert Target().double(1) == 3


def _add_ten_if_b_active(original, self, x):
    return original(self, x) + (10 if registry.active("b") else 0)


SHARED = Hook(f"{HERE}.Target.double", _add_ten_if_b_active, "around", params=("self", "x"))


def test_a_hook_listed_by_two_patches_is_registered_once(fresh_registry):
    table = _apply([Patch("a", "x", (SHARED,), "never"), Patch("b", "x", (SHARED,), "never")])
    assert table["a"].state == table["b"].state == "applied"
    assert Target().double(1) == 12, "wrapped once: one +10, not two"
    assert registry.active("a") and registry.active("b") and not registry.active("nonexistent")


def test_a_shared_hook_stays_while_another_owner_is_on(fresh_registry, monkeypatch):
    monkeypatch.setenv(registry.DISABLE_ENV, "a")
    _apply([Patch("a", "x", (SHARED,), "never"), Patch("b", "x", (SHARED,), "never")])
    assert Target().double(1) == 12
    with registry.suspended("b"):
        assert not registry.active("b")
        assert Target().double(1) == 2, "no applied owner left: the original is back"
    assert registry.active("b") and Target().double(1) == 12


def test_suspending_one_owner_keeps_the_hook_for_the_other(fresh_registry):
    _apply([Patch("a", "x", (SHARED,), "never"), Patch("b", "x", (SHARED,), "never")])
    with registry.suspended("b"):
        assert registry.active("a") and not registry.active("b")
        assert Target().double(1) == 2, "the hook stays (a is on) and sees b suspended"
    with registry.suspended():
        assert not registry.active("a") and Target().double(1) == 2
    assert Target().double(1) == 12


def test_an_error_in_a_shared_hook_names_every_owner(fresh_registry):
    hook = Hook(f"{HERE}.Target.double", _explode, "around")
    _apply([Patch("a", "x", (hook,), "never"), Patch("b", "x", (hook,), "never")])
    with pytest.raises(ValueError) as info:
        Target().double(1)
    assert f"{registry.DISABLE_ENV}=a,b" in "".join(info.value.__notes__)


def test_register_twice_changes_nothing(plugin_table):
    from sglang.srt.layers.layernorm import Gemma4RMSNorm

    before = Gemma4RMSNorm.__dict__["forward_native"]
    again = {s.name: s.state for s in plugin.register()}
    assert again == {n: s.state for n, s in plugin_table.items()}
    assert Gemma4RMSNorm.__dict__["forward_native"] is before
    assert not hasattr(before.__wrapped__, "__wrapped__"), "wrapped once, not twice"


def test_real_patches_declare_what_a_maintainer_needs(plugin_table):
    patches, failures = registry.discover()
    assert not failures, failures
    names = [p.name for p in patches]
    assert len(names) == len(set(names)), "patch names must be unique"
    for p in patches:
        assert p.name.isidentifier() and p.summary and p.delete_when and p.hooks
