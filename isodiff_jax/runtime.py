"""Process-level settings for fast JAX on CPU hosts. Call once at an entry point, before work.

XLA's CPU runtime allocates each execution's buffers anew. With glibc's defaults, blocks over
128 KiB-32 MiB come from fresh `mmap`s that are unmapped again when freed, so every training
step page-faults all of its activations back in: on a 2-core machine that made an elementwise
op over a 33 MB attention matrix 5× slower (12 ms instead of 2.5 ms, benchmarks in
docs/benchmarks.md). Keeping freed memory in the heap removes that cost; peak RSS is unchanged
because XLA reuses the same sizes every step.

The exception is the start of a run: the compiler's freed heap, and then the first execution's
buffers, which the second execution's do not fit into, stayed resident, and the process peaked
at 1.4-1.6× its steady memory. The training loop calls `release_freed_host_memory()` after
compiling and after the first step of each kind; from then on the steps reuse the same blocks.
"""
import ctypes
import ctypes.util

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -2, -3, -8
_KEEP = 2**31 - 1  # the largest value mallopt accepts


def keep_freed_host_memory() -> bool:
    """Tells glibc malloc to serve big blocks from the heap and not return them to the OS.

    Returns False (and changes nothing) where the C library is not glibc.
    """
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, _KEEP) and mallopt(_M_TRIM_THRESHOLD, _KEEP)
    ok = ok and mallopt(_M_ARENA_MAX, 1)  # thread arenas would mmap blocks over 64 MiB
    return bool(ok and mallopt(_M_TOP_PAD, 64 << 20))


def release_freed_host_memory() -> bool:
    """Returns the heap's freed memory to the OS (glibc's `malloc_trim`); call it between
    compiling and running, where the compiler's freed memory is no longer needed.

    Returns False (and changes nothing) where the C library is not glibc.
    """
    trim = _libc_function("malloc_trim")
    if trim is None:
        return False
    trim(0)
    return True


def _libc_function(name: str):
    """The C library's function `name`, or None where there is no such library or function."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c")), name)
    except (OSError, AttributeError, TypeError):
        return None
