"""Sweep: launches of the end-of-layer and triple-norm kernels at 192-3072 rows, timed in context.

The benchmarks' token lists skip 192, 384, 768, 1536 and 3072 rows; there
torch.compile beat some of our launch tables. Here each candidate launch is
timed as the benchmarks time theirs: in harness.LAYOUTS memory layouts with
the input sets rotated past the L2 (harness.timed_rows), next to the table's
launch and torch.compile of the reference. (The kernel sweeps,
sweep_end_of_layer_norm.py and sweep_triple_rmsnorm.py, time each launch
alone, where at these sizes the rotated inputs stay in L2 and eviction hints
only lose.)

Cases (``--cases``): ``eol-dense`` (31B, 5376) and ``eol-moe`` (26B-A4B,
2816), the end of layer + next input norm on benchmark_end_of_layer_norm.py's
inputs: whole rows, the chunked kernel's shapes with and without eviction
hints, the persistent kernel; ``triple-5376`` and ``triple-2816``, the
4-output triple norm on benchmark_triple_rmsnorm.py's inputs: exact and padded
rows, the chunks unrolled and rolled, sums paired or not, the segmented kernel
(whole chunks and exact tails); ``norm_add-5376``,
its 2-output mode at the 31B's width (the post-attention pair): rows, chunks
and the persistent kernel.

Every candidate is checked against the fp32 reference before it is timed.
Writes ``$OUT/sweep_in_context.json`` (benchmark rows, ``impl`` = the launch,
``table`` = launch_config's, and ``torch_compile``; the floor at the measured
copy bandwidth) after every size and prints the three fastest, the table and
their ratios to torch.compile (median and least favourable layout).

Run on the GPU machine (torch + triton + CUDA, no sglang)::

    PYTHONPATH=python python3 benchmarks/sweep_in_context.py [--cases eol-dense triple-5376] [--tokens 384 768]
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark_end_of_layer_norm as beol  # noqa: E402
import benchmark_triple_rmsnorm as btr  # noqa: E402
import harness  # noqa: E402
import sweep_end_of_layer_norm as seol  # noqa: E402
import sweep_triple_rmsnorm as str_  # noqa: E402

from sglang_gemma4.kernels import end_of_layer_norm as eol  # noqa: E402
from sglang_gemma4.kernels import triple_rmsnorm as tr  # noqa: E402

TOKENS = [384, 768, 512, 1024, 192, 1536, 3072]
# (case, hidden): the dense (31B) and MoE (26B-A4B) end of layer, the 4-output triple norm, its 2-output mode.
CASES = {"eol-dense": 5376, "eol-moe": 2816, "triple-5376": 5376, "triple-2816": 2816, "norm_add-5376": 5376}
EOL_KIND = {5376: "dense", 2816: "moe"}
EOL_MODEL = {5376: "31B", 2816: "26B-A4B"}


def eol_candidates(hidden: int) -> list[eol.EndOfLayerLaunch]:
    """Whole rows padded to a power of two, the persistent kernel on exact rows,
    and the chunked kernel (among its shapes Inductor's choice for the dense
    pattern at 384-1024 rows: 2048 columns in 16 warps), with and without
    eviction hints (Inductor hints its loads: evict_last where a later pass
    reads again, evict_first for the last read), its residual row prefetched
    into L1 or L2 or not."""
    padded = triton.next_power_of_2(hidden)
    chunked = [
        eol.EndOfLayerLaunch(c, 1, w, "chunked", u, stream_hints=hints, prefetch=prefetch)
        for c, w, u in ((2048, 16, 0), (2048, 16, 1), (2048, 8, 0), (2048, 8, 1), (2048, 4, 0), (1024, 8, 1),
                        (1024, 4, 0), (1024, 4, 1))
        for hints in (False, True)
        for prefetch in ("", "L1", "L2")
        if c // 2 < hidden
    ]
    return [eol.EndOfLayerLaunch(padded, 1, 16), eol.EndOfLayerLaunch(hidden, 1, 8, "persistent", programs_per_sm=2)] + chunked


def triple_candidates(hidden: int) -> list[tr.TripleNormLaunch]:
    """Exact and padded rows, and the chunks unrolled and rolled (Inductor's
    choices for the 5376 pattern: 2048 x 16 warps at 384 rows, 1024 x 8 at
    768, as loops); the last reads hinted evict_first (they win in context
    from 257 rows), sums paired or not; and the segmented kernel's whole chunks
    and exact tails (no masked lane), hinted or not, the residual row
    prefetched into L1 or L2 or not."""
    rows = [
        tr.TripleNormLaunch("row", block, 1, 8, stream_hints=True, paired_sums=True)
        for block in (hidden, triton.next_power_of_2(hidden))
    ]
    chunks = [
        tr.TripleNormLaunch("chunked", chunk, 1, warps, stream_hints=True, rolled=rolled, paired_sums=paired)
        for chunk, warps, rolled in ((2048, 8, False), (2048, 16, False), (2048, 16, True), (1024, 8, False),
                                     (1024, 8, True), (1024, 4, True))
        for paired in (False, True)
        if chunk // 2 < hidden
    ]
    segmented = [
        tr.TripleNormLaunch("segmented", chunk, 1, warps, stream_hints=hints, rolled=rolled, paired_sums=True,
                            prefetch=prefetch)
        for chunk, warps, rolled in ((2048, 8, False), (2048, 8, True), (1024, 8, False), (1024, 8, True),
                                     (1024, 4, False), (1024, 4, True), (512, 4, True))
        for hints in (False, True)
        for prefetch in ("", "L1", "L2")
        if chunk < hidden
    ]
    return rows + chunks + segmented


def norm_add_candidates(hidden: int) -> list[tr.TripleNormLaunch]:
    """The 2-output mode (31B post-attention): padded and exact rows, the
    chunks in 4-16 warps, the persistent kernel; the last reads hinted; the
    segmented kernel, hinted or not."""
    padded = triton.next_power_of_2(hidden)
    rows = [tr.TripleNormLaunch("row", padded, 1, w) for w in (8, 16)]
    rows += [tr.TripleNormLaunch("row", block, 1, 8, stream_hints=True) for block in (padded, hidden)]
    chunks = [
        tr.TripleNormLaunch("chunked", chunk, 1, warps, stream_hints=True)
        for chunk, warps in ((2048, 16), (2048, 8), (2048, 4), (1024, 8), (1024, 4))
    ]
    persistent = [tr.TripleNormLaunch("persistent", hidden, 1, 8, programs_per_sm=p) for p in (2, 4)]
    segmented = [
        tr.TripleNormLaunch("segmented", chunk, 1, warps, stream_hints=hints, rolled=rolled)
        for chunk, warps, rolled in ((2048, 8, False), (2048, 4, False), (1024, 8, False), (1024, 4, False),
                                     (1024, 4, True))
        for hints in (False, True)
        if chunk < hidden
    ]
    return rows + chunks + persistent + segmented


def eol_case(hidden: int, tokens: int) -> tuple[dict[str, Callable], Callable[[], list], int, dict, Callable]:
    kind = EOL_KIND[hidden]
    nbytes = beol.minimal_bytes(kind, tokens, hidden)
    fused = beol.FUSED[kind]
    compiled = torch.compile(beol.REFERENCE[kind], dynamic=False)
    impls: dict[str, Callable] = {"table": lambda t: fused(*t.args, beol.EPS)}
    for launch in eol_candidates(hidden):
        impls[seol.describe(launch)] = lambda t, launch=launch: fused(*t.args, beol.EPS, launch=launch)
    impls["torch_compile"] = lambda t: compiled(*t.args, beol.EPS)

    def make_sets() -> list:
        return [beol.EndInputs(kind, tokens, hidden, seed=i) for i in range(harness.input_sets(nbytes))]

    base = {"op": "end_of_layer_norm", "model": EOL_MODEL[hidden], "hidden": hidden, "tokens": tokens,
            "table_launch": str(eol.launch_config(hidden, tokens))}
    return impls, make_sets, nbytes, base, lambda: beol.check_outputs_agree(beol.EndInputs(kind, tokens, hidden, 0), impls)


def triple_case(
    hidden: int, tokens: int, mode: str = "triple"
) -> tuple[dict[str, Callable], Callable[[], list], int, dict, Callable]:
    m = btr.MODES[mode]
    nbytes = btr.minimal_bytes(tokens, hidden, m.outputs)
    impls: dict[str, Callable] = {"table": m.fused}
    for launch in (triple_candidates if mode == "triple" else norm_add_candidates)(hidden):
        impls[str_.describe(launch)] = partial(m.fused, launch=launch)
    impls["torch_compile"] = m.compiled()

    def make_sets() -> list:
        return [btr.NormInputs(tokens, hidden, seed=i) for i in range(harness.input_sets(nbytes))]

    def check() -> None:
        btr.check_outputs_agree(btr.NormInputs(tokens, hidden, seed=0), impls, m.eager)

    model = {2816: "26B-A4B", 5376: "31B-width" if mode == "triple" else "31B"}[hidden]
    base = {"op": m.op, "model": model, "hidden": hidden, "tokens": tokens,
            "table_launch": str(tr.launch_config(hidden, tokens, m.outputs == 4))}
    return impls, make_sets, nbytes, base, check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="*", choices=list(CASES), default=list(CASES))
    parser.add_argument("--tokens", type=int, nargs="*", default=TOKENS)
    parser.add_argument("--only", nargs="*", default=[],
                        help="time only the candidates whose names contain one of these (with the table and torch.compile)")
    args = parser.parse_args()

    harness.allow_one_compile_per_shape()
    started = time.perf_counter()
    copy_bw = harness.copy_bandwidth_TBps()
    print(f"copy bandwidth {copy_bw:.2f} TB/s", flush=True)
    rows: list[dict] = []
    summary: list[dict] = []
    for tokens in args.tokens:
        for case in args.cases:
            hidden = CASES[case]
            if case.startswith("eol"):
                impls, make_sets, nbytes, base, check = eol_case(hidden, tokens)
            else:
                impls, make_sets, nbytes, base, check = triple_case(hidden, tokens, case.split("-")[0])
            for name in [n for n in impls if args.only and n not in ("table", "torch_compile")
                         and not any(o in n for o in args.only)]:
                del impls[name]  # in place: check() reads this dict
            check()
            measured = harness.timed_rows(impls, list(impls), make_sets, base, nbytes, copy_bw)
            rows += measured
            by_name = {r["impl"]: r for r in measured}
            comp = by_name["torch_compile"]
            ranked = sorted((r for r in measured if r["impl"] not in ("torch_compile", "floor")), key=lambda r: r["us"])
            for r in ranked[:3] + [by_name["table"]]:
                worst = min(c / f for c, f in zip(comp["us_layouts"], r["us_layouts"]))
                summary.append({"case": case, "tokens": tokens, "impl": r["impl"], "us": r["us"],
                                "x_compile": round(comp["us"] / r["us"], 3), "x_compile_worst": round(worst, 3)})
            harness.write_results("sweep_in_context", rows, copy_bw=copy_bw, extra={"dtype": "bfloat16"})
            print(f"[{time.perf_counter() - started:6.1f}s] {case} tokens={tokens} done", flush=True)
    harness.print_table(summary, ["case", "tokens", "impl", "us", "x_compile", "x_compile_worst"])


if __name__ == "__main__":
    main()
