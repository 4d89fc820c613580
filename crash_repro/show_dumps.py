"""Print the trap dumps in a directory (default ``$SGLANG_GEMMA4_DUMP_DIR`` or ./trap_dumps).

    python crash_repro/show_dumps.py [DIR]

One block per dump, oldest first: the exception message, then the facts a triager
needs first (layer, pools, first violations, the offending rows' page tables).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def describe(report: dict) -> list[str]:
    lines = [f"{report['trap']}  pid {report['pid']}  {report['time_utc']}", f"  {report['message']}"]
    if report["trap"] == "trtllm_page_table":
        kv, table, pools = report["kv_cache"], report["page_table"], report["pools"]
        lines.append(
            f"  layer {report['layer_id']} ({report['backend_method']}, {report['forward_mode']}): "
            f"{kv['kind']} cache, {kv['num_pages']} pages x {kv['page_size']} tokens; "
            f"{table['kind']} page table {table['shape']} from {table['source']}"
        )
        lines.append(
            f"  pools: {pools['token_to_kv_pool']}, backend sliding-window pool: {pools['backend_swa_kv_pool']}, "
            f"full pages {pools.get('full_pool_pages')}, sliding-window pages {pools.get('swa_pool_pages')}"
        )
        for row in report["offending_rows"][:4]:
            lines.append(
                f"  row {row['row']}: cache_len {row['cache_len']}, reads {row['pages_read']} pages: "
                f"{row['page_table'][:24]}{' ...' if len(row['page_table']) > 24 else ''}"
            )
    else:
        lines.append(f"  method {report['method']}, bound {report['bound']}, sizes {report['sizes']}")
    for v in report["violations"][:8]:
        lines.append(f"  violation {v}")
    if report.get("num_violations", 0) > 8:
        lines.append(f"  ... {report['num_violations']} in all")
    return lines


def main(argv: list[str]) -> int:
    directory = Path(argv[1] if len(argv) > 1 else os.environ.get("SGLANG_GEMMA4_DUMP_DIR", "trap_dumps"))
    dumps = sorted(directory.glob("*.json"), key=lambda p: p.stat().st_mtime)
    if not dumps:
        print(f"no trap dumps in {directory}")
        return 0
    for path in dumps:
        print(path)
        print("\n".join(describe(json.loads(path.read_text()))))
        print()
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
