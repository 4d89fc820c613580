"""Sweep the launch shapes of the end-of-layer kernel (sglang_gemma4.kernels.end_of_layer_norm).

For each layer kind at its Gemma-4 width (MoE 2816, dense 5376, PLE 1536 and
2560; by default MoE, dense and E4B) and each token count, every candidate
launch (the row kernel's own launch: whole rows padded to a power of two in
registers; the chunked kernel at 512, 1024 and 2048 columns in 4 or 8 warps,
its passes after the first unrolled or rolled: ``unroll`` 0, 1, 2; from 1024
tokens the persistent kernel, exact and padded rows, 4-16 warps, 1-4 programs
per SM, exact rows also with the activations cached in L2 only; ``--kernels``
limits the candidates) is checked against the fp32
reference (outputs poisoned first), then timed under CUDA-graph replay
(benchmarks/harness.py: median us per call over rotated input sets); the
fastest is timed again (the spread of one config). Baselines from
benchmarks/benchmark_end_of_layer_norm.py: ``torch_compile`` of the fp32
reference (one static-shape compilation per shape, from ``--compile-min-tokens``
tokens on) and the floor (minimal bytes / measured copy bandwidth). ``table``
marks the module's launch_config.

Run on the GPU machine (torch + triton + CUDA, no sglang)::

    PYTHONPATH=python python3 benchmarks/sweep_end_of_layer_norm.py

writes ``$OUT/sweep_end_of_layer_norm.json`` after every shape and prints, per
shape, the fastest candidate, launch_config's and compile's times. Triton
kernels and the Inductor graphs are compiled first in parallel processes
(``--workers``); ``--budget-s`` counts from the end of that (and of ``--wait-for``); Inductor's chosen configs are not cached, so the timed process
autotunes its compiled references itself, on an idle GPU. ``--dry-run`` (with
``TRITON_INTERPRET=1``) runs every candidate once on tiny CPU shapes, checks
only, to catch broken configs before spending device time.
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

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark_end_of_layer_norm as bench  # noqa: E402
import harness  # noqa: E402

from sglang_gemma4.kernels import end_of_layer_norm as eol  # noqa: E402
from sglang_gemma4.kernels.row_segments import power_of_two_segments  # noqa: E402

MODELS = ("26B-A4B", "31B", "E2B", "E4B")
DEFAULT_MODELS = ["26B-A4B", "31B", "E4B"]
# Most telling first, in case the time budget runs out.
TOKENS = [16384, 4096, 8192, 1024, 512]
# (chunk columns, warps, unroll) of the chunked kernel. Registers (ptxas -v, sm_90, triton 3.8, bf16)
# MoE 2816 / dense 5376 / E4B 2560: 1024x4 u0 105/103/63, u1 74/63/62, u2 106/65/90; 1024x8 u0 76/95/61,
# u1 71/48/64; 2048x8 u0 101/64/75, u1 73/63/48; 512x4 u0 95/72/78, u1 56/47/47.
CHUNKED_CANDIDATES = [(1024, 4, 0), (1024, 8, 0), (2048, 8, 0), (1024, 4, 1), (1024, 4, 2), (1024, 8, 1),
                      (2048, 8, 1), (512, 4, 0), (512, 4, 1)]
DRY_RUN = {"models": {"26B-A4B": ("moe", 160), "31B": ("dense", 336), "E2B": ("ple", 96)}, "tokens": [1, 20]}


# The persistent kernel from this many tokens, with these programs per SM and
# warps (those giving 4-32 columns of a padded row per thread).
PERSISTENT_TOKENS_MIN = 1024
PERSISTENT_PROGRAMS_PER_SM = (1, 2, 3, 4)
PERSISTENT_WARPS = (4, 8, 16)
# Exact rows also with the activation loads cached in L2 only (act_cache
# ".cg", meant to leave the SM's L1 to the weights): these (warps, programs per SM).
ACT_CACHE_SHAPES = ((8, 2), (8, 4), (4, 3))
KERNELS = ("row", "chunked", "persistent")


def candidates(
    hidden: int, tokens: int, kernels: tuple[str, ...] = KERNELS, persistent_min: int = PERSISTENT_TOKENS_MIN
) -> list[eol.EndOfLayerLaunch]:
    """The row kernel's launch, the chunked kernel's candidates, and from
    ``persistent_min`` tokens the persistent kernel's: exact rows (where the
    width is at most three powers of two) and padded ones; only ``kernels``."""
    out = [eol.row_launch(hidden)] + [
        eol.EndOfLayerLaunch(chunk, 1, warps, "chunked", unroll) for chunk, warps, unroll in CHUNKED_CANDIDATES
    ]
    if tokens >= persistent_min:
        padded = triton.next_power_of_2(hidden)
        blocks = [padded] + ([hidden] if hidden != padded and power_of_two_segments(hidden, 3) else [])
        out += [
            eol.EndOfLayerLaunch(block, 1, warps, "persistent", programs_per_sm=programs)
            for block in blocks
            for warps in PERSISTENT_WARPS
            if 4 <= padded // (32 * warps) <= 32
            for programs in PERSISTENT_PROGRAMS_PER_SM
        ]
        if blocks[-1] == hidden:
            out += [
                eol.EndOfLayerLaunch(hidden, 1, warps, "persistent", programs_per_sm=programs, act_cache=".cg")
                for warps, programs in ACT_CACHE_SHAPES
            ]
    return [launch for launch in out if launch.kernel in kernels]


def describe(launch: eol.EndOfLayerLaunch) -> str:
    per_sm = f":{launch.programs_per_sm}/sm" if launch.kernel == "persistent" else ""
    per_sm += f":{launch.act_cache}" if launch.act_cache else ""
    per_sm += ":hints" if launch.stream_hints else ""
    per_sm += f":pf{launch.prefetch}" if launch.prefetch else ""
    return f"{launch.kernel}:{launch.block_h}:r{launch.rows_per_program}:w{launch.num_warps}:u{launch.unroll}{per_sm}"


def run(kind: str, t: bench.EndInputs, launch: eol.EndOfLayerLaunch) -> tuple[torch.Tensor, torch.Tensor]:
    return bench.FUSED[kind](*t.args, bench.EPS, launch=launch)


def check(kind: str, t: bench.EndInputs, launch: eol.EndOfLayerLaunch) -> dict:
    """Poison the blocks the outputs will get, run once, compare with the fp32 reference."""
    want = bench.REFERENCE[kind](*t.args, bench.EPS)
    poison = [torch.full_like(w, float("nan")) for w in want]
    del poison  # freed: the outputs reuse the blocks
    got = run(kind, t, launch)
    unwritten = sum(int(g.isnan().sum().item()) for g in got)
    worst = 0.0
    for g, w in zip(got, want):
        scale = w.float().pow(2).mean(dim=-1, keepdim=True).sqrt() + w.float().abs() + torch.finfo(w.dtype).tiny
        worst = max(worst, float(((g.float() - w.float()).abs() / scale).max().item()))
    share = max(float((g != w).float().mean().item()) for g, w in zip(got, want))
    return {"unwritten": unwritten, "max_rel_diff": worst, "mismatch_frac": share}


def check_ok(c: dict) -> bool:
    # within two bf16 ulps (2 * 2**-7) of the element plus its row's rms, on few
    # elements (the bound of tests/end_of_layer_norm_checks.py)
    return c.get("unwritten") == 0 and c["max_rel_diff"] <= 2.0**-6 and c["mismatch_frac"] <= 0.01


# --------------------------------------------------------------------------- precompile


def all_jobs(
    models: list[str], tokens_list: list[int], compile_min_tokens: int, kernels: tuple[str, ...] = KERNELS
) -> list[tuple]:
    jobs: set[tuple] = set()
    for model in models:
        kind, hidden = bench.MODELS[model]
        for tokens in tokens_list:
            if tokens >= compile_min_tokens:
                jobs.add(("compile", model, tokens, None))
            # Triton specializes the row count on == 1 and on divisibility by 16: one stand-in per class.
            rows_class = 1 if tokens == 1 else 16 if tokens % 16 == 0 else 17
            for launch in candidates(hidden, tokens, kernels) + [eol.launch_config(hidden, tokens)]:
                jobs.add(("triton", model, rows_class, launch))
    # Inductor first: it takes longest per job.
    return sorted(jobs, key=lambda j: (j[0] != "compile", repr(j)))


def compile_jobs(jobs: list[tuple]) -> int:
    """Fill Triton's and Inductor's on-disk caches (each Triton job at a row count
    of the same specialization class as the sizes it stands for)."""
    harness.configure_sweep_inductor()
    failed = 0
    for what, model, tokens, launch in jobs:
        kind, hidden = bench.MODELS[model]
        try:
            t = bench.EndInputs(kind, tokens, hidden, seed=0)
            if what == "compile":
                torch.compile(bench.REFERENCE[kind], dynamic=False)(*t.args, bench.EPS)
            else:
                run(kind, t, launch)
        except Exception:
            failed += 1
            traceback.print_exc()
    torch.cuda.synchronize()
    return failed


# --------------------------------------------------------------------------- sweep


def sweep_shape(
    model: str, tokens: int, copy_bw: float, dry_run: bool, compile_min_tokens: int, kernels: tuple[str, ...] = KERNELS
) -> list[dict]:
    kind, hidden = DRY_RUN["models"][model] if dry_run else bench.MODELS[model]
    nbytes = bench.minimal_bytes(kind, tokens, hidden)
    sets = [bench.EndInputs(kind, tokens, hidden, seed=i) for i in range(1 if dry_run else harness.input_sets(nbytes))]
    floor_us = nbytes / (copy_bw * 1e12) * 1e6
    replays = 20 if tokens >= 4096 else 50
    base = {"model": model, "layer": kind, "hidden": hidden, "tokens": tokens, "floor_us": round(floor_us, 3)}
    rows = []

    def record(tag: str, config: str, us: float, extra: dict) -> None:
        rows.append({**base, "tag": tag, "config": config, "us": round(us, 3),
                     "copy_pct": round(100 * floor_us / us, 1) if us == us else float("nan"), **extra})

    table = eol.launch_config(hidden, tokens)
    launches = candidates(hidden, tokens, kernels, persistent_min=1 if dry_run else PERSISTENT_TOKENS_MIN)
    for launch in launches + ([] if table in launches else [table]):
        tag = "table" if launch == table else "candidate"
        try:
            c = check(kind, sets[0], launch)
            ok = check_ok(c)
            us = float("nan") if dry_run or not ok else harness.graph_us(
                [partial(run, kind, s, launch) for s in sets], replays=replays)
        except Exception as e:  # a config that does not compile or launch: record it, go on
            c, ok, us = {"error": f"{type(e).__name__}: {e}"[:300]}, False, float("nan")
        if not ok:
            print(f"  CHECK FAILED {model} {tokens} {describe(launch)}: {c}", flush=True)
        record(tag, describe(launch), us, {"launch": launch._asdict(), **c})
    if not dry_run:
        if tokens >= compile_min_tokens:
            compiled = torch.compile(bench.REFERENCE[kind], dynamic=False)
            us = harness.graph_us([partial(lambda t: compiled(*t.args, bench.EPS), s) for s in sets], replays=replays)
            record("torch_compile", "inductor", us, {})
        # the fastest candidate again: the spread of one config between two timings
        timed = [r for r in rows if r["tag"] in ("candidate", "table") and r["us"] == r["us"]]
        if timed:
            best = min(timed, key=lambda r: r["us"])
            launch = eol.EndOfLayerLaunch(**best["launch"])
            us = harness.graph_us([partial(run, kind, s, launch) for s in sets], replays=replays)
            record("repeat", best["config"], us, {"launch": launch._asdict()})
    return rows


def summary(rows: list[dict]) -> list[dict]:
    out = []
    for (model, tokens), group in harness.impls_by_size(
        [{**r, "impl": f"{r['tag']}:{r['config']}"} for r in rows], "model", "tokens"
    ):
        cands = sorted((r for r in group.values() if r["tag"] in ("candidate", "table") and r["us"] == r["us"]),
                       key=lambda r: r["us"])
        table = next((r for r in group.values() if r["tag"] == "table"), {"us": float("nan"), "config": "-"})
        comp = next((r["us"] for r in group.values() if r["tag"] == "torch_compile"), float("nan"))
        floor = next(iter(group.values()))["floor_us"]
        best = cands[0] if cands else {"us": float("nan"), "config": "-"}
        out.append({
            "model": model, "tokens": tokens, "best_us": best["us"], "best": best["config"],
            "table_us": table["us"], "table": table["config"], "compile_us": comp, "floor_us": floor,
            "best_pct": round(100 * floor / best["us"], 1) if best["us"] == best["us"] else float("nan"),
        })
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="*")
    parser.add_argument("--models", nargs="*", default=DEFAULT_MODELS, choices=list(MODELS))
    parser.add_argument("--budget-s", type=float, default=130.0,
                        help="skip the shapes left after timing this long (precompile not counted)")
    parser.add_argument("--workers", type=int, default=min(12, (os.cpu_count() or 2) - 1), help="compile processes")
    parser.add_argument("--wait-for", type=Path, help="before timing, wait until this file exists (GPU tests done)")
    parser.add_argument("--compile-min-tokens", type=int, default=2048, help="time torch.compile from here on")
    parser.add_argument("--kernels", nargs="*", choices=KERNELS, default=list(KERNELS),
                        help="candidates of these kernels (launch_config's is always timed)")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    if args.dry_run:
        if os.environ.get("TRITON_INTERPRET") != "1":
            sys.exit("--dry-run needs TRITON_INTERPRET=1")
        bench.DEVICE = "cpu"
        args.models = list(DRY_RUN["models"])
    tokens_list = args.tokens or (DRY_RUN["tokens"] if args.dry_run else TOKENS)

    started = time.perf_counter()
    copy_bw = harness.prepare_sweep(
        args.dry_run,
        args.workers,
        lambda: [(compile_jobs, all_jobs(args.models, tokens_list, args.compile_min_tokens, tuple(args.kernels)))],
        started,
        args.wait_for,
    )
    timing_started = time.perf_counter()
    rows: list[dict] = []
    for tokens in tokens_list:
        for model in args.models:
            if time.perf_counter() - timing_started > args.budget_s:
                print(f"budget spent: skipping {model} tokens={tokens}", flush=True)
                continue
            rows += sweep_shape(model, tokens, copy_bw, args.dry_run, args.compile_min_tokens, tuple(args.kernels))
            if not args.dry_run:  # after every shape, so a run cut short keeps what it measured
                doc = {"benchmark": "sweep_end_of_layer_norm", **harness.environment(),
                       "copy_bandwidth_TBps": round(copy_bw, 3), "dtype": "bfloat16", "rows": rows}
                (harness.out_dir() / "sweep_end_of_layer_norm.json").write_text(json.dumps(doc, indent=1) + "\n")
            print(f"[{time.perf_counter() - started:6.1f}s] {model} tokens={tokens} done", flush=True)
    checked = [r for r in rows if r["tag"] in ("candidate", "table")]
    failed = sum(not check_ok(r) for r in checked)
    print(f"{len(checked)} configs run, {failed} failed their check ({time.perf_counter() - started:.0f}s)")
    if not args.dry_run:
        harness.print_table(summary(rows), ["model", "tokens", "best_us", "best", "table_us", "table", "compile_us",
                                            "floor_us", "best_pct"])


if __name__ == "__main__":
    main()
