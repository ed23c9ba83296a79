"""Giving freed memory back to the OS: Arrow's pool and the C heap.

A driver that runs for hours (an extraction, a batch prediction, a sweep) frees most of what
each step allocated, but two allocators keep freed pages for reuse, and they stay in the
process's resident memory:

- Arrow's default pool (mimalloc) keeps the pages of freed buffers: after the extraction writer
  built and wrote a part file of a few hundred videos, the driver held about 50 MiB more until
  the next one (``benchmarks/predict_scale.py --job extract``, ``/proc/self/smaps``: the growth
  was in mimalloc's arena). ``release_arrow_memory`` hands them back. mimalloc collects the
  calling thread's heap, so call it in the thread that built the tables, once they are dropped.
- glibc's heap keeps free chunks that lie between live ones (fragmentation): over 800 videos of
  batch prediction its free bytes grew to 27 MiB while its bytes in use stayed the same at each
  window's end. ``release_free_heap`` (``malloc_trim``) returns their whole pages; it does
  nothing where there is no glibc (macOS, musl).

Both cost a few milliseconds: call them between windows of work, not per row.
"""

from __future__ import annotations

import ctypes

import pyarrow as pa

_LIBC = None  # glibc once loaded; False where there is none


def release_arrow_memory() -> None:
    """Give the pages Arrow's memory pool keeps after its buffers are freed back to the OS."""
    pa.default_memory_pool().release_unused()


def release_free_heap() -> bool:
    """Hand the C heap's free pages back to the OS (glibc's ``malloc_trim``): whether any
    went back; False where there is no glibc."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim  # noqa: B018 (absent outside glibc: AttributeError)
        except (OSError, AttributeError):
            _LIBC = False
    return bool(_LIBC) and bool(_LIBC.malloc_trim(0))


def release_memory() -> None:
    """Both: Arrow's freed pages, then the C heap's."""
    release_arrow_memory()
    release_free_heap()
