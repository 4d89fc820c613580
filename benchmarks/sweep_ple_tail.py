"""Sweep launch configs of the three PLE-tail kernels (sglang_gemma4.kernels.ple_tail).

For Gemma-4 E2B (hidden 1536) and E4B (hidden 2560), per_layer_dim 256, bf16,
and each token count, every candidate config of each kernel is checked against
the kernel's fp32 reference (output poisoned first), then timed alone under
CUDA-graph replay (benchmarks/harness.py: median us per call over rotated input
sets; at most 8 sets, so below ~1000 tokens they fit in L2 together, and
eviction hints only lose hits there: sweep_stream_hints.py judges the hints
in context, where they won from 257 rows).

Norm candidates: padded rows (the row kernel, block the next power of two) and
exact rows (the "exact" kernel: the row as power-of-two segments, no idle
lanes), 1/2/4 rows per program, 4/8/16 warps; the looped kernel from 8192
tokens. From 512 tokens the two fastest are timed again with eviction hints,
and the fastest once more (the spread of one config). ``rmsnorm_add_scale``
moves the same bytes as ``rmsnorm_add`` and is timed at its three fastest
configs only; ``gelu_tanh_mul``'s tiles are swept at 512-4096 tokens (at E2B;
it does not depend on hidden), elsewhere the tail uses the table's tile.
Then the three kernels together as the tail, in interleaved turns
(``harness.graph_us_interleaved``): the fastest configs ("best"), the fastest
without exact rows ("padded"), the module's table (``norm_launch``/
``gelu_launch``, through the public wrappers) and ``torch_compile`` of the three
fp32 references, as benchmarks/benchmark_ple_tail.py times them.

Run on the GPU machine (torch + triton + CUDA, no sglang)::

    PYTHONPATH=python python3 benchmarks/sweep_ple_tail.py

writes ``$OUT/sweep_ple_tail.json`` (after every shape) and prints a table.
Triton kernels and Inductor graphs are compiled first in parallel processes
(``--workers``); Inductor's chosen configs are not cached, so the timed process
autotunes its compiled references itself, on an idle GPU. ``--dry-run`` runs
every candidate once on CPU under ``TRITON_INTERPRET=1`` (tiny token counts,
checks only, nothing written; the candidates of the prefill sizes run on a
few rows), to catch broken configs before spending device time. ``--budget-s``
counts timing only: shapes are skipped once it is spent (most telling first).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from sglang_gemma4.kernels import ple_tail as pt  # noqa: E402

HIDDEN = {1536: 35, 2560: 42}  # hidden -> num_hidden_layers (E2B, E4B)
MODEL = {1536: "E2B", 2560: "E4B"}
PER_LAYER_DIM = 256
# Most telling first, in case the time budget runs out.
TOKENS = [4096, 512, 1024, 2048, 8192, 16384, 1, 2, 8, 32]
DRY_RUN_TOKENS = [1, 3, 512, 8192]
# under the interpreter every shape's candidates run on at most this many rows
# (not a multiple of 2 or 4: the last program is partly empty)
DRY_RUN_ROWS = 5
# From here on the fastest hint-less candidates are timed again with eviction hints.
HINTS_MIN_TOKENS = 512
HINTED_TOP = 2
# gelu_tanh_mul's tiles are swept at these sizes only (launch-latency bound there;
# above, the table's tiles reach 85% of copy), and at the first hidden size only.
GELU_SWEEP_TOKENS = range(512, 4097)
# rmsnorm_add_scale moves the bytes rmsnorm_add does: it is timed at the fastest
# configs of rmsnorm_add only.
SCALE_FROM_TOP = 3
DTYPE = torch.bfloat16
EPS = 1e-6
LAYER = 7
KERNELS = ("rmsnorm_add", "gelu_tanh_mul", "rmsnorm_add_scale")


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class Inputs:
    """One input set of the tail for ``tokens`` tokens (weights and scalar included)."""

    def __init__(self, tokens: int, hidden: int, seed: int) -> None:
        gen = torch.Generator(device=device()).manual_seed(seed)

        def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
            return (scale * torch.randn(*shape, device=device(), generator=gen)).to(DTYPE)

        self.x = randn(tokens, hidden)
        self.residual = randn(tokens, hidden)
        self.projected = randn(tokens, hidden)
        self.gate = randn(tokens, PER_LAYER_DIM)
        self.ple = randn(tokens, HIDDEN[hidden], PER_LAYER_DIM)[:, LAYER, :]
        self.post_ff_weight = randn(hidden, scale=0.1) + 1
        self.post_ple_weight = randn(hidden, scale=0.1) + 1
        self.scale = torch.tensor([0.3], dtype=DTYPE, device=device())


def kernel_bytes(kernel: str, tokens: int, hidden: int) -> int:
    e = DTYPE.itemsize
    if kernel == "gelu_tanh_mul":
        return 3 * tokens * PER_LAYER_DIM * e
    return 3 * tokens * hidden * e + hidden * e


# --------------------------------------------------------------------------- candidates


def norm_candidates(hidden: int, tokens: int) -> list[pt.NormLaunch]:
    """Padded rows (``block`` the next power of two) and exact rows (``block`` =
    hidden, power-of-two segments), 1/2/4 rows per program (no more than tokens),
    4/8/16 warps (from 2 at decode sizes), 4..64 elements per thread (the row's
    real ones for exact rows); from 8192 tokens on also the looped kernel."""
    padded = 1 << (hidden - 1).bit_length()
    exact = pt.exact_row_segments(hidden) is not None and padded != hidden
    warps_list = (4, 8, 16) if tokens >= HINTS_MIN_TOKENS else (2, 4, 8, 16)
    out = []
    for kind, block in (("row", padded), ("exact", hidden)) if exact else (("row", padded),):
        for rows in (1, 2, 4):
            if rows > 1 and (rows > tokens or tokens < HINTS_MIN_TOKENS):
                break
            for warps in warps_list:
                if 4 <= rows * block // (32 * warps) <= 64:
                    out.append(pt.NormLaunch(kind, block, rows, warps))
    if tokens >= 8192:
        out += [pt.NormLaunch("looped", 1024, 1, 4), pt.NormLaunch("looped", 512, 1, 2)]
    return out


def gelu_candidates(tokens: int) -> list[pt.TileLaunch]:
    """Tiles of 1..64 rows x 256, 1..16 warps, 8..32 elements per thread, no more rows than tokens."""
    out = []
    for rows in (1, 2, 4, 8, 16, 32, 64):
        if rows > 1 and rows > tokens:
            break
        for warps in (1, 2, 4, 8, 16):
            if 8 <= rows * PER_LAYER_DIM // (32 * warps) <= 32:
                out.append(pt.TileLaunch(rows, PER_LAYER_DIM, warps))
    return out


def hinted(launches: list) -> list:
    return [launch._replace(stream_hints=True) for launch in launches if not launch.stream_hints]


def swept_kernels(hidden: int, tokens: int, hidden_sizes: list[int]) -> tuple[str, ...]:
    """The kernels whose candidates are timed at this shape (the others run the table's launch in the tail)."""
    gelu = tokens in GELU_SWEEP_TOKENS and hidden == hidden_sizes[0]
    return KERNELS if gelu else ("rmsnorm_add", "rmsnorm_add_scale")


def table_launch(kernel: str, hidden: int, tokens: int):
    if kernel == "gelu_tanh_mul":
        return pt.gelu_launch(tokens, PER_LAYER_DIM)
    return pt.norm_launch(hidden, tokens)


def candidates(kernel: str, hidden: int, tokens: int) -> list:
    return gelu_candidates(tokens) if kernel == "gelu_tanh_mul" else norm_candidates(hidden, tokens)


def compiled_launches(kernel: str, hidden: int, tokens: int) -> list:
    """Every launch the sweep may time at this shape: the candidates, their hinted
    forms (which of them get timed is decided while timing) and the table's."""
    launches = candidates(kernel, hidden, tokens)
    if tokens >= HINTS_MIN_TOKENS:
        launches = launches + hinted(launches)
    return launches + [table_launch(kernel, hidden, tokens)]


def call(kernel: str, s: Inputs, launch) -> torch.Tensor:
    by_bits = pt.triton_interpreting()  # the interpreter truncates bf16 casts
    if kernel == "rmsnorm_add":
        return pt._launch_norm(s.x, s.post_ff_weight, s.residual, None, EPS, launch, by_bits)
    if kernel == "rmsnorm_add_scale":
        return pt._launch_norm(s.projected, s.post_ple_weight, s.residual, s.scale, EPS, launch, by_bits)
    return pt._launch_gelu_mul(s.gate, s.ple, launch, by_bits)


def reference(kernel: str, s: Inputs) -> torch.Tensor:
    if kernel == "rmsnorm_add":
        return pt.rmsnorm_add_reference(s.x, s.post_ff_weight, s.residual, EPS)
    if kernel == "rmsnorm_add_scale":
        return pt.rmsnorm_add_scale_reference(s.projected, s.post_ple_weight, s.residual, s.scale, EPS)
    return pt.gelu_tanh_mul_reference(s.gate, s.ple)


def check(kernel: str, s: Inputs, launch) -> dict:
    """Poison the block the output will get, run once, compare with the fp32 reference."""
    ref = reference(kernel, s)
    torch.full(ref.shape, float("nan"), dtype=DTYPE, device=device())  # freed: the output reuses it
    out = call(kernel, s, launch)
    unwritten = int(out.isnan().sum().item())
    diff = (out.float() - ref.float()).abs()
    # one bf16 ulp of the result or, for the norms, of the residual added last
    operand = s.residual.float().abs().max() if kernel != "gelu_tanh_mul" else 1.0
    tol = 2.0**-7 * (ref.float().abs() + operand)
    return {
        "unwritten": unwritten,
        "mismatch_frac": float((out != ref).float().mean().item()),
        "over_1ulp": int((diff > tol).sum().item()),
    }


def check_ok(c: dict) -> bool:
    return c.get("unwritten") == 0 and c["over_1ulp"] == 0 and c["mismatch_frac"] <= 0.01


def describe(launch: pt.NormLaunch | pt.TileLaunch) -> str:
    hints = ":hints" if launch.stream_hints else ""
    if isinstance(launch, pt.NormLaunch):
        lanes = f":l{launch.lanes}" if launch.lanes else ""
        return f"{launch.kernel}:b{launch.block}:r{launch.rows_per_program}:w{launch.num_warps}{lanes}{hints}"
    return f"tile:{launch.block_rows}x{launch.block_cols}:w{launch.num_warps}{hints}"


# --------------------------------------------------------------------------- precompile


def _bench():
    """benchmarks/benchmark_ple_tail.py (its inputs, fused tail and compiled references); CUDA only."""
    import benchmark_ple_tail

    return benchmark_ple_tail


def all_jobs(hidden_sizes: list[int], tokens_list: list[int]) -> list[tuple]:
    """Every Inductor compilation (hidden, tokens) and Triton (kernel, hidden, launch) the sweep runs."""
    jobs = set()
    for hidden in hidden_sizes:
        for tokens in tokens_list:
            jobs.add(("compile", hidden, tokens))
            for kernel in KERNELS:
                if kernel in swept_kernels(hidden, tokens, hidden_sizes):
                    launches = compiled_launches(kernel, hidden, tokens)
                else:
                    launches = [table_launch(kernel, hidden, tokens)]
                for launch in launches:
                    jobs.add((kernel, hidden, launch))
    # Inductor first: it takes longest per job.
    return sorted(jobs, key=lambda j: (j[0] != "compile", repr(j)))


def compile_jobs(jobs: list[tuple]) -> int:
    """Fill Triton's and Inductor's on-disk caches: each Triton job launched once on
    a 2-token input (n_rows is not specialized), each Inductor graph at its shape."""
    harness.configure_sweep_inductor()
    bench = _bench()
    inputs = {}
    failed = 0
    for job in jobs:
        try:
            if job[0] == "compile":
                _, hidden, tokens = job
                bench.compiled_reference()(bench.TailInputs(tokens, hidden, HIDDEN[hidden], seed=0))
            else:
                kernel, hidden, launch = job
                call(kernel, inputs.setdefault(hidden, Inputs(2, hidden, seed=0)), launch)
        except Exception:
            failed += 1
            traceback.print_exc()
    torch.cuda.synchronize()
    return failed


# --------------------------------------------------------------------------- sweep


def sweep_shape(
    hidden: int, tokens: int, hidden_sizes: list[int], copy_bw: float, dry_run: bool
) -> tuple[list[dict], dict[str, dict]]:
    """Time this shape's candidates; return the rows and, for the tail, the
    fastest launch of each kernel overall ("best") and without exact rows
    ("padded"); a kernel not swept here gets the table's launch."""
    rows: list[dict] = []
    picks: dict[str, dict] = {"best": {}, "padded": {}}
    timed_by_kernel: dict[str, list[tuple[float, object]]] = {}
    for kernel in KERNELS:
        if kernel not in swept_kernels(hidden, tokens, hidden_sizes):
            for pick in picks.values():
                pick[kernel] = table_launch(kernel, hidden, tokens)
            continue
        nbytes = kernel_bytes(kernel, tokens, hidden)
        n_sets = 1 if dry_run else harness.input_sets(nbytes)
        sets = [Inputs(min(tokens, DRY_RUN_ROWS) if dry_run else tokens, hidden, seed=i) for i in range(n_sets)]
        floor_us = nbytes / (copy_bw * 1e12) * 1e6

        def measure(launch, tag: str) -> float:
            try:
                c = check(kernel, sets[0], launch)
                us = float("nan") if dry_run or not check_ok(c) else harness.graph_us(
                    [partial(call, kernel, s, launch) for s in sets])
            except Exception as e:  # a config that does not compile or launch: record it, go on
                c = {"error": f"{type(e).__name__}: {e}"[:300], "unwritten": -1, "over_1ulp": -1, "mismatch_frac": 1.0}
                us = float("nan")
            rows.append({
                "hidden": hidden, "tokens": tokens, "kernel": kernel, "config": describe(launch), "tag": tag,
                "launch": launch._asdict(), "us": round(us, 3),
                "floor_us": round(floor_us, 3), "copy_pct": round(100 * floor_us / us, 1), **c,
            })
            if not check_ok(c):
                print(f"  CHECK FAILED {hidden} {tokens} {kernel} {describe(launch)}: {c}", flush=True)
            return us

        def fastest(timed: list[tuple[float, object]]) -> list[tuple[float, object]]:
            return sorted((t for t in timed if t[0] == t[0]), key=lambda t: t[0]) or timed

        if kernel == "rmsnorm_add_scale":
            by_speed = [launch for _, launch in timed_by_kernel["rmsnorm_add"]]
            tried = by_speed[:SCALE_FROM_TOP]
            # and the fastest padded one, for the "padded" tail
            tried += [launch for launch in by_speed if launch.kernel != "exact" and launch not in tried][:1]
            timed = fastest([(measure(launch, "candidate"), launch) for launch in tried])
        else:
            timed = fastest([(measure(launch, "candidate"), launch) for launch in candidates(kernel, hidden, tokens)])
            if tokens >= HINTS_MIN_TOKENS:
                # the dry run has no timings to rank by: it checks every hinted form
                top = [launch for _, launch in (timed if dry_run else timed[:HINTED_TOP])]
                timed = fastest(timed + [(measure(launch, "hinted"), launch) for launch in hinted(top)])
            measure(timed[0][1], "repeat")  # the spread between two timings of one config
        measure(table_launch(kernel, hidden, tokens), "table")
        timed_by_kernel[kernel] = timed
        picks["best"][kernel] = timed[0][1]
        padded = [launch for _, launch in timed if getattr(launch, "kernel", "") != "exact"]
        picks["padded"][kernel] = padded[0] if padded else table_launch(kernel, hidden, tokens)
    return rows, picks


def tail_timings(hidden: int, tokens: int, picks: dict[str, dict], copy_bw: float) -> dict:
    """The tail's three kernels at the fastest configs ("best"), at the fastest
    without exact rows ("padded"), at the module's table (public wrappers) and
    torch_compile, timed in interleaved turns on the same inputs."""
    bench = _bench()
    nbytes = bench.minimal_bytes(tokens, hidden)
    sets = [bench.TailInputs(tokens, hidden, HIDDEN[hidden], seed=100 + i) for i in range(harness.input_sets(nbytes))]

    def picked_tail(launches: dict, t) -> torch.Tensor:
        h = pt._launch_norm(t.x, t.post_ff_weight, t.residual, None, EPS, launches["rmsnorm_add"], False)
        pt._launch_gelu_mul(t.gate, t.ple, launches["gelu_tanh_mul"], False)
        return pt._launch_norm(
            t.projected, t.post_ple_weight, h, t.layer_scalar, EPS, launches["rmsnorm_add_scale"], False
        )

    impls = {
        "best": partial(picked_tail, picks["best"]),
        "padded": partial(picked_tail, picks["padded"]),
        "table": bench.fused,
        "torch_compile": bench.compiled_reference(),
    }
    try:
        bench.check_outputs_agree(sets[0], impls)
        agree = "ok"
    except AssertionError as e:  # recorded, not fatal: e.g. compile off by 2 bf16 ulps on one element
        agree = str(e)[:300]
        print(f"  tail {hidden} x {tokens}: outputs differ: {agree}", flush=True)
    times = harness.graph_us_interleaved(
        {name: [partial(impl, t) for t in sets] for name, impl in impls.items()}, replays=100, rounds=5
    )
    return {
        "hidden": hidden, "model": MODEL[hidden], "tokens": tokens,
        "floor_us": round(nbytes / (copy_bw * 1e12) * 1e6, 3),
        **{f"{name}_us": round(us, 3) for name, us in times.items()},
        "best": {k: describe(v) for k, v in picks["best"].items()},
        "padded": {k: describe(v) for k, v in picks["padded"].items()},
        "table": {k: describe(table_launch(k, hidden, tokens)) for k in KERNELS},
        "outputs_agree": agree,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="*")
    parser.add_argument("--hidden", type=int, nargs="*", default=list(HIDDEN))
    parser.add_argument(
        "--budget-s", type=float, default=130.0,
        help="skip the shapes left once timing has run this long (precompile not counted)",
    )
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--workers", type=int, default=min(14, (os.cpu_count() or 2) - 1), help="compile processes")
    parser.add_argument("--wait-for", type=Path, help="before timing, wait until this file exists")
    args = parser.parse_args()
    if args.dry_run and os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("--dry-run needs TRITON_INTERPRET=1")
    tokens_list = args.tokens or (DRY_RUN_TOKENS if args.dry_run else TOKENS)

    started = time.perf_counter()
    copy_bw = harness.prepare_sweep(
        args.dry_run, args.workers, lambda: [(compile_jobs, all_jobs(args.hidden, tokens_list))], started, args.wait_for
    )
    timing_started = time.perf_counter()
    rows: list[dict] = []
    tails: list[dict] = []
    gelu_picks: dict[int, dict[str, object]] = {}  # tokens -> gelu_tanh_mul's picks at the first hidden size
    for tokens in tokens_list:
        for hidden in args.hidden:
            if time.perf_counter() - timing_started > args.budget_s:
                print(f"budget spent: skipping hidden={hidden} tokens={tokens}", flush=True)
                continue
            shape_rows, picks = sweep_shape(hidden, tokens, args.hidden, copy_bw, args.dry_run)
            rows += shape_rows
            if "gelu_tanh_mul" in swept_kernels(hidden, tokens, args.hidden):
                gelu_picks[tokens] = {name: pick["gelu_tanh_mul"] for name, pick in picks.items()}
            for name, launch in gelu_picks.get(tokens, {}).items():  # gelu does not depend on hidden
                picks[name]["gelu_tanh_mul"] = launch
            if not args.dry_run:
                tails.append(tail_timings(hidden, tokens, picks, copy_bw))
                # after every shape, so a run cut short keeps what it measured
                doc = {"benchmark": "sweep_ple_tail", **harness.environment(),
                       "copy_bandwidth_TBps": round(copy_bw, 3), "rows": rows, "tails": tails}
                (harness.out_dir() / "sweep_ple_tail.json").write_text(json.dumps(doc, indent=1) + "\n")
            print(f"[{time.perf_counter() - started:6.1f}s] hidden={hidden} tokens={tokens} done", flush=True)

    failed = [r for r in rows if not check_ok(r)]
    print(f"{len(rows)} configs run, {len(failed)} failed their check ({time.perf_counter() - started:.0f}s)")
    print_summary(rows, tails)


def print_summary(rows: list[dict], tails: list[dict]) -> None:
    """Per shape and kernel: the best two timed configs, the table's config and a
    repeat of the best; then the tail: best, padded, table, torch_compile."""
    by_key: dict[tuple, list[dict]] = {}
    for r in rows:
        by_key.setdefault((r["hidden"], r["tokens"], r["kernel"]), []).append(r)
    print(f"{'hid':>5} {'tok':>5} {'kernel':>9} {'best':>7} {'%copy':>6} {'config':<32} {'2nd':>7} {'config':<32} {'table':>7} {'rep':>7}")
    for (hidden, tokens, kernel), rs in sorted(by_key.items()):
        cands = sorted(
            (r for r in rs if r["tag"] in ("candidate", "hinted") and r["us"] == r["us"]), key=lambda r: r["us"]
        )
        table = next((r["us"] for r in rs if r["tag"] == "table"), float("nan"))
        rep = next((r["us"] for r in rs if r["tag"] == "repeat"), float("nan"))
        b1 = cands[0] if cands else {"us": float("nan"), "config": "-", "copy_pct": float("nan")}
        b2 = cands[1] if len(cands) > 1 else {"us": float("nan"), "config": "-"}
        short = {"rmsnorm_add": "norm_add", "gelu_tanh_mul": "gelu_mul", "rmsnorm_add_scale": "norm_scl"}[kernel]
        print(f"{hidden:>5} {tokens:>5} {short:>9} {b1['us']:>7.2f} {b1['copy_pct']:>6.1f} {b1['config']:<32} "
              f"{b2['us']:>7.2f} {b2['config']:<32} {table:>7.2f} {rep:>7.2f}")
    if tails:
        print(f"{'hid':>5} {'tok':>5} {'floor':>7} {'best':>7} {'padded':>7} {'table':>7} {'compile':>7} "
              f"{'%copy best':>10} {'%copy table':>11}")
        for t in tails:
            print(f"{t['hidden']:>5} {t['tokens']:>5} {t['floor_us']:>7.2f} {t['best_us']:>7.2f} {t['padded_us']:>7.2f} "
                  f"{t['table_us']:>7.2f} {t['torch_compile_us']:>7.2f} {100 * t['floor_us'] / t['best_us']:>10.1f} "
                  f"{100 * t['floor_us'] / t['table_us']:>11.1f}")


if __name__ == "__main__":
    main()
