#!/usr/bin/env bash
# The workload that crashed: "summarization", random 8000-token prompts, 1000 output
# tokens, 80 prompts, 64 in flight. It fills the sliding-window pool past ~85%, where
# full-pool page indices exceed the sliding-window pool's page count.
#
# Environment: PORT (default 30000), OUT (result file, default ./bench_result.jsonl).
set -euo pipefail

python -m sglang.benchmark.serving \
  --backend sglang \
  --port "${PORT:-30000}" \
  --dataset-name random \
  --random-input-len 8000 \
  --random-output-len 1000 \
  --random-range-ratio 1.0 \
  --num-prompts 80 \
  --max-concurrency 64 \
  --output-file "${OUT:-bench_result.jsonl}" \
  "$@"
