"""Sweep launch configs of the post-attention norm kernels (sglang_gemma4.kernels.triple_rmsnorm).

Both modes, bf16: the 4-output triple of the MoE layer at hidden 2816
(26B-A4B) and 5376 (the 31B's width), the 2-output ``post_attn_norm_add`` of
dense and PLE layers at 1536 (E2B), 2560 (E4B) and 5376 (31B). For each token
count, every candidate launch of both kernels is checked against the mode's
fp32 reference, then timed alone under CUDA-graph replay (benchmarks/harness.py
``graph_us``: median us per call over rotated input sets, which at decode sizes
stay in L2 across replays, so eviction hints are judged in context by
sweep_stream_hints.py instead), next to the
yardsticks of benchmarks/benchmark_triple_rmsnorm.py (whose implementations
this reuses): one plain RMSNorm launch, SGLang's launch sequence (4 or 2
launches), ``torch.compile`` of the reference, and the floor (minimal bytes /
measured copy bandwidth).

Candidates: the row kernel with padded rows (a power-of-two block) and with
exact rows (power-of-two segments, no idle lanes), one row per program, 4 to
16 warps, in the 4-output mode also with the sums of s and r paired in one
reduction; from 1024 tokens each also with eviction hints (those with unpaired
sums). From 128 tokens the chunked kernel, 1024 and 2048 columns per chunk in
4-16 warps, its passes unrolled and rolled (Inductor's choice for this
reduction: 1024 x 8 warps, 2048 x 16), some also with paired sums. (Two rows
per program, 32 warps, 256/512-column chunks and hinted chunks lost everywhere
in the 2026-11-29 sweep and are no longer tried.) From 1024 tokens the
persistent kernel in the unpaired rows' shapes, with and without hints, 1-4
programs per SM (``--kernels`` limits the candidates to some kernels; old,
table and the yardsticks are always timed). ``old`` is the launch of the
previous launch rule (kept in this file), ``table`` the module's
``launch_config``; the two fastest candidates are timed again (the spread of
one config).

Run on the GPU machine (torch + triton + CUDA, no sglang)::

    PYTHONPATH=python python3 benchmarks/sweep_triple_rmsnorm.py
    PYTHONPATH=python python3 benchmarks/sweep_triple_rmsnorm.py --budget-s 190 \
        --cases triple:2816:1,32,4096,16384,8,2,128,1024,8192 triple:5376:1,512,1024,4096,16384,256,32,8

writes ``$OUT/sweep_triple_rmsnorm.json`` (after every shape) and prints a
table. ``--dry-run`` runs every candidate once on CPU under
``TRITON_INTERPRET=1`` (the candidates of a few token counts, on at most 3
rows, checks only, nothing written).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from functools import partial
from pathlib import Path
from typing import Callable

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark_triple_rmsnorm as bench  # noqa: E402
import harness  # noqa: E402

from sglang_gemma4.kernels import triple_rmsnorm as tr  # noqa: E402

# (mode, hidden), most telling first in case the time budget runs out.
CASES = [("triple", 2816), ("norm_add", 5376), ("triple", 5376), ("norm_add", 2560), ("norm_add", 1536)]
TOKENS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384]
# Sweep order: the targets' sizes first.
TOKEN_ORDER = [1, 256, 4096, 16384, 32, 128, 1024, 512, 8, 64, 16, 4, 2]
# The dry run builds the candidates of these token counts, runs them on at most
# DRY_RUN_ROWS rows (the interpreter is slow).
DRY_RUN_TOKENS = [1, 64, 1024]
DRY_RUN_ROWS = 3
# torch.compile costs seconds per shape: every size for the triple (issue 8's
# targets), these for the 2-output mode.
NORM_ADD_COMPILE_TOKENS = {1, 32, 128, 256, 1024, 4096, 16384}
HINT_TOKENS_MIN = 1024


def old_launch(hidden: int, n_rows: int) -> tr.TripleNormLaunch:
    """The launch rule before this sweep (padded rows up to 128 rows, then 1024-column chunks)."""
    if n_rows > 128 and hidden > 1024:
        return tr.TripleNormLaunch("chunked", 1024, 1, 4)
    block = triton.next_power_of_2(hidden)
    rows = max(1, min(16, 2048 // block))
    return tr.TripleNormLaunch("row", block, rows, max(4, min(32, rows * block // 256)))


# Chunked candidates from 128 tokens: (columns, warps) unrolled, rolled, and
# which of those also with paired sums (4-output mode).
UNROLLED_CHUNKS = [(1024, 4), (1024, 8), (2048, 8), (2048, 16)]
ROLLED_CHUNKS = [(1024, 4), (1024, 8), (1024, 16), (2048, 8), (2048, 16)]
PAIRED_CHUNKS = [(1024, 8, True), (2048, 16, True)]  # (columns, warps, rolled)
# Rows with paired sums up to this many tokens (the latency-bound sizes).
PAIRED_ROWS_TOKENS_MAX = 1024
# The persistent kernel from this many tokens (a grid of a few programs per SM
# only pays once the rows outnumber them), with these programs per SM.
PERSISTENT_TOKENS_MIN = 1024
PERSISTENT_PROGRAMS_PER_SM = (1, 2, 3, 4)
KERNELS = ("row", "chunked", "persistent")


def candidates(
    mode: str, hidden: int, tokens: int, kernels: tuple[str, ...] = KERNELS
) -> list[tr.TripleNormLaunch]:
    """Row kernel, padded and exact rows, one row per program, 4..32 elements
    of each tensor per thread, paired sums too in the 4-output mode up to
    ``PAIRED_ROWS_TOKENS_MAX`` tokens; from
    ``HINT_TOKENS_MIN`` tokens the unpaired rows with hints too. From 128 tokens
    the chunked kernel (``UNROLLED_CHUNKS``, ``ROLLED_CHUNKS``, ``PAIRED_CHUNKS``).
    From ``PERSISTENT_TOKENS_MIN`` tokens the persistent kernel: the unpaired
    rows' shapes, with and without hints, at ``PERSISTENT_PROGRAMS_PER_SM``."""
    pairing = (False, True) if bench.MODES[mode].outputs == 4 and tokens <= PAIRED_ROWS_TOKENS_MAX else (False,)
    out = []
    blocks = [triton.next_power_of_2(hidden)]
    if tr.row_segments(hidden) is not None and hidden not in blocks:
        blocks.append(hidden)
    for block in blocks:
        for warps in (4, 8, 16):
            if 4 <= triton.next_power_of_2(hidden) // (32 * warps) <= 32:
                for paired in pairing:
                    out.append(tr.TripleNormLaunch("row", block, 1, warps, paired_sums=paired))
    rows = [launch for launch in out if not launch.paired_sums]
    if tokens >= HINT_TOKENS_MIN:
        out += [launch._replace(stream_hints=True) for launch in rows]
    if tokens >= PERSISTENT_TOKENS_MIN:
        out += [
            launch._replace(kernel="persistent", stream_hints=hints, programs_per_sm=programs)
            for launch in rows
            for hints in (False, True)
            for programs in PERSISTENT_PROGRAMS_PER_SM
        ]
    if tokens >= 128:
        out += [tr.TripleNormLaunch("chunked", chunk, 1, warps) for chunk, warps in UNROLLED_CHUNKS]
        out += [tr.TripleNormLaunch("chunked", chunk, 1, warps, rolled=True) for chunk, warps in ROLLED_CHUNKS]
        if bench.MODES[mode].outputs == 4:
            out += [
                tr.TripleNormLaunch("chunked", chunk, 1, warps, rolled=rolled, paired_sums=True)
                for chunk, warps, rolled in PAIRED_CHUNKS
            ]
    return [launch for launch in out if launch.kernel in kernels]


def describe(launch: tr.TripleNormLaunch) -> str:
    if launch.kernel in ("row", "persistent"):
        kind = f"{launch.kernel}:{'exact' if launch.block != triton.next_power_of_2(launch.block) else 'b' + str(launch.block)}"
        if launch.kernel == "persistent":
            kind += f":{launch.programs_per_sm}/sm"
    else:
        kind = f"{'seg' if launch.kernel == 'segmented' else 'chunk'}:{launch.block}{':rolled' if launch.rolled else ''}"
    flags = (":hints" if launch.stream_hints else "") + (":paired" if launch.paired_sums else "")
    flags += f":pf{launch.prefetch}" if launch.prefetch else ""
    return f"{kind}:r{launch.rows_per_program}:w{launch.num_warps}{flags}"


# --------------------------------------------------------------------------- precompile


def all_launches(
    shapes: list[tuple[str, int, int]], kernels: tuple[str, ...] = KERNELS
) -> list[tuple[str, int, tr.TripleNormLaunch]]:
    jobs = set()
    for mode, hidden, tokens in shapes:
        for launch in candidates(mode, hidden, tokens, kernels) + [old_launch(hidden, tokens), table_launch(mode, hidden, tokens)]:
            jobs.add((mode, hidden, launch))
    return sorted(jobs, key=repr)


def compile_kernels(jobs: list[tuple[str, int, tr.TripleNormLaunch]]) -> int:
    """Launch each (mode, hidden, launch) once on 2 rows: fills Triton's on-disk
    cache with the specializations the sweep uses (n_rows is not specialized)."""
    failed = 0
    inputs: dict[int, bench.NormInputs] = {}
    for mode, hidden, launch in jobs:
        t = inputs.setdefault(hidden, bench.NormInputs(2, hidden, seed=0))
        try:
            bench.MODES[mode].fused(t.fresh(), launch)
        except Exception:
            failed += 1
            traceback.print_exc()
    torch.cuda.synchronize()
    return failed


def compile_references(shapes: list[tuple[str, int, int]]) -> int:
    """Compile the torch.compile yardstick of each shape once: Inductor's on-disk
    caches then serve the timing process."""
    harness.configure_sweep_inductor()
    failed = 0
    for mode, hidden, tokens in shapes:
        try:
            bench.MODES[mode].compiled()(bench.NormInputs(tokens, hidden, seed=0))
        except Exception:
            failed += 1
            traceback.print_exc()
    torch.cuda.synchronize()
    return failed


# --------------------------------------------------------------------------- sweep


def table_launch(mode: str, hidden: int, tokens: int) -> tr.TripleNormLaunch:
    return tr.launch_config(hidden, tokens, bench.MODES[mode].outputs == 4)


def compiles(mode: str, tokens: int) -> bool:
    return mode == "triple" or tokens in NORM_ADD_COMPILE_TOKENS


def check(mode: str, t: bench.NormInputs, fn: Callable) -> str | None:
    """None if ``fn`` computes the mode's outputs (see bench.check_outputs_agree), else why not."""
    m = bench.MODES[mode]
    try:
        bench.check_outputs_agree(t, {"fused": fn}, m.eager)
    except Exception as e:
        return f"{type(e).__name__}: {e}"[:300]
    return None


def sweep_shape(
    mode: str, hidden: int, tokens: int, copy_bw: float, dry_run: bool, kernels: tuple[str, ...] = KERNELS
) -> list[dict]:
    m = bench.MODES[mode]
    nbytes = bench.minimal_bytes(tokens, hidden, m.outputs)
    n_sets = 1 if dry_run else harness.input_sets(nbytes)
    n_rows = min(tokens, DRY_RUN_ROWS) if dry_run else tokens
    sets = [bench.NormInputs(n_rows, hidden, seed=i) for i in range(n_sets)]
    floor_us = nbytes / (copy_bw * 1e12) * 1e6
    base = {"mode": mode, "hidden": hidden, "tokens": tokens, "floor_us": round(floor_us, 3)}
    rows: list[dict] = []

    def timed(fn: Callable) -> float:
        return float("nan") if dry_run else harness.graph_us([partial(fn, s) for s in sets])

    def measure_fused(launch: tr.TripleNormLaunch, tag: str) -> float:
        fn = partial(m.fused, launch=launch)
        error = check(mode, sets[0], fn)
        us = float("nan") if error else timed(fn)
        rows.append({
            **base, "impl": "fused", "tag": tag, "config": describe(launch), "launch": launch._asdict(),
            "us": round(us, 3), "copy_pct": round(100 * floor_us / us, 1), "error": error,
        })
        if error:
            print(f"  CHECK FAILED {mode} {hidden} {tokens} {describe(launch)}: {error}", flush=True)
        return us

    yardsticks = {"plain_rmsnorm": bench.plain_rmsnorm, "sglang": m.sglang}
    if compiles(mode, tokens) and not dry_run:
        yardsticks["torch_compile"] = m.compiled()
    for impl, fn in yardsticks.items():
        error = None if impl == "plain_rmsnorm" else check(mode, sets[0], fn)
        us = timed(fn)
        impl_bytes = bench.plain_rmsnorm_bytes(tokens, hidden) if impl == "plain_rmsnorm" else nbytes
        rows.append({**base, "impl": impl, "tag": "yardstick", "us": round(us, 3),
                     "copy_pct": round(100 * impl_bytes / (copy_bw * 1e12) * 1e6 / us, 1), "error": error})

    measure_fused(old_launch(hidden, tokens), "old")
    measure_fused(table_launch(mode, hidden, tokens), "table")
    results = [(measure_fused(launch, "candidate"), launch) for launch in candidates(mode, hidden, tokens, kernels)]
    results = sorted((r for r in results if r[0] == r[0]), key=lambda r: r[0])
    for _, launch in results[:2]:
        measure_fused(launch, "repeat")
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Per (mode, hidden, tokens): old, table and best fused launch against the yardsticks."""
    out = []
    for (mode, hidden, tokens), _ in harness.impls_by_size(rows, "mode", "hidden", "tokens"):
        shape = [r for r in rows if (r["mode"], r["hidden"], r["tokens"]) == (mode, hidden, tokens)]
        fused = [r for r in shape if r["impl"] == "fused" and r["us"] == r["us"]]
        if not fused:
            continue
        best = min(fused, key=lambda r: r["us"])
        us = {r["impl"]: r["us"] for r in shape if r["impl"] != "fused"}
        old = next(r["us"] for r in fused if r["tag"] == "old")
        table = next(r["us"] for r in fused if r["tag"] == "table")
        out.append({
            "mode": mode, "hidden": hidden, "tokens": tokens, "old_us": old, "table_us": table,
            "best_us": best["us"], "best": best["config"], "plain_us": us.get("plain_rmsnorm"),
            "sglang_us": us.get("sglang"), "compile_us": us.get("torch_compile"),
            "copy_pct_best": best["copy_pct"],
        })
    return out


def plan_shapes(case_args: list[str] | None, tokens_list: list[int]) -> list[tuple[str, int, int]]:
    """(mode, hidden, tokens) in sweep order. Cases without their own token
    counts take ``tokens_list``; shapes are ordered by position in their
    case's token list, then by case (the targets' sizes first)."""
    cases = []
    for arg in case_args or [f"{mode}:{hidden}" for mode, hidden in CASES]:
        mode, hidden, *own = arg.split(":")
        if mode not in bench.MODES:
            sys.exit(f"unknown mode {mode!r} in --cases {arg}")
        cases.append((mode, int(hidden), [int(t) for t in own[0].split(",")] if own else tokens_list))
    depth = max(len(tokens) for _, _, tokens in cases)
    return [(mode, hidden, tokens[i]) for i in range(depth) for mode, hidden, tokens in cases if i < len(tokens)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="*")
    parser.add_argument(
        "--cases",
        nargs="*",
        help="mode:hidden[:tokens,...], e.g. triple:2816 or triple:2816:1,32,4096 (own token counts; "
        "default: all five cases at --tokens)",
    )
    parser.add_argument("--budget-s", type=float, default=270.0, help="skip the shapes left after this long")
    parser.add_argument("--kernels", nargs="*", choices=KERNELS, default=list(KERNELS), help="candidates of these kernels")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--workers", type=int, default=min(15, (os.cpu_count() or 2) - 1), help="compile processes")
    args = parser.parse_args()
    if args.dry_run and os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("--dry-run needs TRITON_INTERPRET=1")
    tokens_list = args.tokens or (DRY_RUN_TOKENS if args.dry_run else TOKEN_ORDER)
    shapes = plan_shapes(args.cases, tokens_list)
    kernels = tuple(args.kernels)
    print(f"{len(shapes)} shapes, {sum(len(candidates(*s, kernels)) for s in shapes)} candidates", flush=True)

    started = time.perf_counter()
    copy_bw = harness.prepare_sweep(
        args.dry_run,
        args.workers,
        lambda: [
            (compile_references, [shape for shape in shapes if compiles(shape[0], shape[2])]),
            (compile_kernels, all_launches(shapes, kernels)),
        ],
        started,
    )
    rows: list[dict] = []
    for mode, hidden, tokens in shapes:
        if time.perf_counter() - started > args.budget_s:
            print(f"budget spent: skipping {mode} hidden={hidden} tokens={tokens}", flush=True)
            continue
        rows += sweep_shape(mode, hidden, tokens, copy_bw, args.dry_run, kernels)
        if not args.dry_run:  # after every shape, so a run cut short keeps what it measured
            doc = {
                "benchmark": "sweep_triple_rmsnorm", **harness.environment(),
                "copy_bandwidth_TBps": round(copy_bw, 3), "summary": summarize(rows), "rows": rows,
            }
            (harness.out_dir() / "sweep_triple_rmsnorm.json").write_text(json.dumps(doc, indent=1) + "\n")
        print(f"[{time.perf_counter() - started:6.1f}s] {mode} hidden={hidden} tokens={tokens} done", flush=True)

    failed = [r for r in rows if r.get("error")]
    print(f"{len(rows)} timings, {len(failed)} failed their check ({time.perf_counter() - started:.0f}s)")
    if not args.dry_run:
        harness.print_table(
            summarize(rows),
            ["mode", "hidden", "tokens", "old_us", "table_us", "best_us", "best", "plain_us", "sglang_us",
             "compile_us", "copy_pct_best"],
        )
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
