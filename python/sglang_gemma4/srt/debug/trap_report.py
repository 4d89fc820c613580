"""What the opt-in bounds traps share: the switch, the error, the dump file, the check.

Both traps (``trtllm_page_table_trap``, ``swa_allocator_trap``) are turned on by
``SGLANG_TRTLLM_MHA_DEBUG=1`` and report through :func:`require`:

* Outside CUDA-graph capture, ``require`` reads one boolean back from the device
  (a synchronisation: the traps are for finding a crash, not for serving). If it
  is false it asks the trap for an :class:`Explanation`, writes it to a JSON file
  (and the raw tensors next to it as ``.pt``) under ``SGLANG_GEMMA4_DUMP_DIR``
  (default ``<tmp>/sglang_gemma4_dumps``) and raises
  :class:`KVIndexOutOfBoundsError` whose message ends with the file's path.
* While a CUDA graph is being captured nothing may be read back, so the same
  condition is recorded into the graph with ``torch._assert_async``: every replay
  checks it on the device and a violation stops the process with a device-side
  assert at that kernel, instead of an illegal address somewhere later. The
  device message names the layer and the bound; the row and the value need an
  eager run (CUDA graphs off), which raises the explained error above.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

DEBUG_ENV = "SGLANG_TRTLLM_MHA_DEBUG"
DUMP_DIR_ENV = "SGLANG_GEMMA4_DUMP_DIR"

# torch copies an _assert_async message into a 256-byte kernel argument and
# rejects longer ones (TORCH_CHECK at launch, which would fail the capture).
MAX_DEVICE_MESSAGE = 240

# A JSON array of integers, as json.dump(indent=...) spreads it over lines.
_INT_ARRAY = re.compile(r"\[\s*-?\d+(?:\s*,\s*-?\d+)*\s*\]")

logger = logging.getLogger("sglang_gemma4")
_announced_capture: set[str] = set()


class KVIndexOutOfBoundsError(IndexError):
    """A KV-cache index that a kernel would read or write lies outside its buffer."""


@dataclasses.dataclass(frozen=True)
class Explanation:
    """A trap's account of one violation.

    ``message`` is the exception text (the dump path is appended), ``report`` the
    JSON-serialisable dump, ``tensors`` raw tensors saved next to it as ``.pt``.
    """

    message: str
    report: dict
    tensors: dict[str, torch.Tensor]


def dump_dir() -> Path:
    """``$SGLANG_GEMMA4_DUMP_DIR``, else ``<system tmp>/sglang_gemma4_dumps`` (created)."""
    configured = os.environ.get(DUMP_DIR_ENV, "").strip()
    path = Path(configured) if configured else Path(tempfile.gettempdir()) / "sglang_gemma4_dumps"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_dump(trap: str, explanation: Explanation) -> Path:
    """Write ``<trap>-pid<pid>-<UTC time>-<ns>.json`` (+ ``.pt``); return the JSON path.

    The name carries the process id because every TP rank and the draft worker
    can trap at once, each into its own file.
    """
    now = time.time_ns()
    stem = f"{trap}-pid{os.getpid()}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now / 1e9))}-{now % 10**9:09d}"
    directory = dump_dir()
    json_path = directory / f"{stem}.json"
    report = {
        "trap": trap,
        "pid": os.getpid(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now / 1e9)),
        "message": explanation.message,
        **explanation.report,
    }
    if explanation.tensors:
        tensor_path = directory / f"{stem}.pt"
        torch.save({k: v.detach().cpu() for k, v in explanation.tensors.items()}, tensor_path)
        report["tensors_file"] = str(tensor_path)
    text = json.dumps(report, indent=1, default=str)
    # Page tables and index lists on one line each, not one number per line.
    text = _INT_ARRAY.sub(lambda m: ", ".join(re.sub(r"\s+", "", m.group(0)).split(",")), text)
    with open(json_path, "x", encoding="utf-8") as f:
        f.write(text)
    return json_path


def capturing_cuda_graph() -> bool:
    """True while the current CUDA stream is capturing a graph (False without CUDA)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def require(
    ok: torch.Tensor,
    *,
    trap: str,
    device_message: str,
    explain: Callable[[], Explanation],
) -> None:
    """Stop with an explained error unless the 0-d boolean tensor ``ok`` is true.

    Eager: one device-to-host read; on failure, dump and raise
    :class:`KVIndexOutOfBoundsError`. During CUDA-graph capture:
    ``torch._assert_async(ok, device_message)``, checked on every replay.
    """
    if capturing_cuda_graph():
        if trap not in _announced_capture:
            _announced_capture.add(trap)
            logger.info(
                "%s: inside CUDA-graph capture the check is a device-side assert; if a replay "
                "fails one, rerun with CUDA graphs disabled for the row, the value and a dump",
                trap,
            )
        torch._assert_async(ok, device_message[:MAX_DEVICE_MESSAGE])
        return
    if bool(ok):
        return
    explanation = explain()
    path = write_dump(trap, explanation)
    raise KVIndexOutOfBoundsError(f"{explanation.message} Dump: {path}")
