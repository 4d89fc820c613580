"""The benchmark harness's CPU-side helpers, and its timing loop against a stand-in
for CUDA graphs and events (the timing itself needs a GPU)."""

import importlib
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import harness  # noqa: E402


def test_precompile_hands_every_job_to_exactly_one_process(capsys):
    # len() as the per-slice function: "failures" = the slice's size, so the
    # total says every job went to one process, none twice.
    jobs_a, jobs_b = list(range(7)), list(range(3))
    assert harness.precompile_in_processes([(len, jobs_a), (len, jobs_b)], workers=2) == 10
    assert "precompiled 10 jobs in 2 processes (10 failed)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "script",
    [
        "sweep_triple_rmsnorm", "sweep_ple_tail", "sweep_end_of_layer_norm", "sweep_stream_hints",
        "sweep_ple_tail_in_context", "benchmark_traffic_mix", "sweep_in_context", "inductor_configs",
    ],
)
def test_sweep_scripts_import(script):
    importlib.import_module(script)


def test_timed_rows_time_each_impl_in_every_layout_then_add_the_floor(monkeypatch):
    timed_together, pads, built = [], [], []

    def interleaved(fns_by_name):
        timed_together.append(sorted(fns_by_name))
        # the layout (how many set lists exist) moves every impl's time
        return {name: 10.0 * len(fns) + fns[0]() + 3 * (len(built) % 3) for name, fns in fns_by_name.items()}

    def make_sets():
        built.append([1, 2])
        return built[-1]

    monkeypatch.setattr(harness, "graph_us_interleaved", interleaved)
    monkeypatch.setattr(harness, "count_launches", lambda fn: fn() // 1)
    monkeypatch.setattr(harness, "layout_pad", pads.append)
    impls = {"fused": lambda s: s, "sglang": lambda s: 4 * s, "unused": None}
    rows = harness.timed_rows(
        impls, ["fused", "sglang"], make_sets, {"tokens": 8}, nbytes=4_200_000, copy_bw=4.2,
        bytes_of={"sglang": 7}, layouts=3,
    )
    assert pads == [0, 1, 2] and len(built) == 3  # a pad, then fresh sets, per layout
    assert rows == [
        {"tokens": 8, "impl": "fused", "us": 24.0, "us_layouts": [24.0, 27.0, 21.0], "launches": 1, "bytes": 4_200_000},
        {"tokens": 8, "impl": "sglang", "us": 27.0, "us_layouts": [27.0, 30.0, 24.0], "launches": 4, "bytes": 7},
        {"tokens": 8, "impl": "floor", "us": 1.0, "launches": 0, "bytes": 4_200_000},
    ]
    assert timed_together == [["fused", "sglang"]] * 3  # interleaved per layout, unused impls left out


def test_layout_pads_differ_between_layouts_and_repeat_between_runs():
    sizes = [harness.random.Random(layout).randrange(1, harness._PAD_STEPS) for layout in range(harness.LAYOUTS)]
    assert len(set(sizes)) == harness.LAYOUTS
    assert sizes == [harness.random.Random(layout).randrange(1, harness._PAD_STEPS) for layout in range(harness.LAYOUTS)]


def test_against_baselines():
    line = harness.against_baselines({n: {"us": us} for n, us in
                                      [("fused", 2.0), ("sglang", 5.0), ("torch_compile", 3.0), ("floor", 1.5)]})
    assert line == {"fused_us": 2.0, "sglang_us": 5.0, "compile_us": 3.0, "floor_us": 1.5,
                    "copy_pct": 75.0, "x_sglang": 2.5, "x_compile": 1.5, "x_compile_worst": 1.5}


def test_against_baselines_worst_layout_pairs_the_two_within_a_layout():
    impls = {"fused": {"us": 2.0, "us_layouts": [2.0, 1.0, 3.0]}, "sglang": {"us": 5.0},
             "torch_compile": {"us": 3.0, "us_layouts": [3.0, 0.9, 3.6]}, "floor": {"us": 1.5}}
    assert harness.against_baselines(impls)["x_compile_worst"] == pytest.approx(0.9)


def test_graph_us_interleaved_times_entries_in_turns_behind_a_spin(monkeypatch):
    """Each entry's graph is timed in ``rounds`` turns, entries alternating, every
    batch of replays enqueued behind a GPU spin and read back after one sync; each
    entry's median comes from its own spans."""
    log = []
    clock = [0.0]  # ms on the stand-in GPU

    class Graph:
        def __init__(self, name, cost_ms):
            self.name, self.cost_ms = name, cost_ms

        def replay(self):
            log.append(self.name)
            clock[0] += self.cost_ms

    class Event:
        def __init__(self, enable_timing):
            assert enable_timing

        def record(self):
            self.at = clock[0]

        def elapsed_time(self, end):
            return end.at - self.at

    costs = {"fused": 1.0, "sglang": 3.0}
    monkeypatch.setattr(harness, "_captured_graph", lambda fns, calls: Graph(fns[0](), costs[fns[0]()]))
    monkeypatch.setattr(harness, "WARMUP_S", 0.0)
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "_sleep", lambda cycles: log.append(f"spin {cycles}"))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: log.append("sync"))
    us = harness.graph_us_interleaved(
        {"fused": [lambda: "fused"], "sglang": [lambda: "sglang"]}, calls_per_graph=2, replays=4, rounds=2
    )
    assert us == {"fused": 500.0, "sglang": 1500.0}  # cost_ms * 1e3 / calls_per_graph
    warm_up = ["fused", "sglang", "sync"] * 3
    spin = f"spin {2 * harness.HOST_LEAD_CYCLES_PER_REPLAY}"
    turn = lambda name: [spin, name, name, "sync"]  # noqa: E731
    assert log == warm_up + turn("fused") + turn("sglang") + turn("fused") + turn("sglang")


def test_sweep_inductor_settings(monkeypatch):
    """One compilation per shape (no silent eager fallback after 8 shapes) and
    Inductor's kernel configs autotuned in the process, not read from disk."""
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, name):
            monkeypatch.setattr(dynamo_config, name, 8)
    monkeypatch.setattr(inductor_config, "autotune_local_cache", True)
    harness.configure_sweep_inductor()
    assert dynamo_config.recompile_limit == 256
    assert inductor_config.autotune_local_cache is False


def test_prepare_sweep(monkeypatch, tmp_path, capsys):
    """Dry run: no compiling, a nominal bandwidth. Otherwise: Inductor settings,
    the listed jobs precompiled, the wait for the file, then the measured bandwidth."""
    calls = []
    monkeypatch.setattr(harness, "configure_sweep_inductor", lambda: calls.append("configure"))
    monkeypatch.setattr(harness, "precompile_in_processes", lambda work, workers: calls.append(("compile", work, workers)))
    monkeypatch.setattr(harness, "copy_bandwidth_TBps", lambda: calls.append("copy") or 4.1)

    def work():
        calls.append("listed")
        return [(len, [1, 2])]

    assert harness.prepare_sweep(True, 15, work, 0.0) == 4.2
    assert calls == []
    done = tmp_path / "gpu_tests_done"
    done.touch()
    assert harness.prepare_sweep(False, 15, work, 0.0, done) == 4.1
    assert calls == ["configure", "listed", ("compile", [(len, [1, 2])], 15), "copy"]
    calls.clear()
    assert harness.prepare_sweep(False, 0, work, 0.0) == 4.1
    assert calls == ["configure", "copy"]  # no workers: nothing listed or precompiled
    assert "timing" in capsys.readouterr().out  # printed once, after the wait
