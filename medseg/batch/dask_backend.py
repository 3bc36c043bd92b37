"""Cases on a Dask cluster: the model is loaded once per worker, the client keeps the ledger.

- :class:`SegmenterPlugin` is a ``WorkerPlugin``: every worker (and every replacement worker the
  nanny or dask-jobqueue starts) loads the model in ``setup`` and keeps it for all its cases.
- A case needing CUDA asks for the worker resource ``GPU=1``, so start GPU workers with
  ``dask worker ... --resources GPU=1`` (one per GPU).
- Workers write outputs atomically into the shared output folder; only the client writes the ledger.
- A worker that dies mid-case (killed, out of memory) loses the task and the scheduler reruns it on
  another worker; after ``distributed.scheduler.allowed-failures`` deaths (default 3) the case is
  recorded as failed. An error inside a case (a corrupt scan, an unexpected exception) is that
  case's failed result, as in every other executor (:meth:`CaseProcessor.run`).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import uuid

import torch
from distributed import Client, LocalCluster, WorkerPlugin, get_worker
from distributed.scheduler import KilledWorker

from medseg.batch.case import CaseProcessor, CaseResult, CaseSettings, CaseTask, failed_result
from medseg.errors import MedsegError, ModelError, describe_error

PLUGIN_NAME = "medseg-segmenter"


class SegmenterPlugin(WorkerPlugin):
    """Loads the model once when a worker starts; cases on that worker share it."""

    name = PLUGIN_NAME

    def __init__(self, settings: CaseSettings, torch_threads: int | None = None) -> None:
        self.settings = settings
        self.torch_threads = torch_threads
        self.processor: CaseProcessor | None = None
        self.error: str | None = None

    def setup(self, worker) -> None:
        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        try:
            self.processor = CaseProcessor.load(self.settings)
        except Exception as err:  # noqa: BLE001 - reported with each case this worker is given
            self.error = describe_error(err)

    def teardown(self, worker) -> None:
        self.processor = None


def run_case_on_worker(task: CaseTask) -> CaseResult:
    """The Dask task: one whole case with the worker's loaded model."""
    plugin = get_worker().plugins.get(PLUGIN_NAME)
    if plugin is None or plugin.processor is None:
        reason = plugin.error if plugin is not None and plugin.error else "the worker has no medseg model loaded"
        return failed_result(task, ModelError(reason))
    return plugin.processor.run(task)


class DaskExecutor:
    """Runs cases on ``address`` (an existing scheduler) or on a LocalCluster of ``n_workers``.

    Args:
        settings: model, device and output options (the model path must be visible to workers).
        address: scheduler address, e.g. ``tcp://10.0.0.5:8786``.
        n_workers: start a LocalCluster with this many single-threaded worker processes instead.
        retries: reruns of a task that raised outside the case (a case's own errors are its result).
        client: an existing ``distributed.Client`` (tests); the plugin is registered on it.
    """

    def __init__(
        self,
        settings: CaseSettings,
        address: str | None = None,
        n_workers: int | None = None,
        retries: int = 1,
        client: Client | None = None,
        on_stage=None,
    ) -> None:
        self.settings = settings
        self.address = address
        self.n_workers = n_workers
        self.retries = retries
        self.on_stage = on_stage
        self.client = client
        self._own_client = client is None
        self._cluster: LocalCluster | None = None
        self._futures: dict[str, object] = {}
        self.gpu = settings.device.lower().startswith("cuda")
        where = address or (f"LocalCluster of {n_workers} worker(s)" if n_workers else "a given client")
        self.description = f"dask on {where}" + (" (GPU=1 per case)" if self.gpu else "")

    def __enter__(self) -> DaskExecutor:
        try:
            self._connect()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _connect(self) -> None:
        if self.client is None:
            if self.address:
                try:
                    self.client = Client(self.address, timeout="30s")
                except OSError as err:
                    raise MedsegError(f"cannot reach the Dask scheduler at {self.address} ({err})") from None
            else:
                n = self.n_workers or 2
                self._cluster = LocalCluster(
                    n_workers=n,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address="127.0.0.1:0",
                    silence_logs=logging.ERROR,
                    resources={"GPU": 1} if self.gpu else None,
                )
                self.client = Client(self._cluster)
                if self._cluster.dashboard_link:
                    self.description += f", dashboard {self._cluster.dashboard_link}"
        if self.gpu:
            workers = self.client.scheduler_info().get("workers", {})
            if workers and not any(w.get("resources", {}).get("GPU") for w in workers.values()):
                raise MedsegError(
                    "--device cuda asks each case for the Dask worker resource GPU=1, but no worker offers it; "
                    "start GPU workers with `dask worker SCHEDULER --resources GPU=1`"
                )
        threads = None
        if self._cluster is not None:
            threads = max(1, (os.cpu_count() or 1) // max(1, self.n_workers or 1))
        self.client.register_plugin(SegmenterPlugin(self.settings, threads), name=PLUGIN_NAME)

    def __exit__(self, *exc) -> None:
        for fut in self._futures.values():
            fut.release()
        self._futures.clear()
        if self._own_client and self.client is not None:
            self.client.close()
        if self._cluster is not None:
            self._cluster.close()

    def capacity(self) -> int:
        threads = sum(self.client.nthreads().values()) if self.client is not None else 1
        return max(2, 2 * threads)

    def submit(self, task: CaseTask) -> cf.Future[CaseResult]:
        key = f"medseg-case-{task.case_id}-{uuid.uuid4().hex[:8]}"
        fut = self.client.submit(
            run_case_on_worker,
            task,
            key=key,
            pure=False,
            retries=self.retries,
            resources={"GPU": 1} if self.gpu else None,
        )
        self._futures[key] = fut
        outer: cf.Future[CaseResult] = cf.Future()
        outer.set_running_or_notify_cancel()
        if self.on_stage:
            self.on_stage(task.case_id, "submitted")

        def done(f) -> None:
            self._futures.pop(key, None)
            try:
                outer.set_result(f.result())
            except BaseException as err:  # noqa: BLE001 - handed to the runner, which records it
                outer.set_exception(_explain(err))

        fut.add_done_callback(done)
        return outer


def _explain(err: BaseException) -> BaseException:
    """KilledWorker in words a user understands."""
    if isinstance(err, KilledWorker):
        return MedsegError(
            "Dask workers died repeatedly while running this case (out of memory? a crash?); rerun with --retry-failed"
        )
    return err
