"""The benchmark harness's CPU-side helpers (the timing itself needs a GPU)."""

import importlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import harness  # noqa: E402


def test_precompile_hands_every_job_to_exactly_one_process(capsys):
    # len() as the per-slice function: "failures" = the slice's size, so the
    # total says every job went to one process, none twice.
    jobs_a, jobs_b = list(range(7)), list(range(3))
    assert harness.precompile_in_processes([(len, jobs_a), (len, jobs_b)], workers=2) == 10
    assert "precompiled 10 jobs in 2 processes (10 failed)" in capsys.readouterr().out


@pytest.mark.parametrize("script", ["sweep_triple_rmsnorm", "sweep_ple_tail", "sweep_end_of_layer_norm"])
def test_sweep_scripts_import(script):
    importlib.import_module(script)
