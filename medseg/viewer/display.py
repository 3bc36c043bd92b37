"""A virtual X display (Xvfb) for screenshots and rendered tests on machines without a screen.

Example:
    >>> with virtual_display():  # doctest: +SKIP
    ...     viewer = open_viewer("scan.nii.gz", show=True)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator

from medseg.errors import MedsegError

#: what the rendering needs: software OpenGL (Mesa llvmpipe) through X, for Qt's xcb platform
_ENV = {"QT_QPA_PLATFORM": "xcb", "LIBGL_ALWAYS_SOFTWARE": "1"}


def have_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def start_xvfb(size: tuple[int, int] = (1600, 1200), timeout: float = 20.0) -> subprocess.Popen:
    """Start Xvfb on a free display number (it reports the number itself) and point ``DISPLAY`` at it."""
    exe = shutil.which("Xvfb")
    if exe is None:
        raise MedsegError("Xvfb is not installed (apt-get install xvfb libgl1-mesa-dri) and there is no DISPLAY")
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        # -terminate: exit when the last client (this process's Qt) disconnects, so Qt never sees the server die
        [exe, "-displayfd", str(write_fd), "-screen", "0", f"{size[0]}x{size[1]}x24", "-nolisten", "tcp", "-terminate"],
        pass_fds=[write_fd],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    number = b""
    try:
        import select

        while not number.endswith(b"\n"):
            ready, _, _ = select.select([read_fd], [], [], timeout)
            chunk = os.read(read_fd, 16) if ready else b""
            if not chunk:
                proc.kill()
                raise MedsegError("Xvfb did not start (no display number reported)")
            number += chunk
    finally:
        os.close(read_fd)
    os.environ["DISPLAY"] = f":{number.decode().strip()}"
    for key, value in _ENV.items():
        os.environ.setdefault(key, value)
    return proc


def stop_xvfb(proc: subprocess.Popen) -> None:
    """Stop Xvfb unless Qt holds a connection to it: then it exits by itself when this process does.

    Killing the server under a live QApplication makes Qt abort the process ("X11 connection broke").
    """
    app = None
    with contextlib.suppress(ImportError):
        from qtpy.QtWidgets import QApplication

        app = QApplication.instance()
    if app is not None:
        return
    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


@contextlib.contextmanager
def virtual_display(size: tuple[int, int] = (1600, 1200)) -> Iterator[str]:
    """Use the current display if there is one, else run Xvfb for the duration of the block."""
    if have_display():
        yield os.environ.get("DISPLAY", "")
        return
    old = {k: os.environ.get(k) for k in ("DISPLAY", *_ENV)}
    proc = start_xvfb(size)
    try:
        yield os.environ["DISPLAY"]
    finally:
        stop_xvfb(proc)
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
