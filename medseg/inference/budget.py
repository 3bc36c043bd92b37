"""Memory budgets: sizes a user types (``12GB``), and what is free when nobody typed one.

An ``auto`` budget is the memory free now. Free memory moves by megabytes from one moment to the
next, so that ``medseg plan`` and a ``medseg infer`` a moment later plan for the same budget, the
last auto budget is kept in medseg's cache and used again while what is free stays within
:data:`AUTO_TOLERANCE` of it (:func:`_settled`). The framework's own host memory (Python, torch,
MONAI, the loaded model) is measured once per model and machine and kept there for the same
reason (:func:`framework_host_bytes`).
"""

from __future__ import annotations

import re

import torch

from medseg.errors import MedsegError
from medseg.inference.disk_cache import JsonCache, cache_key
from medseg.inference.host_memory import available_host_bytes, process_rss_bytes

GiB = 1 << 30
MiB = 1 << 20
#: an auto budget is measured again only when what is free has moved by more than this fraction
AUTO_TOLERANCE = 0.03


def parse_bytes(text: str | int | float | None) -> int | None:
    """``"12GB"``, ``"24 GiB"``, ``"800MB"``, ``"6"`` (GB) -> bytes (GB = GiB = 2**30); ``auto``/None -> None."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        return int(text)
    s = str(text).strip().lower().replace(" ", "")
    if s in ("", "auto"):
        return None
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)(gib|gb|g|mib|mb|m|tib|tb|t)?", s)
    if not m:
        raise MedsegError(f"cannot read memory size {text!r} (use e.g. 12GB, 24GB, 800MB or auto)")
    unit = (m.group(2) or "gb")[0]
    return int(float(m.group(1)) * {"m": MiB, "g": GiB, "t": 1024 * GiB}[unit])


def free_gpu_bytes(device: str) -> int:
    """Free memory on a CUDA device right now (``cudaMemGetInfo``)."""
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(free)


def _settled(where: str, free: int) -> int:
    """``free``, or the last auto budget of ``where`` while ``free`` is within :data:`AUTO_TOLERANCE` of it."""
    cache = JsonCache("budgets")
    last = cache.get(where)
    if isinstance(last, int) and abs(free - last) <= AUTO_TOLERANCE * last:
        return last
    cache.put(where, int(free))
    return int(free)


def auto_host_budget() -> int:
    """Host budget when none is given: what Linux can hand out (MemAvailable) plus what this process
    already holds (its memory is part of what a run may use), settled (:func:`_settled`)."""
    return _settled("host", available_host_bytes() + process_rss_bytes())


def auto_gpu_budget(device: str) -> int:
    """GPU budget when none is given: free memory on ``device`` now, settled (:func:`_settled`)."""
    return _settled(f"gpu {device}", free_gpu_bytes(device))


def framework_host_bytes(key: tuple, measure) -> int:
    """The host memory of the framework around a model (``measure()``: this process's resident size
    less the model's weights and the scan in memory), measured once per ``key`` (model, device,
    library versions) and then read from medseg's cache, so that every process plans with the same
    figure."""
    cache = JsonCache("framework")
    k = cache_key(*key)
    hit = cache.get(k)
    if isinstance(hit, int):
        return hit
    value = int(measure())
    cache.put(k, value)
    return value
