"""Inference streams as worker processes: the default of ``medseg batch`` on a CPU with 2+ cores.

Why processes and not threads: on a CPU, one case's network already keeps PyTorch's threads busy,
and a read or write thread beside them stalls the whole OpenMP team at every barrier (one case
went from 0.63 s to ~0.8 s of inference when the next case was read meanwhile). Two worker
processes, each with half the cores and running its cases back to back, overlap differently: while
one reads, resamples and writes (single-threaded work), the other runs its network, and neither
waits on the other's threads (benchmarks/README.md, "Cohort throughput").

Start-up: on Linux the workers are forked from a ``forkserver`` that has already imported torch,
MONAI and medseg (``medseg/forkserver.py``: ``medseg batch`` starts it before anything else, the
executor at the latest, so the import overlaps the parent's cohort scan and ledger checks); each
worker then loads the model once. Elsewhere they are spawned.

The parent keeps the ledger: it sends :class:`CaseTask` s to the worker with the fewest cases in
flight (two each, so a worker never waits for the next) and receives plain :class:`CaseResult` s.

Safety:
- a worker dies with the batch (``PR_SET_PDEATHSIG`` on Linux, plus a watchdog on the batch's pid),
  so a SIGKILLed batch leaves no orphan writing into the output folder; what it was writing is a
  temp file that the next run removes;
- a worker that dies (killed, out of memory, a crash in a native library) is replaced; the cases it
  had in flight are retried one at a time, each alone on a worker, and a case that kills the worker
  it runs alone on is recorded as failed with a one-line reason: one poisonous scan cannot stop the
  cohort, and no innocent case in flight beside it is failed.
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import multiprocessing as mp
import os
import pickle
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait

import torch

from medseg.batch.case import CaseProcessor, CaseResult, CaseSettings, CaseTask
from medseg.errors import MedsegError, ModelError, describe_error
from medseg.forkserver import worker_context
from medseg.inference.budget import parse_bytes
from medseg.inference.host_memory import available_host_bytes

#: cases one worker holds at once: the one it runs and the next, so it never waits for the parent
CASES_PER_WORKER = 2
#: how long a worker may take to import torch and load the model before the batch gives up
STARTUP_TIMEOUT_S = 600.0


def _equal_share(workers: int, host_memory: str | int | None = None) -> int | None:
    """Each worker's host budget: the ``--host-memory`` given (else what is free now) split equally; one
    worker without a budget plans as ``medseg infer`` does."""
    if host_memory is not None and str(host_memory).strip().lower() != "auto":
        return parse_bytes(host_memory) // max(1, workers)
    if workers <= 1:
        return None
    return available_host_bytes() // workers


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _die_with_parent(batch_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent (the batch, or the forkserver, which
    exits with the batch) dies; a watchdog on both pids is the fallback."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if not _alive(batch_pid):  # the batch died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent or not _alive(batch_pid):
                os._exit(1)

    threading.Thread(target=watch, name="medseg-parent-watch", daemon=True).start()


def _worker_main(
    index: int, settings: CaseSettings, torch_threads: int, host_share: int | None, batch_pid: int, inbox, conn, stop
) -> None:
    """A worker process: load the model once, then run the cases the parent sends, one after another.

    ``host_share``: this worker's host-memory budget for the planner (bytes), so that the workers'
    cases fit side by side; a case too big for it slab-streams, or fails with a hint.
    Messages go back on a pipe of its own (``conn``): a worker killed while writing can then only
    break its own pipe, never a queue lock that other workers share.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's; it stops the workers
    _die_with_parent(batch_pid)
    torch.set_num_threads(max(1, torch_threads))
    try:
        processor = CaseProcessor.load(settings)
    except BaseException as err:  # noqa: BLE001 - reported to the parent as one line
        conn.send(("load-failed", index, describe_error(err)))
        os._exit(0)
    if host_share is not None:
        processor.segmenter.host_budget = host_share
        processor.segmenter.budget_note = "that is this worker's share of host memory: rerun it with --workers 1"
    conn.send(("ready", index, os.getpid()))
    while True:
        try:
            task = inbox.get(timeout=0.5)
        except queue.Empty:
            if stop.is_set():  # the parent has every result: nothing more will come
                break
            continue
        if task is None:
            break
        conn.send(("result", index, processor.run(task, lambda stage, t=task: conn.send(("stage", t.case_id, stage)))))
    conn.send(("stopped", index, None))
    conn.close()
    # nothing is left to flush (outputs are renamed into place, the ledger is the parent's):
    # skip the interpreter's teardown of torch and MONAI, which takes seconds
    os._exit(0)


@dataclass
class _Worker:
    index: int
    process: mp.process.BaseProcess
    inbox: object
    conn: object  # the receiving end of the worker's pipe
    inflight: dict[str, tuple[CaseTask, cf.Future]] = field(default_factory=dict)
    alive: bool = False  # the model is loaded and the process has not died
    dead: bool = False  # its death has been handled
    isolated: bool = False  # runs one suspect case alone


class ProcessStreamsExecutor:
    """``workers`` worker processes, each with the model loaded once and ``cores // workers`` torch threads.

    Args:
        settings: model, device and output options (identical in every worker).
        workers: number of worker processes (inference streams).
        on_stage: called as ``on_stage(case_id, stage)`` from the parent's collector thread.
    """

    def __init__(self, settings: CaseSettings, workers: int = 2, on_stage=None, host_share: int | None = None) -> None:
        if workers < 1:
            raise MedsegError(f"--workers must be at least 1 (got {workers})")
        self.settings = settings
        self.workers = workers
        self.on_stage = on_stage
        self.torch_threads = max(1, (os.cpu_count() or 1) // workers)
        #: each worker plans its cases within an equal share of the host memory free now (one worker: all
        #: of what is free when it plans, as ``medseg infer`` does)
        self.host_share = host_share if host_share is not None else _equal_share(workers, settings.host_memory)
        self.description = f"local, {workers} worker processes ({self.torch_threads} torch thread(s) each)"
        self._ctx = worker_context()
        self._stop = self._ctx.Event()
        self._pool: list[_Worker] = []
        self._lock = threading.Lock()
        self._waiting: list[tuple[CaseTask, cf.Future]] = []  # not yet given to a worker
        self._suspects: list[tuple[CaseTask, cf.Future]] = []  # in flight when a worker died
        self._stopping = threading.Event()
        self._collector: threading.Thread | None = None

    # --- life cycle -------------------------------------------------------------------------
    def __enter__(self) -> ProcessStreamsExecutor:
        try:
            for i in range(self.workers):
                self._pool.append(self._start_worker(i))
            self._wait_ready(set(range(self.workers)))
        except BaseException:
            self._terminate()
            raise
        self._collector = threading.Thread(target=self._collect, name="medseg-collector", daemon=True)
        self._collector.start()
        return self

    def _start_worker(self, index: int) -> _Worker:
        inbox = self._ctx.Queue()
        receive, send = self._ctx.Pipe(duplex=False)
        args = (index, self.settings, self.torch_threads, self.host_share, os.getpid(), inbox, send, self._stop)
        process = self._ctx.Process(target=_worker_main, args=args, name=f"medseg-worker-{index}", daemon=True)
        process.start()
        send.close()  # the worker holds the only sending end: its death closes the pipe
        return _Worker(index, process, inbox, receive)

    def _messages(self, timeout: float) -> list[tuple]:
        """Messages from every worker that has any within ``timeout``; a broken pipe (a worker
        killed mid-message, or gone) yields nothing and is left to the death check."""
        conns = {id(w.conn): w for w in self._pool if not w.dead}
        out = []
        for conn in wait([w.conn for w in conns.values()], timeout=timeout):
            try:
                while conn.poll():
                    out.append(conn.recv())
            except (EOFError, OSError, ValueError, pickle.UnpicklingError):
                w = conns[id(conn)]
                w.process.join(timeout=5)  # it is dying: let the death check see it
        return out

    def _wait_ready(self, waiting: set[int]) -> None:
        """Block until the workers in ``waiting`` have loaded the model (or one failed to)."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while waiting:
            messages = self._messages(1.0)
            if not messages:
                for i in list(waiting):
                    proc = self._pool[i].process
                    if not proc.is_alive():
                        code = proc.exitcode
                        raise MedsegError(f"a batch worker exited while loading the model (exit code {code})") from None
                if time.monotonic() > deadline:
                    limit = f"{STARTUP_TIMEOUT_S:.0f} s"
                    raise MedsegError(f"batch workers did not load the model within {limit}") from None
            for kind, index, payload in messages:
                if kind == "load-failed":
                    raise ModelError(payload)
                if kind == "ready":
                    self._pool[index].alive = True
                    waiting.discard(index)

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self._stop.set()  # every worker leaves its loop once its inbox is empty
            for w in self._pool:
                if not w.dead:
                    w.inbox.put(None)
            for w in self._pool:
                w.process.join(timeout=60)
        self._stopping.set()
        if self._collector is not None:
            self._collector.join(timeout=10)
        self._terminate()

    def _terminate(self) -> None:
        for w in self._pool:
            if w.process.is_alive():
                w.process.kill()
            w.process.join(timeout=10)
        stopped = MedsegError("the batch stopped before this case finished")
        self._fail_all(stopped)

    # --- runner interface -----------------------------------------------------------------
    def capacity(self) -> int:
        return CASES_PER_WORKER * self.workers

    def submit(self, task: CaseTask) -> cf.Future[CaseResult]:
        fut: cf.Future[CaseResult] = cf.Future()
        fut.set_running_or_notify_cancel()
        if self.on_stage:
            self.on_stage(task.case_id, "queued")
        self._send(task, fut)
        return fut

    def _send(self, task: CaseTask, fut: cf.Future, suspect: bool = False) -> None:
        with self._lock:
            (self._suspects if suspect else self._waiting).append((task, fut))
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand held cases to live workers: a suspect alone to an idle worker, the rest to the least busy."""
        with self._lock:
            while self._suspects:
                idle = [w for w in self._pool if w.alive and not w.inflight]
                if not idle:
                    break
                task, fut = self._suspects.pop(0)
                idle[0].isolated = True
                self._put(idle[0], task, fut)
            while self._waiting:
                open_ = [w for w in self._pool if w.alive and not w.isolated]
                if not open_:
                    break
                task, fut = self._waiting.pop(0)
                self._put(min(open_, key=lambda w: len(w.inflight)), task, fut)

    @staticmethod
    def _put(worker: _Worker, task: CaseTask, fut: cf.Future) -> None:
        worker.inflight[task.case_id] = (task, fut)
        worker.inbox.put(task)

    # --- the parent's collector thread ----------------------------------------------------
    def _collect(self) -> None:
        while not self._stopping.is_set():
            for message in self._messages(0.5):
                self._handle(*message)
            self._check_workers()

    def _handle(self, kind: str, a, b) -> None:
        if kind == "stage":
            if self.on_stage:
                self.on_stage(a, b)
        elif kind == "result":
            with self._lock:
                worker = self._pool[a]
                entry = worker.inflight.pop(b.case_id, None)
                if not worker.inflight:
                    worker.isolated = False
            if entry is not None and not entry[1].done():
                entry[1].set_result(b)
            self._dispatch()
        elif kind == "ready":
            with self._lock:
                self._pool[a].alive = True
            self._dispatch()
        elif kind == "load-failed":
            self._fail_all(ModelError(b))

    def _check_workers(self) -> None:
        """Replace dead workers. Their cases come back as suspects and run one at a time on an idle
        worker; a suspect that kills its worker again (it was alone there) is failed."""
        for w in list(self._pool):
            if w.dead or w.process.is_alive() or self._stopping.is_set():
                continue
            code = w.process.exitcode
            reason = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            with self._lock:
                was_loaded, guilty = w.alive, w.isolated
                w.alive, w.dead = False, True
                w.conn.close()
                orphans = list(w.inflight.values())
                w.inflight.clear()
                if was_loaded:  # replace it; cases wait for a live worker meanwhile
                    self._pool[w.index] = self._start_worker(w.index)
            if not was_loaded:  # a replacement that died while loading the model: do not loop
                if not any(x.alive or not x.dead for x in self._pool):
                    self._fail_all(MedsegError(f"batch worker processes died while loading the model ({reason})"))
                continue
            for task, fut in orphans:
                if guilty:
                    fut.set_exception(MedsegError(f"this case stopped its batch worker process twice ({reason})"))
                else:
                    self._send(task, fut, suspect=True)
            self._dispatch()

    def _fail_all(self, err: BaseException) -> None:
        with self._lock:
            entries = [e for w in self._pool for e in w.inflight.values()] + self._waiting + self._suspects
            for w in self._pool:
                w.inflight.clear()
            self._waiting, self._suspects = [], []
        for _, fut in entries:
            if not fut.done():
                fut.set_exception(err)


__all__ = ["ProcessStreamsExecutor"]
