"""On CPU, memory a step frees kept in the process for the next step to reuse.

PyTorch's CPU tensors come from the C library's malloc. glibc's malloc maps blocks above a
threshold (128 KiB, adapting up to 32 MiB) fresh from the kernel and unmaps them when freed, and
gives the heap's free top back beyond 128 KiB. Training and decoding allocate and free the same
large activations, logits and K/V buffers at every step, so every step faults their pages in
again, and the kernel zeroes each one. On our 2-core machine, 60 updates of the CPU recipe took
11.6 million page faults and 44 s of system time, against 0.5 million and 4 s with freed memory
kept (docs/RESULTS.md).

The settings are glibc's own (mallopt) and process-wide: the process keeps, for later
allocations, the most memory it has held at once, as a caching allocator would. Elsewhere (macOS,
musl) nothing changes.
"""
from __future__ import annotations

import ctypes

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1  # free top of the heap given back beyond this many bytes
M_TOP_PAD = -2  # bytes added to each growth of the heap
M_MMAP_THRESHOLD = -3  # blocks at least this large get their own mapping, unmapped when freed

KEEP = {M_MMAP_THRESHOLD: 1 << 30, M_TRIM_THRESHOLD: (1 << 31) - 1, M_TOP_PAD: 64 << 20}

_kept = False


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse (see the module docstring); once per
    process. Returns whether it applies (False without glibc)."""
    global _kept
    if not _kept:
        try:
            libc = ctypes.CDLL(None)
            libc.gnu_get_libc_version  # glibc only: its thresholds are what this sets
        except (OSError, AttributeError):
            return False
        _kept = all(libc.mallopt(param, value) == 1 for param, value in KEEP.items())
    return _kept
