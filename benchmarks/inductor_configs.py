"""Which Triton kernels and launch configs torch.compile (Inductor) picks for our references.

Where Inductor beats one of our launch tables, its choice is a lead: the chunk
width, warps, pipeline stages and eviction hints of the kernel it generated.
For each (pattern, rows) below this compiles the benchmarks' fp32 reference
as they do (``torch.compile(dynamic=False)``), runs it once (Inductor
autotunes then, on this GPU), and records every Inductor kernel of the graph:
its name, the launch config it kept, the candidates it had, and its source
(``$OUT/<tag>_<kernel>.py``, generated code to read, not to copy).

Writes ``$OUT/inductor_configs.json``. Run on the GPU machine::

    PYTHONPATH=python python3 benchmarks/inductor_configs.py
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark_end_of_layer_norm as beol  # noqa: E402
import benchmark_triple_rmsnorm as btr  # noqa: E402
import harness  # noqa: E402

EOL_DENSE_TOKENS = (384, 1024)
TRIPLE_5376_TOKENS = (384, 768)


def _autotuners() -> list:
    from torch._inductor.runtime.triton_heuristics import CachingAutotuner

    found = []
    for obj in gc.get_objects():
        try:
            if isinstance(obj, CachingAutotuner):
                found.append(obj)
        except ReferenceError:  # a dead weak proxy among the objects
            pass
    return found


def _config(config) -> dict:
    return {"kwargs": dict(config.kwargs), "num_warps": config.num_warps, "num_stages": config.num_stages}


def record(tag: str, fn, args: tuple, seen: set[int], out: Path) -> list[dict]:
    """Run ``fn(*args)`` and describe the Inductor kernels it created."""
    fn(*args)
    torch.cuda.synchronize()
    rows = []
    for tuner in _autotuners():
        if id(tuner) in seen:
            continue
        seen.add(id(tuner))
        if not getattr(tuner, "launchers", None):  # a copy that never launched
            continue
        name = getattr(tuner.fn, "__name__", "kernel")
        (out / f"{tag}_{name}.py").write_text(getattr(tuner.fn, "src", ""))
        chosen = [
            {**_config(launcher.config), "regs": getattr(launcher, "n_regs", None), "spills": getattr(launcher, "n_spills", None)}
            for launcher in tuner.launchers
        ]
        candidates = [_config(c) for c in getattr(tuner, "configs", None) or []]
        rows.append({"tag": tag, "kernel": name, "chosen": chosen, "candidates": candidates})
        print(tag, name, chosen, flush=True)
    return rows


def main() -> None:
    harness.allow_one_compile_per_shape()
    out = harness.out_dir()
    seen: set[int] = set()
    rows: list[dict] = []
    for tokens in EOL_DENSE_TOKENS:
        t = beol.EndInputs("dense", tokens, 5376, 0)
        compiled = torch.compile(beol.REFERENCE["dense"], dynamic=False)
        rows += record(f"eol_dense_{tokens}", compiled, (*t.args, beol.EPS), seen, out)
    for tokens in TRIPLE_5376_TOKENS:
        rows += record(f"triple5376_{tokens}", btr.compiled_reference(), (btr.NormInputs(tokens, 5376, 0),), seen, out)
    doc = {"benchmark": "inductor_configs", **harness.environment(), "rows": rows}
    (out / "inductor_configs.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
