"""Process memory figures from /proc/self/status (Linux), shared by the memory benchmarks."""

from __future__ import annotations


def proc_status(key: str) -> int:
    """A ``/proc/self/status`` field in bytes, e.g. ``VmRSS`` (resident now) or ``VmHWM`` (peak)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")
