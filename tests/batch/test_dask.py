"""Scale-out on dask.distributed: a LocalCluster of 2 workers, one SIGKILLed mid-run."""

from __future__ import annotations

import os
import signal

import pytest

from medseg.batch import CaseSettings, CohortLedger, discover_cases, run_batch
from medseg.batch.runner import NullReporter, ledger_path
from medseg.io.atomic import sha256_of as file_sha256

pytest.importorskip("distributed")


class KillAWorkerOnce(NullReporter):
    """After the first result, SIGKILL a worker that has a case assigned (running or queued on it)."""

    def __init__(self) -> None:
        self.executor = None
        self.killed: dict[str, object] = {}

    def finished(self, case_id, result) -> None:
        if self.killed or self.executor is None:
            return
        client = self.executor.client
        for _ in range(200):  # bounded: wait until some worker holds a case
            busy = {w: keys for w, keys in client.processing().items() if any("medseg-case-" in k for k in keys)}
            if busy:
                break
            import time

            time.sleep(0.05)
        assert busy, "no worker was running a case when one was to be killed"
        address, keys = sorted(busy.items())[0]
        pid = client.run(os.getpid, workers=[address])[address]
        self.killed = {"address": address, "pid": pid, "keys": list(keys)}
        os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(300)
@pytest.mark.slow
def test_local_cluster_of_two_survives_a_killed_worker(cohort_factory, batch_model, tmp_path):
    from medseg.batch.dask_backend import DaskExecutor

    cohort = cohort_factory(8, corrupt=("broken",))
    out = tmp_path / "out"
    settings = CaseSettings(model=str(batch_model), device="cpu", stats=True)
    reporter = KillAWorkerOnce()
    executor = DaskExecutor(settings, n_workers=2)  # what --scheduler local-cluster:2 builds
    reporter.executor = executor
    summary = run_batch(discover_cases(cohort), out, settings, executor, reporter=reporter)

    assert reporter.killed, "the test did not kill a worker"
    assert (summary.done, summary.failed, summary.exit_code) == (8, 1, 3)
    with CohortLedger(ledger_path(out), readonly=True) as ledger:
        records = {r.case_id: r for r in ledger.records()}
    assert records["broken"].status == "failed" and "truncated or corrupt" in records["broken"].error
    lost = [k.split("medseg-case-", 1)[1].rsplit("-", 1)[0] for k in reporter.killed["keys"]]
    assert lost
    for case_id in (f"case{i}" for i in range(8)):
        rec = records[case_id]
        assert rec.status == "done" and rec.attempts == 1, (case_id, rec.error)
        for info in rec.outputs.values():
            assert file_sha256(info["path"]) == info["sha256"]
    for case_id in lost:  # the killed worker's cases were redone by another worker process
        assert records[case_id].worker.rsplit(":", 1)[1] != str(reporter.killed["pid"])
    assert not list(out.rglob("*.medseg-tmp-*"))
