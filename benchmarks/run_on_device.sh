#!/usr/bin/env bash
# Run on the GPU machine (torch + triton, no sglang), from the repo root:
#   bash benchmarks/run_on_device.sh [test-path-or-expr] -- benchmark_a benchmark_b:--arg,value ...
# GPU tests first, then each benchmark; all logs, JSON and plots go into one
# tarball under $OUT (the device returns at most 8 files).
set -u
export PYTHONPATH=python PYTHONUNBUFFERED=1
final_out=${OUT:?set OUT}
work=$(mktemp -d)
export OUT=$work
tests=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do tests+=("$1"); shift; done
[ $# -gt 0 ] && shift
nvidia-smi --query-gpu=name,uuid,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit --format=csv > "$work/gpu.txt" 2>&1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$work/gpu.txt"
# Test files run side by side, one pytest process each (correctness only; the
# benchmarks below run alone). TEST_TIMEOUT / BENCH_TIMEOUT bound each step so
# that the bundle is written before the device call's own limit.
if [ ${#tests[@]} -gt 0 ]; then
  for t in "${tests[@]}"; do
    timeout "${TEST_TIMEOUT:-300}" python3 -m pytest "$t" -q -p no:cacheprovider \
      > "$work/gpu_tests_$(basename "$t" .py).log" 2>&1 &
  done
  wait
  tail -n 3 "$work"/gpu_tests_*.log
fi
# A benchmark may carry its arguments after a colon, comma-separated:
#   benchmark_ple_tail:--models,E2B  benchmark_triple_rmsnorm:--mode,norm_add
for spec in "$@"; do
  b=${spec%%:*}
  args=()
  [ "$spec" != "$b" ] && IFS=, read -r -a args <<< "${spec#*:}"
  log="$work/$(echo "$spec" | tr -c 'A-Za-z0-9_\n' '_').log"
  echo "=== $spec"
  timeout "${BENCH_TIMEOUT:-420}" python3 "benchmarks/$b.py" "${args[@]}" > "$log" 2>&1
  echo "exit $?"; tail -30 "$log"
done
tar -C "$work" -cf "$final_out/results.tar" .
