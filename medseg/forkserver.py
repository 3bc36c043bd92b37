"""How batch worker processes start: forked from a server that has imported torch, MONAI and medseg once.

Kept free of heavy imports so that ``medseg batch`` can start the server first thing: the server's
~3 s of imports then overlap the parent's own imports, cohort scan and ledger checks.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys

#: what the forkserver imports once for every worker it forks
PRELOAD = [
    "medseg.batch.process_streams",
    "medseg.inference.pipeline",
    "torch",
    "monai.networks.nets",
    "medseg.batch.server_exit",  # the server then exits at once with the batch (see there)
]
#: set in the environment only while the forkserver is started: ``medseg.batch.server_exit`` acts
#: only in the process that has it
SERVER_MARKER = "_MEDSEG_FORKSERVER"
#: device nodes of a GPU driver (NVIDIA, ROCm, WSL); with none of them, ``auto`` means the CPU
_GPU_NODES = ("/proc/driver/nvidia", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")


def worker_context():
    """``forkserver`` with the heavy imports preloaded on Linux (started now, in the background; a
    no-op once running), else ``spawn``. Forking from a server that has only imported torch (no
    thread pool yet) is safe."""
    if not sys.platform.startswith("linux"):
        return mp.get_context("spawn")
    from multiprocessing import forkserver

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    # The server is fork-exec'd inside ensure_running() with this process's environment (CPython's
    # util.spawnv_passfds passes env=None), so the marker reaches it (and multiprocessing's resource
    # tracker, started in the same call, which never imports medseg); it is gone from ours before
    # ensure_running() returns. A server that multiprocessing relaunches on its own (in
    # connect_to_new_process, if this one died) does not get it and merely exits the slow way.
    os.environ[SERVER_MARKER] = "1"
    try:
        forkserver.ensure_running()
    finally:
        os.environ.pop(SERVER_MARKER, None)
    return ctx


def surely_cpu(device: str) -> bool | None:
    """True when ``device`` is the CPU; None when only torch can tell (``auto`` with a GPU driver,
    ``cuda``...). Needs no torch import (1-2 s)."""
    device = (device or "auto").lower()
    if device == "cpu":
        return True
    if device == "auto" and sys.platform.startswith("linux") and not any(os.path.exists(p) for p in _GPU_NODES):
        return True
    return None
