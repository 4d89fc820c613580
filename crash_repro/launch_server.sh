#!/usr/bin/env bash
# Serve Gemma-4 + its MTP assistant (frozen-KV draft) on --attention-backend trtllm_mha,
# the configuration of the original crash. Needs one B200 (SM100: trtllm-gen kernels),
# sglang==0.5.23 and sglang-gemma4 installed in the active Python.
#
# Environment (all optional):
#   MODEL            target checkpoint              (default google/gemma-4-E4B-it)
#   DRAFT            assistant checkpoint           (default ${MODEL}-assistant)
#   PORT             HTTP port                      (default 30000)
#   TRAPS=1          SGLANG_TRTLLM_MHA_DEBUG=1: page-table and allocator traps on
#   CUDA_GRAPHS=0    no CUDA graphs: a trap raises the explained Python error
#                    (with graphs it is a device-side assert)
#   REINTRODUCE_BUG=1  put back the pre-fix TRTLLMHAAttnBackend._resolve_swa_kv_pool
#                    (crash_repro/reintroduce_bug/sitecustomize.py) so the frozen-KV
#                    draft reads the sliding-window cache through full-pool page indices
#   DUMP_DIR         where trap dumps go            (default ./trap_dumps)
# Extra arguments are passed to sglang.launch_server.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
MODEL="${MODEL:-google/gemma-4-E4B-it}"
DRAFT="${DRAFT:-${MODEL}-assistant}"
PORT="${PORT:-30000}"

args=(
  --model-path "$MODEL"
  --speculative-algorithm NEXTN            # promoted to FROZEN_KV_MTP for a Gemma-4 assistant
  --speculative-draft-model-path "$DRAFT"
  --speculative-num-steps 3
  --speculative-num-draft-tokens 4
  --speculative-eagle-topk 1
  --attention-backend trtllm_mha
  --context-length 16384
  --port "$PORT"
)
if [[ "${CUDA_GRAPHS:-1}" == 0 ]]; then
  args+=(--cuda-graph-backend-decode disabled --cuda-graph-backend-prefill disabled)
fi
if [[ "${TRAPS:-0}" == 1 ]]; then
  export SGLANG_TRTLLM_MHA_DEBUG=1
  export SGLANG_GEMMA4_DUMP_DIR="${DUMP_DIR:-$PWD/trap_dumps}"
  mkdir -p "$SGLANG_GEMMA4_DUMP_DIR"
fi
if [[ "${REINTRODUCE_BUG:-0}" == 1 ]]; then
  # sitecustomize runs in every interpreter SGLang spawns (launcher, scheduler, detokenizer).
  export PYTHONPATH="$here/reintroduce_bug${PYTHONPATH:+:$PYTHONPATH}"
fi

echo "launch: TRAPS=${TRAPS:-0} CUDA_GRAPHS=${CUDA_GRAPHS:-1} REINTRODUCE_BUG=${REINTRODUCE_BUG:-0}" >&2
exec python -m sglang.launch_server "${args[@]}" "$@"
