"""Importing medseg changes nothing about the importing process: its exit status and atexit handlers
are its own. The one module that ends a process early (``medseg.batch.server_exit``) acts only in
the batch's forkserver, which ``medseg.forkserver.worker_context`` starts with a private marker."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: import every module under medseg/ (files, not pkgutil.walk_packages: medseg/models has no
#: __init__.py, and walk_packages does not enter namespace packages), then exit with status 3.
#: A module may be missing only an optional extra's package (printed as "skipped"); any other
#: import error fails the script.
IMPORT_ALL = r"""
import atexit, importlib, pathlib, sys

OPTIONAL = {"dask", "distributed", "highdicom", "napari", "npe2", "qtpy", "PyQt6", "superqt", "magicgui", "nnunetv2"}
atexit.register(print, "teardown ran")
root = pathlib.Path(sys.argv[1]) / "medseg"
names = []
for path in sorted(root.rglob("*.py")):
    parts = path.relative_to(root.parent).with_suffix("").parts
    names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
for name in names:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in OPTIONAL:
            raise
        print(f"skipped {name} (optional {exc.name} missing)")
    else:
        print(f"imported {name}")
sys.exit(3)
"""


def test_importing_every_module_leaves_the_exit_status_and_teardown_alone():
    env = {k: v for k, v in os.environ.items() if k != "_MEDSEG_FORKSERVER"}
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, str(ROOT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.rstrip().endswith("teardown ran")
    imported = {line.split()[1] for line in proc.stdout.splitlines() if line.startswith("imported ")}
    skipped = [line for line in proc.stdout.splitlines() if line.startswith("skipped ")]
    expected = {"medseg.batch.server_exit", "medseg.forkserver", "medseg.inference.host_memory", "medseg.cli"}
    expected |= {"medseg.models.base", "medseg.models.registry"}
    assert expected <= imported, (sorted(imported), skipped)
    if skipped:  # only modules that need an optional extra that is not installed here: say which
        warnings.warn("not imported (optional extra missing): " + "; ".join(skipped), stacklevel=1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the forkserver is used on Linux only")
@pytest.mark.slow
def test_only_the_forkserver_gets_the_exit_hook():
    """The server starts with the marker in its environment and removes it on importing server_exit
    (so it registered the hook); the batch's own environment, and its workers', never show it."""
    script = r"""
import os, sys
from multiprocessing import forkserver
from medseg.forkserver import SERVER_MARKER, worker_context

ctx = worker_context()
print("parent", SERVER_MARKER in os.environ)
with ctx.Pool(1) as pool:
    worker = pool.apply(eval, (f"{SERVER_MARKER!r} in __import__('os').environ",))
    # read once a worker has come from the server: ensure_running returns before the server has exec'd, and
    # until then /proc/PID/environ is the parent's (a race seen on a loaded machine)
    pid = forkserver._forkserver._forkserver_pid
    with open(f"/proc/{pid}/environ", "rb") as fh:
        print("server started with it", f"{SERVER_MARKER}=1".encode() in fh.read().split(b"\0"))
    print("worker", worker)
    print("worker preloaded", pool.apply(eval, ("'medseg.batch.server_exit' in __import__('sys').modules",)))
sys.exit(3)
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.splitlines() == [
        "parent False",
        "server started with it True",
        "worker False",
        "worker preloaded True",
    ], proc.stdout + proc.stderr[-2000:]
