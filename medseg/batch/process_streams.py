"""Inference streams as worker processes: the default for ``medseg batch --workers N`` (N > 1) on a CPU.

Why processes and not threads: on a CPU, PyTorch's intra-op threads scale poorly for the small
convolutions of one window batch, and a second stream on a thread of the same process shares the
interpreter lock with the first one's Python-level work (the window loop, resampling set-up, the
writers). N single-threaded processes keep N cores busy instead (benchmarks/README.md, "Cohort
throughput").

Each worker process (``spawn``, so nothing of the parent's state leaks in) loads the model once and
runs its own :class:`~medseg.batch.executors.LocalPipelineExecutor` with one inference stream, so
within a worker the next case is read and the previous one written while the current one is
inferred. The parent keeps the ledger: it sends :class:`CaseTask` s to the worker with the fewest
cases in flight and receives plain :class:`CaseResult` s back.

Safety:
- a worker dies with its parent (``PR_SET_PDEATHSIG`` on Linux, plus a parent-pid watchdog), so a
  SIGKILLed batch leaves no orphan writing into the output folder; what it was writing is a temp
  file that the next run removes;
- a worker that dies (killed, out of memory, a crash in a native library) is replaced; the cases it
  had in flight are retried one at a time, each alone on a worker, and a case that kills the worker
  it runs alone on is recorded as failed with a one-line reason: one poisonous scan cannot stop the
  cohort, and no innocent case in flight beside it is failed.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import pickle
import queue
import signal
import threading
from dataclasses import dataclass, field

from medseg.batch.case import CaseResult, CaseSettings, CaseTask, failed_result
from medseg.errors import MedsegError, ModelError

#: cases one worker holds at once: one inferring, one read ahead, one written behind, one spare
CASES_PER_WORKER = 4
#: how long a worker may take to import torch and load the model before the batch gives up
STARTUP_TIMEOUT_S = 600.0


def _die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies; poll as a fallback."""
    import ctypes
    import sys
    import time

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="medseg-parent-watch", daemon=True).start()


def _worker_main(index: int, settings: CaseSettings, torch_threads: int, parent_pid: int, inbox, conn, stop) -> None:
    """A worker process: load the model once, then pipeline the cases the parent sends.

    Messages go back on a pipe of its own (``conn``): a worker killed while writing can then only
    break its own pipe, never a queue lock that other workers share.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's; it stops the workers
    from medseg.inference.host_memory import share_one_heap

    share_one_heap()  # before the pipeline's threads allocate (see there)
    _die_with_parent(parent_pid)
    import torch

    from medseg.batch.case import CaseProcessor, one_line
    from medseg.batch.executors import LocalPipelineExecutor

    lock = threading.Lock()

    def send(message) -> None:
        with lock:
            conn.send(message)

    torch.set_num_threads(max(1, torch_threads))
    try:
        processor = CaseProcessor.load(settings)
    except BaseException as err:  # noqa: BLE001 - reported to the parent as one line
        send(("load-failed", index, one_line(err)))
        return
    send(("ready", index, os.getpid()))

    def on_stage(case_id: str, stage: str) -> None:
        send(("stage", case_id, stage))

    def report(task: CaseTask, fut: cf.Future) -> None:
        err = fut.exception()
        result = fut.result() if err is None else failed_result(task, err)
        send(("result", index, result))

    with LocalPipelineExecutor(settings, workers=1, processor=processor, on_stage=on_stage) as pipeline:
        while True:
            try:
                task = inbox.get(timeout=0.5)
            except queue.Empty:
                if stop.is_set():  # the parent has every result: nothing more will come
                    break
                continue
            if task is None:
                break
            pipeline.submit(task).add_done_callback(lambda fut, task=task: report(task, fut))
    send(("stopped", index, None))


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

    def __init__(self, settings: CaseSettings, workers: int = 2, on_stage=None) -> None:
        if workers < 1:
            raise MedsegError(f"--workers must be at least 1 (got {workers})")
        self.settings = settings
        self.workers = workers
        self.on_stage = on_stage
        self.torch_threads = max(1, (os.cpu_count() or 1) // workers)
        self.description = f"local, {workers} worker processes ({self.torch_threads} torch thread(s) each), pipelined"
        self._ctx = mp.get_context("spawn")
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
        args = (index, self.settings, self.torch_threads, os.getpid(), inbox, send, self._stop)
        process = self._ctx.Process(target=_worker_main, args=args, name=f"medseg-worker-{index}", daemon=True)
        process.start()
        send.close()  # the worker holds the only sending end: its death closes the pipe
        return _Worker(index, process, inbox, receive)

    def _messages(self, timeout: float) -> list[tuple]:
        """Messages from every worker that has any within ``timeout``; a broken pipe (a worker
        killed mid-message, or gone) yields nothing and is left to the death check."""
        from multiprocessing.connection import wait

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
        import time

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
