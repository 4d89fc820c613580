"""Sweep launch configs of the three PLE-tail kernels (sglang_gemma4.kernels.ple_tail).

For Gemma-4 E2B (hidden 1536) and E4B (hidden 2560), per_layer_dim 256, bf16,
and each token count, every candidate config of each kernel is checked against
the kernel's fp32 reference (output poisoned first), then timed alone under
CUDA-graph replay (benchmarks/harness.py: median us per call over rotated input
sets; at most 8 sets, so below ~1000 tokens they fit in L2 together). Every
shape is tried with and without eviction hints. ``old`` is the first version
(its launch, no hints, bf16 rounded by bit trick on the GPU too), ``old_nobits``
the same without the bit trick. The two fastest configs of each kernel are
timed again (the spread of one config), and the three kernels are timed
together as the tail: old launches, the fastest, and the module's table
(``norm_launch``/``gelu_launch``).

Run on the GPU machine (torch + triton + CUDA, no sglang)::

    PYTHONPATH=python python3 benchmarks/sweep_ple_tail.py

writes ``$OUT/sweep_ple_tail.json`` (after every shape) and prints a table.
``--dry-run`` runs every candidate once on CPU under ``TRITON_INTERPRET=1``
(tiny token counts, checks only, nothing written), to catch broken configs
before spending device time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from sglang_gemma4.kernels import ple_tail as pt  # noqa: E402

HIDDEN = {1536: 35, 2560: 42}  # hidden -> num_hidden_layers (E2B, E4B)
PER_LAYER_DIM = 256
# Most telling first, in case the time budget runs out.
TOKENS = [1, 4096, 16384, 256, 8, 1024, 128, 32]
DRY_RUN_TOKENS = [1, 3, 8]
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


def old_norm(hidden: int) -> pt.NormLaunch:
    block = 1 << (hidden - 1).bit_length()
    return pt.NormLaunch("row", block, 1, max(1, min(8, block * 2 // 512)))


def old_gelu(tokens: int) -> pt.TileLaunch:
    rows = min(1 << (tokens - 1).bit_length(), 8)
    return pt.TileLaunch(rows, 256, max(1, min(4, rows)))


def norm_candidates(hidden: int, tokens: int) -> list[pt.NormLaunch]:
    """Row kernel: 8..64 elements per thread, no more rows per program than tokens;
    looped kernel: 4..8 elements per thread per chunk; each without and with hints."""
    block = 1 << (hidden - 1).bit_length()
    out = []
    for rows in (1, 2, 4, 8):
        if rows > 1 and rows > tokens:
            break
        for warps in (1, 2, 4, 8, 16):
            if 8 <= rows * block // (32 * warps) <= 64:
                out.append(pt.NormLaunch("row", block, rows, warps))
    for chunk, warps in ((256, 1), (512, 1), (512, 2), (1024, 2), (1024, 4)):
        if chunk < hidden:
            out.append(pt.NormLaunch("looped", chunk, 1, warps))
    return out + [launch._replace(stream_hints=True) for launch in out]


def gelu_candidates(tokens: int) -> list[pt.TileLaunch]:
    """Tiles of 8..64 elements per thread, no more rows than tokens; each without and with hints."""
    out = []
    for rows in (1, 2, 4, 8, 16, 32):
        if rows > 1 and rows > tokens:
            break
        for warps in (1, 2, 4, 8):
            if 8 <= rows * PER_LAYER_DIM // (32 * warps) <= 64:
                out.append(pt.TileLaunch(rows, PER_LAYER_DIM, warps))
    if tokens <= 8:  # spread one token's row over a few SMs
        out += [pt.TileLaunch(1, 128, 1), pt.TileLaunch(1, 64, 1)]
    return out + [launch._replace(stream_hints=True) for launch in out]


def call(kernel: str, s: Inputs, launch, by_bits: bool) -> torch.Tensor:
    by_bits = by_bits or pt.triton_interpreting()  # the interpreter truncates bf16 casts
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


def check(kernel: str, s: Inputs, launch, by_bits: bool) -> dict:
    """Poison the block the output will get, run once, compare with the fp32 reference."""
    ref = reference(kernel, s)
    torch.full(ref.shape, float("nan"), dtype=DTYPE, device=device())  # freed: the output reuses it
    out = call(kernel, s, launch, by_bits)
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
    return c["unwritten"] == 0 and c["over_1ulp"] == 0 and c["mismatch_frac"] <= 0.01


def describe(launch: pt.NormLaunch | pt.TileLaunch) -> str:
    hints = ":hints" if launch.stream_hints else ""
    if isinstance(launch, pt.NormLaunch):
        return f"{launch.kernel}:b{launch.block}:r{launch.rows_per_program}:w{launch.num_warps}{hints}"
    return f"tile:{launch.block_rows}x{launch.block_cols}:w{launch.num_warps}{hints}"


# --------------------------------------------------------------------------- precompile


def all_jobs(hidden_sizes: list[int], tokens_list: list[int]) -> list[tuple]:
    """Every (kernel, hidden, launch, bf16_by_bits) the sweep will launch."""
    jobs = set()
    for hidden in hidden_sizes:
        for tokens in tokens_list:
            for kernel in KERNELS:
                if kernel == "gelu_tanh_mul":  # independent of hidden: compile once
                    if hidden != hidden_sizes[0]:
                        continue
                    cands, old, table = gelu_candidates(tokens), old_gelu(tokens), pt.gelu_launch(tokens, PER_LAYER_DIM)
                else:
                    cands, old, table = norm_candidates(hidden, tokens), old_norm(hidden), pt.norm_launch(hidden, tokens)
                jobs.add((kernel, hidden, old, True))
                jobs.add((kernel, hidden, old, False))
                jobs.add((kernel, hidden, table, False))
                for launch in cands:
                    jobs.add((kernel, hidden, launch, False))
    return sorted(jobs, key=repr)


def compile_jobs(jobs: list[tuple]) -> int:
    """Launch each job once on a 2-token input: fills Triton's on-disk cache with the
    same specializations the sweep uses (n_rows is not specialized)."""
    inputs = {}
    failed = 0
    for kernel, hidden, launch, by_bits in jobs:
        s = inputs.setdefault(hidden, Inputs(2, hidden, seed=0))
        try:
            call(kernel, s, launch, by_bits)
        except Exception:
            failed += 1
            traceback.print_exc()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return failed


def precompile(jobs: list[tuple], workers: int) -> None:
    chunks = [jobs[i::workers] for i in range(workers)]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        failed = sum(pool.map(compile_jobs, chunks))
    print(f"precompiled {len(jobs)} kernels in {workers} processes ({failed} failed)", flush=True)


# --------------------------------------------------------------------------- sweep


def time_config(kernel: str, sets: list[Inputs], launch, by_bits: bool) -> float:
    return harness.graph_us([partial(call, kernel, s, launch, by_bits) for s in sets])


def sweep_shape(hidden: int, tokens: int, copy_bw: float, dry_run: bool) -> tuple[list[dict], dict]:
    rows: list[dict] = []
    best: dict[str, list[tuple[float, object]]] = {}
    for kernel in KERNELS:
        nbytes = kernel_bytes(kernel, tokens, hidden)
        n_sets = 1 if dry_run else harness.input_sets(nbytes)
        sets = [Inputs(tokens, hidden, seed=i) for i in range(n_sets)]
        floor_us = nbytes / (copy_bw * 1e12) * 1e6
        if kernel == "gelu_tanh_mul":
            candidates, old = gelu_candidates(tokens), old_gelu(tokens)
        else:
            candidates, old = norm_candidates(hidden, tokens), old_norm(hidden)
        table = pt.gelu_launch(tokens, PER_LAYER_DIM) if kernel == "gelu_tanh_mul" else pt.norm_launch(hidden, tokens)

        def measure(launch, by_bits: bool, tag: str) -> float:
            try:
                c = check(kernel, sets[0], launch, by_bits)
                us = float("nan") if dry_run or not check_ok(c) else time_config(kernel, sets, launch, by_bits)
            except Exception as e:  # a config that does not compile or launch: record it, go on
                c = {"error": f"{type(e).__name__}: {e}"[:300], "unwritten": -1, "over_1ulp": -1, "mismatch_frac": 1.0}
                us = float("nan")
            rows.append({
                "hidden": hidden, "tokens": tokens, "kernel": kernel, "config": describe(launch), "tag": tag,
                "launch": launch._asdict(), "bf16_by_bits": by_bits, "us": round(us, 3),
                "floor_us": round(floor_us, 3), "copy_pct": round(100 * floor_us / us, 1), **c,
            })
            if not check_ok(c):
                print(f"  CHECK FAILED {hidden} {tokens} {kernel} {describe(launch)}: {c}", flush=True)
            return us

        measure(old, True, "old")
        measure(old, False, "old_nobits")  # the bit trick's cost alone
        timed = [(measure(launch, False, "candidate"), launch) for launch in candidates]
        timed = sorted((t for t in timed if t[0] == t[0]), key=lambda t: t[0]) or timed
        # again, for the spread between two timings of one config
        for _, launch in timed[:2]:
            measure(launch, False, "repeat")
        measure(table, False, "table")
        best[kernel] = timed
    return rows, best


def tail_us(hidden: int, tokens: int, launches: dict[str, object], by_bits: bool) -> float:
    nbytes = sum(kernel_bytes(k, tokens, hidden) for k in KERNELS)
    sets = [Inputs(tokens, hidden, seed=100 + i) for i in range(harness.input_sets(nbytes))]

    def tail(s: Inputs) -> torch.Tensor:
        h = pt._launch_norm(s.x, s.post_ff_weight, s.residual, None, EPS, launches["rmsnorm_add"], by_bits)
        pt._launch_gelu_mul(s.gate, s.ple, launches["gelu_tanh_mul"], by_bits)
        return pt._launch_norm(s.projected, s.post_ple_weight, h, s.scale, EPS, launches["rmsnorm_add_scale"], by_bits)

    return harness.graph_us([partial(tail, s) for s in sets])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="*")
    parser.add_argument("--hidden", type=int, nargs="*", default=list(HIDDEN))
    parser.add_argument("--budget-s", type=float, default=250.0, help="skip the shapes left after this long")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--workers", type=int, default=min(14, (os.cpu_count() or 2) - 1), help="compile processes")
    args = parser.parse_args()
    if args.dry_run and os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("--dry-run needs TRITON_INTERPRET=1")
    tokens_list = args.tokens or (DRY_RUN_TOKENS if args.dry_run else TOKENS)

    started = time.perf_counter()
    if not args.dry_run and args.workers > 0:
        precompile(all_jobs(args.hidden, tokens_list), args.workers)
        print(f"[{time.perf_counter() - started:6.1f}s] precompiled", flush=True)
    copy_bw = 4.2 if args.dry_run else harness.copy_bandwidth_TBps()
    print(f"copy bandwidth {copy_bw:.2f} TB/s", flush=True)
    rows: list[dict] = []
    tails: list[dict] = []
    for tokens in tokens_list:
        for hidden in args.hidden:
            if time.perf_counter() - started > args.budget_s:
                print(f"budget spent: skipping hidden={hidden} tokens={tokens}", flush=True)
                continue
            shape_rows, best = sweep_shape(hidden, tokens, copy_bw, args.dry_run)
            rows += shape_rows
            if not args.dry_run:
                olds = {"rmsnorm_add": old_norm(hidden), "gelu_tanh_mul": old_gelu(tokens), "rmsnorm_add_scale": old_norm(hidden)}
                bests = {k: best[k][0][1] for k in KERNELS}
                table = {
                    "rmsnorm_add": pt.norm_launch(hidden, tokens),
                    "gelu_tanh_mul": pt.gelu_launch(tokens, PER_LAYER_DIM),
                    "rmsnorm_add_scale": pt.norm_launch(hidden, tokens),
                }
                floor = sum(kernel_bytes(k, tokens, hidden) for k in KERNELS) / (copy_bw * 1e12) * 1e6
                tails.append({
                    "hidden": hidden, "tokens": tokens, "floor_us": round(floor, 3),
                    "old_us": round(tail_us(hidden, tokens, olds, True), 3),
                    "best_us": round(tail_us(hidden, tokens, bests, False), 3),
                    "table_us": round(tail_us(hidden, tokens, table, False), 3),
                    "best": {k: describe(v) for k, v in bests.items()},
                })
            if not args.dry_run:  # after every shape, so a run cut short keeps what it measured
                doc = {**harness.environment(), "copy_bandwidth_TBps": round(copy_bw, 3), "rows": rows, "tails": tails}
                (harness.out_dir() / "sweep_ple_tail.json").write_text(json.dumps(doc, indent=1) + "\n")
            print(f"[{time.perf_counter() - started:6.1f}s] hidden={hidden} tokens={tokens} done", flush=True)

    failed = [r for r in rows if not check_ok(r)]
    print(f"{len(rows)} configs run, {len(failed)} failed their check ({time.perf_counter() - started:.0f}s)")
    print_summary(rows, tails)


def print_summary(rows: list[dict], tails: list[dict]) -> None:
    """Per shape and kernel: old (with and without the bit trick), the best two
    candidates, the module's table config and a repeat of the best; then the tail."""
    by_key: dict[tuple, list[dict]] = {}
    for r in rows:
        by_key.setdefault((r["hidden"], r["tokens"], r["kernel"]), []).append(r)
    print(f"{'hid':>5} {'tok':>5} {'kernel':>9} {'old':>7} {'nobits':>7} {'best':>7} {'%copy':>6} {'config':<28} {'2nd':>7} {'config':<28} {'table':>7} {'rep':>7}")
    for (hidden, tokens, kernel), rs in sorted(by_key.items()):
        old = next((r["us"] for r in rs if r["tag"] == "old"), float("nan"))
        nobits = next((r["us"] for r in rs if r["tag"] == "old_nobits"), float("nan"))
        cands = sorted((r for r in rs if r["tag"] == "candidate" and r["us"] == r["us"]), key=lambda r: r["us"])
        table = next((r["us"] for r in rs if r["tag"] == "table"), float("nan"))
        rep = next((r["us"] for r in rs if r["tag"] == "repeat"), float("nan"))
        b1 = cands[0] if cands else {"us": float("nan"), "config": "-", "copy_pct": float("nan")}
        b2 = cands[1] if len(cands) > 1 else {"us": float("nan"), "config": "-"}
        short = {"rmsnorm_add": "norm_add", "gelu_tanh_mul": "gelu_mul", "rmsnorm_add_scale": "norm_scl"}[kernel]
        print(f"{hidden:>5} {tokens:>5} {short:>9} {old:>7.2f} {nobits:>7.2f} {b1['us']:>7.2f} {b1['copy_pct']:>6.1f} {b1['config']:<28} "
              f"{b2['us']:>7.2f} {b2['config']:<28} {table:>7.2f} {rep:>7.2f}")
    if tails:
        print(f"{'hid':>5} {'tok':>5} {'floor':>7} {'old':>7} {'best':>7} {'table':>7} {'%copy':>6}")
        for t in tails:
            print(f"{t['hidden']:>5} {t['tokens']:>5} {t['floor_us']:>7.2f} {t['old_us']:>7.2f} {t['best_us']:>7.2f} "
                  f"{t['table_us']:>7.2f} {100 * t['floor_us'] / t['best_us']:>6.1f}")


if __name__ == "__main__":
    main()
