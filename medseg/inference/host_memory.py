"""glibc's allocator, tuned for the window loop (Linux; a no-op elsewhere). No torch import here, so a
command that owns its process can call :func:`share_one_heap` before anything starts a thread.

Every setting here is process-wide and outlives the run that made it (see each function), so the
library never sets one on import: only the runs and commands that ask for them.

Why it matters: a window batch allocates and frees hundreds of MiB of activations. Where those
blocks come from decides whether every window batch page-faults fresh memory (slow, but the process
size follows the live tensors the memory planner predicts) or reuses freed heap (fast, but the
process keeps what it freed). Measured effects: benchmarks/README.md, "Speed levers".
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


#: glibc (mmap, trim) thresholds per host allocator mode (bytes); see :func:`use_host_allocator`.
#: "glibc" does not give glibc its own behaviour back: setting M_MMAP_THRESHOLD or M_TRIM_THRESHOLD
#: with mallopt turns glibc's dynamic thresholds off for the life of the process (mallopt(3), note
#: under M_MMAP_THRESHOLD; nothing turns them on again). It sets the values that dynamic rule settles
#: at in a process that has freed large blocks, as a window loop does: each free of an mmapped block
#: larger than the mmap threshold and at most DEFAULT_MMAP_THRESHOLD_MAX (32 MiB on 64-bit) raises
#: the mmap threshold to that block's size and the trim threshold to twice it, so at most 32 and
#: 64 MiB. The engine leaves the process at those values after a run; they then stay fixed.
HOST_ALLOCATOR_THRESHOLDS = {
    "strict": (2 << 20, 2 << 20),
    "fast": (256 << 20, 256 << 20),
    "glibc": (32 << 20, 64 << 20),
}
_ALLOCATOR_MODE: str | None = None


def use_host_allocator(mode: str = "strict") -> bool:
    """Set glibc's ``M_MMAP_THRESHOLD``/``M_TRIM_THRESHOLD`` (``mallopt(3)``) for the window loop.

    * ``strict`` (2 MiB): large blocks are mmapped and given back to the OS when freed, so the
      process size follows the live tensors the planner predicts. By default glibc raises its mmap
      threshold up to 32 MiB as blocks are freed and keeps freed heap blocks: after a few window
      batches the resident size exceeded the live tensors by 50-200 MB (measured). The price is a
      page fault per 4 KiB of every fresh activation: 40-50% of the time of a small 3D U-Net case.
    * ``fast`` (256 MiB): activations come from the heap and are reused from one window batch to
      the next; the process keeps what it freed, so the resident size may exceed the prediction.
      The planner picks it only with ample headroom under the host budget
      (:data:`medseg.inference.planner.FAST_ALLOCATOR_HEADROOM`).

    The setting is process-wide (glibc has one allocator) and the first call ends glibc's dynamic
    thresholds for the rest of the process; :func:`host_allocator` scopes the mode to a run and then
    sets the "glibc" values (:data:`HOST_ALLOCATOR_THRESHOLDS`), not the dynamic rule. A no-op
    (False) where glibc is not the allocator, or where mallopt refuses a value (glibc's 2021
    sources refuse an mmap threshold above HEAP_MAX_SIZE / 2 = 32 MiB, i.e. "fast"; 2.36 accepts it).
    """
    global _ALLOCATOR_MODE
    if mode not in HOST_ALLOCATOR_THRESHOLDS:
        raise ValueError(f"unknown host allocator mode {mode!r}")
    if _ALLOCATOR_MODE == mode:
        return True
    libc = _libc()
    if libc is None:
        return False
    mmap_threshold, trim_threshold = HOST_ALLOCATOR_THRESHOLDS[mode]
    m_trim_threshold, m_mmap_threshold = -1, -3
    try:
        ok = libc.mallopt(m_mmap_threshold, mmap_threshold) == 1 and libc.mallopt(m_trim_threshold, trim_threshold) == 1
    except AttributeError:
        return False
    _ALLOCATOR_MODE = mode if ok else None
    return ok


def share_one_heap() -> bool:
    """Let every thread allocate from glibc's main heap (``M_ARENA_MAX`` = 1), as the main thread does.

    A thread other than the main one gets its own glibc arena, whose heaps are at most 64 MiB: any
    larger block (most activations) is mmapped and faulted in page by page whatever
    ``M_MMAP_THRESHOLD`` says (measured: a 3D U-Net case ran 0.87 s in a worker thread, 0.68 s in
    the main thread, 0.72 s in a worker thread with one arena).

    When it takes effect: glibc reads the limit lazily, in ``arena_get2`` (malloc/arena.c), each time
    a thread finds no free arena and would make a new one, and keeps the first nonzero limit for
    good: ``M_ARENA_MAX`` if set by then, else 8 x cores once more than ``M_ARENA_TEST`` (8 on 64-bit)
    arenas exist. Set later, it still stops new arenas, but the arenas already made stay: threads
    keep the arena they are attached to and new threads reuse one of them (the first uncontended
    one, not necessarily the main heap). Hence a command calls it before anything starts a thread.
    It cannot be undone, so only a command that owns its process calls it, never the library. A
    no-op (False) where glibc is not the allocator.
    """
    libc = _libc()
    try:
        return libc is not None and libc.mallopt(-8, 1) == 1  # M_ARENA_MAX
    except AttributeError:
        return False


@contextlib.contextmanager
def host_allocator(mode: str):
    """``mode`` for the duration of a run, then the fixed values glibc's dynamic thresholds settle at
    ("glibc"; glibc's dynamic adjustment stays off, see :data:`HOST_ALLOCATOR_THRESHOLDS`)."""
    changed = use_host_allocator(mode)
    try:
        yield changed
    finally:
        if changed:
            use_host_allocator("glibc")


def _proc_bytes(path: str, key: str) -> int | None:
    """The ``key:`` line of a /proc file in bytes (its values are kB), or None where it cannot be read."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def available_host_bytes() -> int:
    """``MemAvailable`` from /proc/meminfo (what Linux can hand out without swapping)."""
    found = _proc_bytes("/proc/meminfo", "MemAvailable")
    if found is not None:
        return found
    import psutil  # not Linux: psutil knows where to look

    return int(psutil.virtual_memory().available)


def process_rss_bytes() -> int:
    """This process's resident size (``VmRSS`` from /proc/self/status)."""
    found = _proc_bytes("/proc/self/status", "VmRSS")
    if found is not None:
        return found
    import psutil  # not Linux: psutil knows where to look

    return int(psutil.Process().memory_info().rss)
