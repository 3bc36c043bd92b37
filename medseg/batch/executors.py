"""Where cases run. The runner needs only ``submit(task) -> concurrent.futures.Future`` and
``capacity()`` (how many cases to keep in flight), so any backend with that shape plugs in.

- :class:`~medseg.batch.process_streams.ProcessStreamsExecutor` (the default on a CPU with 2+
  cores, and ``--workers N`` with N > 1 on a CPU): N worker processes, each with its own copy of the
  model and ``cores // N`` torch threads, running cases back to back; one worker's reading and
  writing overlap the others' inference.
- :class:`LocalPipelineExecutor` (a GPU, one core, or ``--workers 1``): one process, the model
  loaded once, three stages on their own threads so reading/preprocessing the next case and
  writing the previous one overlap with inference of the current one (as nnU-Net does with
  background preprocessing and an export pool).
- :class:`~medseg.batch.dask_backend.DaskExecutor` (``--scheduler dask://HOST:PORT`` or
  ``local-cluster:N``): each Dask worker loads the model once (a worker plugin) and runs whole cases.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
from collections.abc import Callable
from typing import Protocol

import torch

from medseg.batch.case import CaseProcessor, CaseResult, CaseSettings, CaseTask
from medseg.batch.process_streams import ProcessStreamsExecutor
from medseg.devices import resolve_device
from medseg.errors import MedsegError, install_extra
from medseg.forkserver import surely_cpu

StageCallback = Callable[[str, str], None]


class CaseExecutor(Protocol):
    """What the batch runner needs from a backend (used as a context manager)."""

    description: str

    def __enter__(self) -> CaseExecutor: ...

    def __exit__(self, *exc) -> None: ...

    def capacity(self) -> int: ...

    def submit(self, task: CaseTask) -> cf.Future[CaseResult]: ...


class LocalPipelineExecutor:
    """Cases in one process with the model loaded once; stages overlap across cases.

    Args:
        settings: model, device and output options.
        workers: inference streams (threads) sharing the one loaded model (default 1; on a CPU each
            gets cores / workers torch threads).
        processor: an already loaded :class:`CaseProcessor` (tests, or a caller that has a model).
        on_stage: called as ``on_stage(case_id, stage)`` from worker threads.
    """

    def __init__(
        self,
        settings: CaseSettings,
        workers: int | None = None,
        processor: CaseProcessor | None = None,
        on_stage: StageCallback | None = None,
    ) -> None:
        if workers is not None and workers < 1:
            raise MedsegError(f"--workers must be at least 1 (got {workers})")
        self.settings = settings
        self.workers = workers or 1
        self.processor = processor
        self.on_stage = on_stage
        self._pools: list[cf.ThreadPoolExecutor] = []
        self._torch_threads: int | None = None

    @property
    def description(self) -> str:
        return f"local, {self.workers} inference stream(s), pipelined read/infer/write"

    def __enter__(self) -> LocalPipelineExecutor:
        if self.processor is None:
            self.processor = CaseProcessor.load(self.settings)
        on_cpu = self.processor.segmenter.device == "cpu"
        if self.workers > 1 and on_cpu:
            self._torch_threads = torch.get_num_threads()
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.workers))
        self._read = cf.ThreadPoolExecutor(1, thread_name_prefix="medseg-read")
        self._infer = cf.ThreadPoolExecutor(self.workers, thread_name_prefix="medseg-infer")
        self._write = cf.ThreadPoolExecutor(1, thread_name_prefix="medseg-write")
        self._pools = [self._read, self._infer, self._write]
        return self

    def __exit__(self, *exc) -> None:
        for pool in self._pools:
            pool.shutdown(wait=True, cancel_futures=True)
        if self._torch_threads:
            torch.set_num_threads(self._torch_threads)  # leave the caller's process as it was

    def capacity(self) -> int:
        # the cases inferring, plus one being read ahead and one being written behind, plus one spare
        return self.workers + 3

    def submit(self, task: CaseTask) -> cf.Future[CaseResult]:
        proc = self.processor
        steps = [
            (self._read, "reading", proc.prepare),
            (self._infer, "inference", proc.infer),
            (self._write, "writing", proc.finish),
        ]
        outer: cf.Future[CaseResult] = cf.Future()
        outer.set_running_or_notify_cancel()
        if self.on_stage:
            self.on_stage(task.case_id, "queued")

        def run_step(index: int, value) -> None:
            pool, stage, fn = steps[index]

            def call():
                if self.on_stage:
                    self.on_stage(task.case_id, stage)
                return fn(value)

            try:
                fut = pool.submit(call)
            except RuntimeError as err:  # pool shut down (interrupted)
                outer.set_exception(err)
                return

            def done(f: cf.Future) -> None:
                if f.cancelled():
                    outer.cancel()
                elif f.exception() is not None:
                    outer.set_exception(f.exception())
                elif index + 1 == len(steps):
                    outer.set_result(f.result())
                else:
                    run_step(index + 1, f.result())

            fut.add_done_callback(done)

        run_step(0, task)
        return outer


def _on_cpu(device: str) -> bool:
    """Whether ``device`` resolves to the CPU (without asking CUDA where no GPU driver is present)."""
    if surely_cpu(device):
        return True
    return resolve_device(device) == "cpu"


def local_streams(device: str, workers: int | None) -> int:
    """Inference streams for ``--scheduler local``: ``workers``, or for ``auto`` two worker processes
    on a CPU with two or more cores (one GPU, or one core: one stream).

    Two processes with half the cores each beat one process with all of them on the 2-core
    development machine: one's single-threaded reading, resampling and writing overlaps the other's
    network (benchmarks/README.md, "Cohort throughput"). More streams cost a model and a case in
    memory each, for little more overlap.
    """
    if workers is not None:
        return workers
    return 2 if (os.cpu_count() or 1) >= 2 and _on_cpu(device) else 1


def parse_scheduler(scheduler: str) -> tuple[str, str | int | None]:
    """``local`` | ``dask://HOST:PORT`` (also ``tcp://``) | ``local-cluster:N`` -> ``(kind, arg)``."""
    s = (scheduler or "local").strip()
    if s == "local":
        return "local", None
    if s.startswith("local-cluster"):
        _, _, n = s.partition(":")
        try:
            count = int(n) if n else 2
        except ValueError:
            count = 0
        if count < 1:
            raise MedsegError(f"bad --scheduler {scheduler!r}: expected local-cluster:N with N >= 1")
        return "local-cluster", count
    for prefix in ("dask://", "tcp://", "tls://"):
        if s.startswith(prefix):
            rest = s[len(prefix) :]
            if not rest or ":" not in rest:
                raise MedsegError(f"bad --scheduler {scheduler!r}: expected dask://HOST:PORT")
            return "dask", ("tcp://" if prefix == "dask://" else prefix) + rest
    raise MedsegError(f"unknown --scheduler {scheduler!r} (expected local, dask://HOST:PORT or local-cluster:N)")


def make_executor(
    scheduler: str, settings: CaseSettings, workers: int | None = None, on_stage: StageCallback | None = None
) -> CaseExecutor:
    """The backend for ``--scheduler``; Dask is imported only when asked for."""
    kind, arg = parse_scheduler(scheduler)
    if kind == "local":
        n = local_streams(settings.device, workers)
        if n > 1 and _on_cpu(settings.device):
            return ProcessStreamsExecutor(settings, workers=n, on_stage=on_stage)
        return LocalPipelineExecutor(settings, workers=workers, on_stage=on_stage)
    try:
        from medseg.batch.dask_backend import DaskExecutor
    except ImportError:
        raise MedsegError(f"--scheduler {scheduler} needs dask.distributed: {install_extra('dask')}") from None
    if kind == "local-cluster":
        return DaskExecutor(settings, n_workers=int(arg), on_stage=on_stage)
    return DaskExecutor(settings, address=str(arg), on_stage=on_stage)
