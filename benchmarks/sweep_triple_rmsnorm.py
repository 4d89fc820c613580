"""Sweep launch configs of the post-attention norm kernels (sglang_gemma4.kernels.triple_rmsnorm).

Both modes, bf16: the 4-output triple of the MoE layer at hidden 2816
(26B-A4B) and 5376 (the 31B's width), the 2-output ``post_attn_norm_add`` of
dense and PLE layers at 1536 (E2B), 2560 (E4B) and 5376 (31B). For each token
count, every candidate launch of both kernels is checked against the mode's
fp32 reference, then timed alone under CUDA-graph replay (benchmarks/harness.py
``graph_us``: median us per call over rotated input sets), next to the
yardsticks of benchmarks/benchmark_triple_rmsnorm.py (whose implementations
this reuses): one plain RMSNorm launch, SGLang's launch sequence (4 or 2
launches), ``torch.compile`` of the reference, and the floor (minimal bytes /
measured copy bandwidth).

Candidates: the row kernel with padded rows (a power-of-two block) and with
exact rows (power-of-two segments, no idle lanes), 1-2 rows per program, 4 to
32 warps; the chunked kernel with 256-1024 columns per chunk; from 1024 tokens
each also with eviction hints. ``old`` is the launch of the previous launch
rule (kept in this file), ``table`` the module's ``launch_config``; the two
fastest candidates are timed again (the spread of one config).

Run on the GPU machine (torch + triton + CUDA, no sglang)::

    PYTHONPATH=python python3 benchmarks/sweep_triple_rmsnorm.py

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


def candidates(hidden: int, tokens: int) -> list[tr.TripleNormLaunch]:
    """Row kernel, padded and exact rows, 1-2 rows per program, 4..32 elements
    of each tensor per thread; chunked kernel from 128 tokens, 4 or 8 per
    thread per chunk; from ``HINT_TOKENS_MIN`` tokens each with hints too."""
    out = []
    blocks = [triton.next_power_of_2(hidden)]
    if tr.row_segments(hidden) is not None and hidden not in blocks:
        blocks.append(hidden)
    for block in blocks:
        for rows in (1, 2):
            if rows > 1 and tokens < 64:
                continue
            for warps in (4, 8, 16, 32):
                if 4 <= rows * triton.next_power_of_2(hidden) // (32 * warps) <= 32:
                    out.append(tr.TripleNormLaunch("row", block, rows, warps))
    if tokens >= 128:
        for chunk, warps in ((256, 1), (256, 2), (512, 2), (512, 4), (1024, 4), (1024, 8)):
            if chunk < hidden:
                out.append(tr.TripleNormLaunch("chunked", chunk, 1, warps))
    if tokens >= HINT_TOKENS_MIN:
        out += [launch._replace(stream_hints=True) for launch in out]
    return out


def describe(launch: tr.TripleNormLaunch) -> str:
    if launch.kernel == "row":
        kind = f"row:{'exact' if launch.block != triton.next_power_of_2(launch.block) else 'b' + str(launch.block)}"
    else:
        kind = f"chunk:{launch.block}"
    return f"{kind}:r{launch.rows_per_program}:w{launch.num_warps}{':hints' if launch.stream_hints else ''}"


# --------------------------------------------------------------------------- precompile


def all_launches(cases: list[tuple[str, int]], tokens_list: list[int]) -> list[tuple[str, int, tr.TripleNormLaunch]]:
    jobs = set()
    for mode, hidden in cases:
        for tokens in tokens_list:
            for launch in candidates(hidden, tokens) + [old_launch(hidden, tokens), table_launch(mode, hidden, tokens)]:
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
    bench.allow_one_compile_per_shape()
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


def sweep_shape(mode: str, hidden: int, tokens: int, copy_bw: float, dry_run: bool) -> list[dict]:
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
    results = [(measure_fused(launch, "candidate"), launch) for launch in candidates(hidden, tokens)]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="*")
    parser.add_argument("--cases", nargs="*", help="mode:hidden, e.g. triple:2816 (default: all five)")
    parser.add_argument("--budget-s", type=float, default=270.0, help="skip the shapes left after this long")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--workers", type=int, default=min(15, (os.cpu_count() or 2) - 1), help="compile processes")
    args = parser.parse_args()
    if args.dry_run and os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("--dry-run needs TRITON_INTERPRET=1")
    cases = [(c.split(":")[0], int(c.split(":")[1])) for c in args.cases] if args.cases else CASES
    tokens_list = args.tokens or (DRY_RUN_TOKENS if args.dry_run else TOKEN_ORDER)

    started = time.perf_counter()
    if not args.dry_run:
        bench.allow_one_compile_per_shape()
        if args.workers > 0:
            references = [(mode, hidden, t) for t in tokens_list for mode, hidden in cases if compiles(mode, t)]
            harness.precompile_in_processes(
                [(compile_references, references), (compile_kernels, all_launches(cases, tokens_list))], args.workers
            )
            print(f"[{time.perf_counter() - started:6.1f}s] precompiled", flush=True)
    copy_bw = 4.2 if args.dry_run else harness.copy_bandwidth_TBps()
    print(f"copy bandwidth {copy_bw:.2f} TB/s", flush=True)
    rows: list[dict] = []
    for tokens in tokens_list:
        for mode, hidden in cases:
            if time.perf_counter() - started > args.budget_s:
                print(f"budget spent: skipping {mode} hidden={hidden} tokens={tokens}", flush=True)
                continue
            rows += sweep_shape(mode, hidden, tokens, copy_bw, args.dry_run)
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
