"""Rows held as power-of-two segments that add up to the row.

Triton tiles have power-of-two sizes, so a row of 1536 elements held in one
tile takes 2048 lanes, a quarter of them masked and idle (2560 in 4096: 37.5%).
Held as the powers of two its width is made of (1536 = 1024 + 512,
2560 = 2048 + 512), a row has no idle lanes. Splitting every segment over the
same number of lanes (each lane holds ``segment // lanes`` adjacent columns of
each segment) lets a kernel add the segments' per-lane partial sums in
registers and reduce across threads once per row.

Pure Python (no torch, no triton): the launch helpers of the row kernels
(ple_tail, triple_rmsnorm, end_of_layer_norm) use it.
"""

from __future__ import annotations


def power_of_two_segments(n: int, max_segments: int) -> tuple[int, ...] | None:
    """``n`` as the distinct powers of two that sum to it (its set bits), largest
    first: 1536 -> (1024, 512), 128 -> (128,). None when ``n < 1`` or it needs
    more than ``max_segments``."""
    if n < 1:
        return None
    segments = tuple(1 << i for i in range(n.bit_length() - 1, -1, -1) if n >> i & 1)
    return segments if len(segments) <= max_segments else None


def block_segments(hidden: int, block: int, max_segments: int) -> tuple[int, ...] | None:
    """How a row of ``hidden`` elements is held in ``block`` lanes, as
    ``max_segments`` sizes, largest first, zero-padded: ``hidden``'s powers of
    two when ``block == hidden`` (exact, no idle lanes), else ``block`` alone
    when it is a power of two >= ``hidden`` (padded); None when neither."""
    segments = power_of_two_segments(hidden, max_segments) if block == hidden else None
    if segments is None:
        if block < hidden or block < 1 or block & (block - 1):
            return None
        segments = (block,)
    return segments + (0,) * (max_segments - len(segments))


def launch_segments(hidden: int, block: int, launch: object) -> tuple[int, int, int]:
    """:func:`block_segments` with three segments, for the launch of a row or
    persistent kernel; ``ValueError`` naming ``launch`` when the row cannot be
    held in ``block`` lanes."""
    segments = block_segments(hidden, block, 3)
    if segments is None:
        raise ValueError(
            f"a row launch needs block = hidden ({hidden}) made of at most three powers of two, "
            f"or a power of two >= hidden: {launch}"
        )
    seg0, seg1, seg2 = segments
    return seg0, seg1, seg2


def lanes_per_row(segments: tuple[int, ...], threads_per_row: int, max_columns_per_lane: int) -> int:
    """Lanes each segment is split over: one per thread of the row
    (``threads_per_row``, rounded down to a power of two), more where the largest
    segment would otherwise give a lane more than ``max_columns_per_lane``
    adjacent columns (one 16-byte load: Triton spreads a longer run over several
    threads, and segments mapped to threads differently need layout conversions
    through shared memory), at most as many as the smallest segment has columns."""
    threads = 1 << (max(threads_per_row, 1).bit_length() - 1)
    return min(min(segments), max(threads, max(segments) // max_columns_per_lane))


def exact_chunks(hidden: int, chunk: int, threads: int) -> tuple[int, int, int, int] | None:
    """A row of ``hidden`` elements walked in ``chunk``-column tiles with no idle
    lane: ``(full chunks, tail0, tail1, lanes)``, the tails the powers of two of
    ``hidden % chunk`` (0: none; 5376 in 2048s: 2, 1024, 256), every tile split
    over ``lanes`` lanes (``threads`` rounded down to a power of two, at most the
    smallest tile). None when ``chunk`` is not a power of two, or the remainder
    needs more than two tiles."""
    if chunk < 1 or chunk & (chunk - 1) or hidden < 1:
        return None
    full, tail = divmod(hidden, chunk)
    tails = power_of_two_segments(tail, 2) if tail else ()
    if tails is None:
        return None
    tiles = ((chunk,) if full else ()) + tails
    tail0, tail1 = tails + (0,) * (2 - len(tails))
    # The chunk as the cap on columns per lane: the lanes are the threads (a
    # power of two, at most the smallest tile), never widened as the row kernels'.
    return full, tail0, tail1, lanes_per_row(tiles, threads, chunk)
