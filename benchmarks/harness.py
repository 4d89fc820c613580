"""Shared measurement code for the GPU benchmarks (METHOD.md's rules in one place).

Every benchmark script builds callables for each implementation, hands them to
:func:`timed_rows` (median microseconds per call under CUDA-graph replay,
several input sets rotated so repeated calls do not measure L2, the
implementations timed in turns, all of it repeated in several memory layouts),
and writes one JSON file
plus one PNG in the format of DESIGN.md section 9 through :func:`write_results`.

Runs without sglang: the GPU machine has torch + triton only.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import torch

from sglang_gemma4.kernels.dependent_launch import dependent_launch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
WARMUP_S = 0.02  # warm-up replays before timing, seconds
# GPU spin before a batch of timed replays, per replay: ~50 us at the H200's 1.98 GHz,
# several times what the host takes to enqueue one replay and its two events.
HOST_LEAD_CYCLES_PER_REPLAY = 100_000


def out_dir() -> Path:
    """Where results go: ``$OUT`` on the device machine, else benchmarks/results/."""
    d = Path(os.environ["OUT"]) if os.environ.get("OUT") else RESULTS_DIR
    d.mkdir(parents=True, exist_ok=True)
    return d


def copy_bandwidth_TBps(nbytes: int = 1 << 31, iters: int = 20) -> float:
    """Device-to-device copy bandwidth, counting bytes read plus bytes written."""
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(iters):
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3)
    del src, dst
    return nbytes / statistics.median(times) / 1e12


def count_launches(fn: Callable[[], object]) -> int:
    """Kernels one call of ``fn`` launches (read from the profiler, after a warm-up)."""
    fn()
    torch.cuda.synchronize()
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(
        1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
    )


def _captured_graph(fns: Sequence[Callable[[], object]], calls_per_graph: int) -> torch.cuda.CUDAGraph:
    """A CUDA graph of ``calls_per_graph`` calls of ``fns`` in rotation (each run
    once first, outside the capture, to compile and autotune).

    Our kernels are captured without programmatic dependent launch unless a
    call sets a mode itself: the graph runs the same kernels back to back, where
    PDL would overlap them more than the GEMMs between them in a model allow
    (benchmark_dependent_launch.py measures PDL in that setting)."""
    with dependent_launch("off"):
        return _capture(fns, calls_per_graph)


def _capture(fns: Sequence[Callable[[], object]], calls_per_graph: int) -> torch.cuda.CUDAGraph:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for f in fns:
            f()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls_per_graph):
            fns[i % len(fns)]()
    return graph


def _us_per_call(graph: torch.cuda.CUDAGraph, replays: int, calls_per_graph: int) -> list[float]:
    """Microseconds per call of ``replays`` replays, each between its own pair of events.

    The replays are enqueued back to back behind a spin kernel, and synchronized
    once: the host gets ahead of the GPU, so its launch latency and any stall of
    the host thread (preemption, a busy compile pool) fall outside the timed
    spans instead of inside them. (Timed one replay at a time with a sync after
    each, every span also held the host's own graph-launch latency, a few us
    divided over the graph's calls, and more when the host was busy.)
    """
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(replays)]
    torch.cuda._sleep(HOST_LEAD_CYCLES_PER_REPLAY * replays)
    for start, end in events:
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) * 1e3 / calls_per_graph for start, end in events]


def graph_us_interleaved(
    fns_by_name: dict[str, Sequence[Callable[[], object]]],
    *,
    calls_per_graph: int = 20,
    replays: int = 50,
    rounds: int = 5,
) -> dict[str, float]:
    """Median microseconds per call of each entry, timed by replaying CUDA graphs in turns.

    Each entry's ``fns`` are closures over different input sets of one shape; its
    graph calls them in rotation (``calls_per_graph`` calls), so small problems
    are not timed out of a warm L2 more than the real model would be. All graphs
    are captured first, replayed together for ``WARMUP_S`` (the GPU idled while
    the inputs were built and the code compiled, and a GPU back from idle may
    run slow at first), then timed in ``rounds`` turns of ``replays // rounds``
    replays each, entry after entry: a drift of the clocks during the
    measurement then reaches every entry alike instead of whichever ran last
    (timed one after another, the same kernel moved by ~0.4 us between runs at
    decode sizes).
    """
    graphs = {name: _captured_graph(fns, calls_per_graph) for name, fns in fns_by_name.items()}
    warm_until = time.perf_counter() + WARMUP_S
    for i in itertools.count():
        for graph in graphs.values():
            graph.replay()
        torch.cuda.synchronize()
        if i >= 2 and time.perf_counter() >= warm_until:
            break
    samples: dict[str, list[float]] = {name: [] for name in graphs}
    per_turn = max(1, replays // rounds)
    for _ in range(rounds):
        for name, graph in graphs.items():
            samples[name] += _us_per_call(graph, per_turn, calls_per_graph)
    del graphs
    return {name: statistics.median(times) for name, times in samples.items()}


def graph_us(
    fns: Sequence[Callable[[], object]],
    *,
    calls_per_graph: int = 20,
    replays: int = 50,
) -> float:
    """Median microseconds per call of one implementation: :func:`graph_us_interleaved`
    with a single entry (one turn of ``replays`` replays)."""
    return graph_us_interleaved({"": fns}, calls_per_graph=calls_per_graph, replays=replays, rounds=1)[""]


def input_sets(nbytes_per_set: int, cap: int = 8, l2_bytes: int = 120 << 20) -> int:
    """How many input sets to rotate so that together they overflow the L2 (60 MB on H200)."""
    if nbytes_per_set <= 0:
        return 1
    return max(1, min(cap, -(-l2_bytes // nbytes_per_set)))


# Memory layouts per size (timed_rows): the same kernels on the same inputs at
# other addresses measured up to ~0.5 us apart at decode sizes (PLE tail, E2B
# 512 tokens: ours 6.82 vs Inductor 6.59 us in one process, 6.46 vs 7.05 in the
# next; H200, 2026-11-29), more than any difference between the two.
LAYOUTS = 5
_PAD_STEP = 512  # the caching allocator's granule
_PAD_STEPS = (64 << 20) // _PAD_STEP


def layout_pad(layout: int) -> torch.Tensor:
    """A buffer allocated before a layout's input sets: 512 B to 64 MB, its size
    drawn from a generator seeded with ``layout`` (the same layouts every run),
    so each layout's tensors sit at other offsets and in other segments."""
    steps = random.Random(layout).randrange(1, _PAD_STEPS)
    return torch.empty(steps * _PAD_STEP, dtype=torch.uint8, device="cuda")


def timed_rows(
    impls: dict[str, Callable],
    names: Sequence[str],
    make_sets: Callable[[], Sequence],
    base: dict,
    nbytes: int,
    copy_bw: float,
    bytes_of: dict[str, int] | None = None,
    layouts: int = LAYOUTS,
) -> list[dict]:
    """One row per implementation in ``names``, then the ``floor`` row (``nbytes``
    at the copy bandwidth).

    ``layouts`` times: a :func:`layout_pad`, a fresh list of input sets from
    ``make_sets()`` (every earlier one kept alive, so the new sets land
    elsewhere), and :func:`graph_us_interleaved` of ``impls[name](input_set)``
    over them, all names in turns. A row's ``us`` is the median over layouts of
    the per-layout medians, ``us_layouts`` lists these; launches are counted on
    the first set. Rows are ``base`` plus impl, us, us_layouts, launches and
    bytes (``nbytes``, or ``bytes_of[name]`` where given)."""
    pads, set_lists = [], []  # all kept alive, so that each layout lands elsewhere
    per_layout: dict[str, list[float]] = {name: [] for name in names}
    for layout in range(layouts):
        pads.append(layout_pad(layout))
        set_lists.append(make_sets())
        sets = set_lists[-1]
        times = graph_us_interleaved({name: [partial(impls[name], s) for s in sets] for name in names})
        for name in names:
            per_layout[name].append(round(times[name], 3))
    first = set_lists[0][0]
    rows = []
    for name in names:
        launches = count_launches(partial(impls[name], first))
        row_bytes = (bytes_of or {}).get(name, nbytes)
        rows.append(
            {
                **base,
                "impl": name,
                "us": round(statistics.median(per_layout[name]), 3),
                "us_layouts": per_layout[name],
                "launches": launches,
                "bytes": row_bytes,
            }
        )
    floor_us = nbytes / (copy_bw * 1e12) * 1e6
    rows.append({**base, "impl": "floor", "us": round(floor_us, 3), "launches": 0, "bytes": nbytes})
    return rows


def against_baselines(impls: dict[str, dict]) -> dict:
    """The fused row of one size against SGLang's sequence, torch.compile and the
    floor: their microseconds, % of copy bandwidth (floor / fused) and speed-ups."""
    fused_us = impls["fused"]["us"]
    return {
        "fused_us": fused_us,
        "sglang_us": impls["sglang"]["us"],
        "compile_us": impls["torch_compile"]["us"],
        "floor_us": impls["floor"]["us"],
        "copy_pct": 100 * impls["floor"]["us"] / fused_us,
        "x_sglang": impls["sglang"]["us"] / fused_us,
        "x_compile": impls["torch_compile"]["us"] / fused_us,
        # Within one layout both ran on the same inputs, in turns: the layout least favourable to us.
        "x_compile_worst": min(
            c / f
            for c, f in zip(
                impls["torch_compile"].get("us_layouts", [impls["torch_compile"]["us"]]),
                impls["fused"].get("us_layouts", [fused_us]),
            )
        ),
    }


def impls_by_size(rows: list[dict], *keys: str) -> list[tuple[tuple, dict[str, dict]]]:
    """Rows grouped by the values of ``keys``, sorted: ``[(key values, {impl: row})]``."""
    groups: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), {})[r["impl"]] = r
    return sorted(groups.items())


def gpu_identity() -> dict:
    """Which physical GPU ran this, and its clocks and power limit now (from
    nvidia-smi; empty where there is none). Two device loans of one day timed
    the same code's triple norm at 2816 x 4096 at 38.4 and 36.0 us, while
    torch.compile's kernel took 40.7 in both (2026-11-30): every result names
    its GPU, so that such a spread can be traced to the machine."""
    fields = ("uuid", "clocks.sm", "clocks.max.sm", "clocks.mem", "power.limit", "temperature.gpu")
    try:
        line = subprocess.run(
            ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader", f"--id={torch.cuda.current_device()}"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    values = [v.strip() for v in line.split(",")]
    return {"gpu": dict(zip(fields, values))} if len(values) == len(fields) else {}


def environment() -> dict:
    import triton

    return {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        **(gpu_identity() if torch.cuda.is_available() else {}),
        "torch": torch.__version__.split("+")[0],
        "triton": triton.__version__,
        "python": sys.version.split()[0],
        "date": _dt.date.today().isoformat(),
    }


def write_results(
    benchmark: str,
    rows: list[dict],
    *,
    copy_bw: float | None,
    plot: Callable[[list[dict], Path], None] | None = None,
    extra: dict | None = None,
) -> Path:
    """Write ``<benchmark>.json`` (DESIGN.md section 9) and, if given, its plot.
    ``copy_bw``: the copy bandwidth measured in the run, None for a run that did
    not measure it (the field is left out)."""
    doc = {"benchmark": benchmark, **environment()}
    if copy_bw is not None:
        doc["copy_bandwidth_TBps"] = round(copy_bw, 3)
    if extra:
        doc.update(extra)
    doc["rows"] = rows
    d = out_dir()
    path = d / f"{benchmark}.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    if plot is not None:
        plot(rows, d / f"{benchmark}.png")
    return path


def plot_vs_tokens(
    rows: list[dict],
    path: Path,
    *,
    title: str,
    group_key: str = "model",
    line_key: str = "impl",
    y_key: str = "us",
    y_label: str = "us per call (CUDA-graph replay, median)",
    log_y: bool = True,
) -> None:
    """One panel per ``group_key`` value: ``y_key`` against tokens, one line per ``line_key`` value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({r[group_key] for r in rows}, key=str)
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.5), squeeze=False)
    for ax, g in zip(axes[0], groups):
        sub = [r for r in rows if r[group_key] == g]
        for line in sorted({r[line_key] for r in sub}):
            pts = sorted((r["tokens"], r[y_key]) for r in sub if r[line_key] == line)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=line)
        ax.set_xscale("log", base=2)
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel("tokens")
        ax.set_ylabel(y_label)
        ax.set_title(f"{title}: {g}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(rows: list[dict], keys: Sequence[str]) -> None:
    print(" ".join(f"{k:>12}" for k in keys))
    for r in rows:
        print(" ".join(f"{r.get(k, ''):>12}" if not isinstance(r.get(k), float) else f"{r[k]:>12.2f}" for k in keys))


def precompile_in_processes(work: Sequence[tuple[Callable[[list], int], list]], workers: int) -> int:
    """Run each ``(fn, jobs)`` of ``work`` as ``fn(slice)`` over ``workers`` interleaved
    slices of ``jobs``, in spawned processes; ``fn`` returns how many of its jobs
    failed. Triton's and Inductor's caches live on disk, so the timing process
    that follows finds every kernel built. Returns the failures."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [pool.submit(fn, jobs[i::workers]) for fn, jobs in work for i in range(workers)]
        failed = sum(f.result() for f in futures)
    print(f"precompiled {sum(len(jobs) for _, jobs in work)} jobs in {workers} processes ({failed} failed)", flush=True)
    return failed


def allow_one_compile_per_shape() -> None:
    """Let every shape compile its own Inductor graph: the benchmarks compile each
    reference per shape (static shapes, as SGLang's torch.compile captures one
    graph per batch size), and past the default recompile limit (8) torch.compile
    would silently run the eager function instead."""
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 256)


def inductor_autotunes_in_this_process() -> None:
    """Inductor picks its kernel configs in the timing process, on an idle GPU, not
    from the on-disk cache the precompile processes (sharing the GPU) filled."""
    import torch._inductor.config as inductor_config

    if hasattr(inductor_config, "autotune_local_cache"):
        inductor_config.autotune_local_cache = False


def configure_sweep_inductor() -> None:
    """Inductor settings of every process of a sweep (precompile workers and the
    timing process): one compilation per shape, and kernel configs autotuned in
    the process that runs them (:func:`inductor_autotunes_in_this_process`)."""
    allow_one_compile_per_shape()
    inductor_autotunes_in_this_process()


def prepare_sweep(
    dry_run: bool,
    workers: int,
    work: Callable[[], Sequence[tuple[Callable[[list], int], list]]],
    started: float,
    wait_for: Path | None = None,
) -> float:
    """What a sweep does before its first timing; returns the copy bandwidth.

    Unless ``dry_run``: Inductor's sweep settings (:func:`configure_sweep_inductor`),
    the jobs ``work()`` lists compiled in ``workers`` processes
    (:func:`precompile_in_processes`, skipped at 0 workers), then, with
    ``wait_for``, a wait until that file exists (e.g. GPU tests running alongside
    are done). Progress lines count seconds from ``started``. A dry run (CPU,
    under the interpreter) takes a nominal 4.2 TB/s instead of measuring."""
    if not dry_run:
        configure_sweep_inductor()
        if workers > 0:
            precompile_in_processes(work(), workers)
        print(f"[{time.perf_counter() - started:6.1f}s] precompiled", flush=True)
        if wait_for is not None:
            while not wait_for.exists():
                time.sleep(1)
            print(f"[{time.perf_counter() - started:6.1f}s] timing", flush=True)
    copy_bw = 4.2 if dry_run else copy_bandwidth_TBps()
    print(f"copy bandwidth {copy_bw:.2f} TB/s", flush=True)
    return copy_bw
