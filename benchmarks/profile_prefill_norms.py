"""Run each prefill-size norm kernel a few times, for Nsight Compute to profile.

Not a benchmark (nothing is timed here): the launches ncu reads, at the sizes
where issues 6 and 8 state bandwidth targets. Run on the GPU machine::

    ncu --section SpeedOfLight --section Occupancy --section WarpStateStats \\
        --section LaunchStats --section MemoryWorkloadAnalysis -k regex:'kernel' \\
        python3 benchmarks/profile_prefill_norms.py

(the command behind results/ncu_prefill_norms.txt).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark_end_of_layer_norm as eol_bench  # noqa: E402
import benchmark_traffic_mix as mix  # noqa: E402
import benchmark_triple_rmsnorm as tri_bench  # noqa: E402

from sglang_gemma4.kernels import end_of_layer_norm as eol  # noqa: E402
from sglang_gemma4.kernels import triple_rmsnorm as tr  # noqa: E402


def main() -> None:
    for tokens in (4096, 16384):
        t = tri_bench.NormInputs(tokens, 2816, seed=0)
        for launch in (tr.launch_config(2816, tokens), tr.TripleNormLaunch("row", 2816, 1, 8),
                       tr.TripleNormLaunch("chunked", 1024, 1, 4)):
            print("triple", tokens, launch, flush=True)
            tri_bench.fused(t, launch)
        ins = [torch.randn(tokens, 2816, device="cuda").bfloat16() for _ in range(3)]
        outs = [torch.empty_like(ins[0]) for _ in range(4)]
        print("mix 2r4w", tokens, flush=True)
        mix.move(ins, outs, 2, 4)
        print("mix 3r2w", tokens, flush=True)
        mix.move(ins, outs, 3, 2)
        e = eol_bench.EndInputs("moe", tokens, 2816, seed=0)
        print("eol moe", tokens, eol.launch_config(2816, tokens), flush=True)
        eol_bench.FUSED["moe"](*e.args, eol_bench.EPS)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
