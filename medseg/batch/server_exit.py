"""Preloaded by the batch's forkserver (``medseg.forkserver.PRELOAD``): there it makes the server
leave without the interpreter's teardown; anywhere else importing it does nothing.

When ``medseg batch`` exits, its forkserver sees the batch's pipe close and exits too. Tearing down
the torch and MONAI it preloaded takes about a second, and the forkserver holds the batch's
stdout and stderr, so whoever reads the batch's output through a pipe (``| tee``, a CI log,
``subprocess.run(capture_output=True)``) waited that second after the batch itself had finished
(measured: 0.9 s of a 17 s batch). The server has nothing to flush: its workers write outputs
atomically and report to the batch. Forked workers never run atexit handlers (multiprocessing ends
them with ``os._exit``), so this one only ends the server.

The hook is registered only in the process whose environment carries
``medseg.forkserver.SERVER_MARKER`` (``worker_context`` sets it just while the server is started):
a program that merely imports medseg keeps its own exit status and atexit handlers. The marker is
removed here so that nothing the server forks or starts inherits it.
"""

import atexit
import os

from medseg.forkserver import SERVER_MARKER

if os.environ.pop(SERVER_MARKER, None) is not None:
    atexit.register(os._exit, 0)
