"""The real start-up mechanism: SGLang's entry-point discovery and load_plugins(), in fresh processes."""

import importlib.metadata

from tests.cpu.harness import run_python

PROBE = """
from sglang.srt.plugins import load_plugins
load_plugins()
from sglang.srt.layers.layernorm import Gemma4RMSNorm
import torch
norm = Gemma4RMSNorm(4, with_scale=False)
norm.weight.fill_(2.0)
# HookRegistry's wrappers carry the replaced function in __wrapped__.
print("HOOKED", hasattr(Gemma4RMSNorm.forward_native, "__wrapped__"))
print("ROUTER_SCALE_HONOURED", bool((norm.forward_native(torch.ones(1, 4)) > 1.5).all()))
"""


def test_entry_point_is_listed():
    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="sglang.srt.plugins")}
    assert eps.get("gemma4") == "sglang_gemma4.plugin:register"


def test_load_plugins_applies_the_plugin():
    r = run_python(
        PROBE, env={"SGLANG_GEMMA4_DISABLE": "<unset>", "SGLANG_PLUGINS": "<unset>", "SGLANG_GEMMA4_PDL": "<unset>"}
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "HOOKED True" in r.stdout and "ROUTER_SCALE_HONOURED True" in r.stdout
    summary = [l for l in r.stderr.splitlines() if "[sglang-gemma4]" in l and "applied:" in l]
    assert len(summary) == 1, r.stderr[-3000:]
    assert "router_scale" in summary[0]
    assert "programmatic dependent launch where measured faster (SGLANG_GEMMA4_PDL=auto)" in summary[0]


def test_disable_all_leaves_sglang_untouched():
    r = run_python(PROBE, env={"SGLANG_GEMMA4_DISABLE": "all", "SGLANG_PLUGINS": "<unset>"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "HOOKED False" in r.stdout and "ROUTER_SCALE_HONOURED False" in r.stdout
    summary = next(l for l in r.stderr.splitlines() if "[sglang-gemma4]" in l and "disabled:" in l)
    assert "applied:" not in summary and "router_scale" in summary.split("disabled:")[1]


def test_sglang_plugins_whitelist_is_respected():
    r = run_python(PROBE, env={"SGLANG_PLUGINS": "some_other_plugin", "SGLANG_GEMMA4_DISABLE": "<unset>"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "HOOKED False" in r.stdout
    assert "[sglang-gemma4]" not in r.stderr
