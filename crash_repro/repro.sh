#!/usr/bin/env bash
# Run one scenario end to end on a B200: start the server, run the crashing workload,
# stop the server, and print what happened.
#
#   crash_repro/repro.sh SCENARIO
#
# SCENARIO            server                                          expected (EXPECTED_OUTPUT.md)
#   stock             sglang 0.5.23 + plugin, traps off               completes
#   stock-traps       same, traps on (CUDA graphs)                    completes, no dumps, slower
#   bug               upstream fix reverted                           CUDA illegal memory access
#   bug-traps         fix reverted, traps on (CUDA graphs)            device-side assert naming the layer
#   bug-traps-eager   fix reverted, traps on, no CUDA graphs          KVIndexOutOfBoundsError + dump
#
# MODEL / DRAFT / PORT as in launch_server.sh. Logs and dumps go to ./repro_<scenario>/.
set -uo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
scenario="${1:?usage: repro.sh stock|stock-traps|bug|bug-traps|bug-traps-eager}"
case "$scenario" in
  stock)            traps=0 graphs=1 bug=0 ;;
  stock-traps)      traps=1 graphs=1 bug=0 ;;
  bug)              traps=0 graphs=1 bug=1 ;;
  bug-traps)        traps=1 graphs=1 bug=1 ;;
  bug-traps-eager)  traps=1 graphs=0 bug=1 ;;
  *) echo "unknown scenario $scenario" >&2; exit 2 ;;
esac
out="$PWD/repro_$scenario"
mkdir -p "$out/dumps"
export PORT="${PORT:-30000}"

TRAPS=$traps CUDA_GRAPHS=$graphs REINTRODUCE_BUG=$bug DUMP_DIR="$out/dumps" \
  "$here/launch_server.sh" >"$out/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null' EXIT

echo "[$scenario] waiting for the server (log: $out/server.log)"
for _ in $(seq 1 240); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
  kill -0 "$server" 2>/dev/null || { echo "[$scenario] server exited during start-up"; break; }
  sleep 5
done

echo "[$scenario] benchmark"
OUT="$out/bench_result.jsonl" "$here/run_benchmark.sh" >"$out/bench.log" 2>&1
bench_rc=$?
sleep 5

echo "[$scenario] ---- result"
echo "benchmark exit code: $bench_rc"
grep -h "sglang-gemma4 on sglang" "$out/server.log" | head -1
grep -hE "illegal memory access|device-side assert|Assertion .*trtllm_page_table_trap|KVIndexOutOfBoundsError" \
  "$out/server.log" | sort | uniq -c | head -20
grep -hE "Output token throughput|Median TPOT|Accept length|Successful requests" "$out/bench.log"
python "$here/show_dumps.py" "$out/dumps"
