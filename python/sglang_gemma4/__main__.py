"""Command line: ``python -m sglang_gemma4 <command>`` (also the ``sglang-gemma4`` script).

``check``  versions, the patch table, and parity of SGLang's Gemma-4 with and
           without the plugin against transformers on built-in tiny models.
           Exits 1 if a parity check fails.
``pools``  full and sliding-window KV pool capacities of a Gemma-4 config for a
           KV budget, SGLang's default ratio next to the plugin's.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from collections.abc import Sequence

# fp32 tiny models: SGLang's and transformers' Gemma-4 agree to ~1e-6 when they
# compute the same function; a real defect shows up as O(1) differences.
PARITY_TOL = 1e-4


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _print_table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(line.format(*header))
    print(line.format(*("-" * w for w in widths)))
    for r in rows:
        print(line.format(*r))


def cmd_check(args: argparse.Namespace) -> int:
    import torch

    from sglang_gemma4 import __version__, harness, plugin, registry

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"sglang-gemma4 {__version__}")
    for dist in ("sglang", "torch", "triton", "transformers"):
        print(f"  {dist:<13} {_version(dist)}")
    print(f"  device        {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}")
    print()

    table = plugin.register()
    _print_table(
        [(s.name, s.state, s.reason or s.summary) for s in table],
        ("patch", "state", "reason / what it does"),
    )
    print()

    failed = []
    rows = []
    ids = harness.prompt(args.tokens).to(device)
    for name in args.configs or harness.TINY_CONFIGS:
        with registry.suspended():
            stock = harness.compare(harness.build_pair(name, device=device), ids)
        patched = harness.compare(harness.build_pair(name, device=device), ids)
        ok = patched.ok(PARITY_TOL)
        if not ok:
            failed.append(name)
        rows.append(
            (
                name,
                f"{stock.max_abs_diff:.2e}",
                f"{stock.cosine:.4f}",
                f"{patched.max_abs_diff:.2e}",
                f"{patched.cosine:.6f}",
                "ok" if ok else "FAIL",
            )
        )
    print(f"parity vs transformers' Gemma-4 (fp32, {args.tokens} tokens, tolerance {PARITY_TOL:g}):")
    _print_table(
        rows,
        ("config", "stock max|diff|", "stock cos", "plugin max|diff|", "plugin cos", "result"),
    )
    from sglang_gemma4 import audit

    report = audit.run_audit(ids, device=device)
    print("\naccuracy audit vs transformers' Gemma-4 (logits, greedy decoding, MoE activation):")
    print("\n".join(audit.format_report(report)))
    failed += report.failed
    if failed:
        print(f"\nFAILED: {', '.join(failed)}")
        return 1
    print("\nall parity checks passed")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sglang-gemma4", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="versions, patch table, tiny-model parity")
    p.add_argument("--configs", nargs="*", help="tiny configs to run (default: all)")
    p.add_argument("--tokens", type=int, default=12, help="prompt length")
    p.set_defaults(func=cmd_check)
    from sglang_gemma4 import pools

    pools.add_subcommand(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
