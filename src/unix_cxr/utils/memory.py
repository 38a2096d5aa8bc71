"""How the C heap treats freed memory: give it back after a large load, or keep it for the next training step.

`release_freed_memory` (glibc's `malloc_trim`). Reading a release folder group by group frees every float
temporary (a group's tensors, a weight before it is quantized), but glibc keeps freed heap pages mapped, and they
count in the process's resident memory: after the int8 load of the full report-only model, 0.12 GB (measured:
2.79 GB resident before `malloc_trim(0)`, 2.66 GB after).

`keep_freed_memory` (glibc's `mallopt`), the opposite trade, for loops that allocate and free the same large
tensors every step, as a training step does (autocast's bf16 copies of the weights, gradient buffers, logits,
activations). By default glibc serves each block above its mmap threshold (128 KiB, rising with what the process
frees, to at most 32 MiB) with a fresh `mmap` and unmaps it when freed, so the next step faults every page of it
in again, zero-filled by the kernel: a 48 MiB tensor allocated and filled again and again took 12,289 page faults
each time here (every page). `keep_freed_memory` serves blocks up to 1 GiB from the heap and never trims it, so
freed memory is reused: with it the same loop faults no page once the heap has settled (glibc places the aligned
blocks side by side for the first few to fourteen allocations before it reuses them; `tests/test_memory.py` warms
up 20). Resident memory then stays near the step's peak between steps.
It is what PyTorch's CPU tuning guide gets from jemalloc / tcmalloc through `LD_PRELOAD`, set from inside the
process. Elsewhere than glibc (musl, macOS, Windows) both do nothing.
"""

from __future__ import annotations

import ctypes
import functools


@functools.cache
def _libc():
    """The C library's symbols (the process's own, which hold glibc's where it is the C library)."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


# mallopt's parameters (glibc's malloc.h); their values are C ints
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_INT_MAX = 2**31 - 1


def keep_freed_memory(max_block: int = 1 << 30) -> int:
    """Serve blocks of up to `max_block` bytes from the heap and keep freed heap memory in the process (see the
    module doc). Returns the threshold taken: 0 where the C library is not glibc, or where glibc refuses it (older
    versions refuse mmap thresholds above 32 MiB, below which their dynamic threshold already reuses blocks).
    Process-wide, until the process ends."""
    libc = _libc()
    block = min(max_block, _INT_MAX)
    if libc is None or not hasattr(libc, "mallopt") or not libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(block)):
        return 0
    libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(_INT_MAX))
    return block


def release_freed_memory() -> bool:
    """Return the heap's free pages to the system; True where glibc did so."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))
