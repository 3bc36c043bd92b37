"""Worker processes as inference streams (the CPU default): same labels as one process, a killed
worker is replaced without losing or failing innocent cases, a case that kills its worker is failed
alone, and the workers die with a SIGKILLed batch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.batch import CaseSettings, CohortLedger, LocalPipelineExecutor, make_executor, run_batch
from medseg.batch.cohort import discover_cases
from medseg.batch.process_streams import ProcessStreamsExecutor
from medseg.batch.runner import ledger_path
from medseg.io.atomic import TMP_MARKER

ROOT = Path(__file__).resolve().parents[2]


def _labels(out: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asanyarray(nib.load(str(p)).dataobj) for p in sorted(out.glob("*_seg.nii.gz"))}


def _records(out: Path):
    with CohortLedger(ledger_path(out), readonly=True) as ledger:
        return {r.case_id: r for r in ledger.records()}


def test_more_than_one_worker_on_a_cpu_are_processes(batch_model, monkeypatch):
    settings = CaseSettings(model=str(batch_model), device="cpu")
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    auto = make_executor("local", settings)  # auto on 2+ cores: two worker processes, half the cores each
    assert isinstance(auto, ProcessStreamsExecutor) and (auto.workers, auto.torch_threads) == (2, 1)
    assert isinstance(make_executor("local", settings, workers=1), LocalPipelineExecutor)
    assert isinstance(make_executor("local", settings, workers=3), ProcessStreamsExecutor)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert isinstance(make_executor("local", settings), LocalPipelineExecutor)  # one core: one process


def test_each_worker_plans_within_its_share_of_host_memory(cohort_factory, batch_model, tmp_path):
    cohort = cohort_factory(2)
    settings = CaseSettings(model=str(batch_model), device="cpu")
    executor = ProcessStreamsExecutor(settings, workers=2, host_share=64 << 20)  # less than torch alone
    summary = run_batch(discover_cases(cohort), tmp_path / "out", settings, executor)
    assert (summary.done, summary.failed) == (0, 2)
    for rec in _records(tmp_path / "out").values():
        assert "nothing fits the budget (host 64 MiB)" in rec.error and "the scan is " in rec.error, rec.error
        assert rec.error.endswith("that is this worker's share of host memory: rerun it with --workers 1")
    assert ProcessStreamsExecutor(settings, workers=2).host_share > 0  # default: half of what is free


def test_two_worker_processes_write_the_same_outputs_as_one_process(cohort_factory, batch_model, tmp_path):
    cohort = cohort_factory(5, corrupt=("broken",))
    settings = CaseSettings(model=str(batch_model), device="cpu", stats=True)
    stages: list[tuple[str, str]] = []
    with_procs = run_batch(
        discover_cases(cohort),
        tmp_path / "procs",
        settings,
        ProcessStreamsExecutor(settings, workers=2, on_stage=lambda c, s: stages.append((c, s))),
    )
    in_proc = run_batch(discover_cases(cohort), tmp_path / "one", settings, LocalPipelineExecutor(settings, workers=1))
    assert (with_procs.done, with_procs.failed, with_procs.exit_code) == (5, 1, 3)
    assert (in_proc.done, in_proc.failed) == (5, 1)
    a, b = _labels(tmp_path / "procs"), _labels(tmp_path / "one")
    assert sorted(a) == sorted(b) and len(a) == 5
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    recs = _records(tmp_path / "procs")
    assert "truncated or corrupt" in recs["broken"].error
    workers = {recs[f"case{i}"].worker for i in range(5)}
    assert len(workers) == 2 and all(str(os.getpid()) not in w for w in workers)  # both processes worked
    assert {s for _, s in stages} >= {"queued", "reading", "inference", "writing"}


def test_a_killed_worker_is_replaced_and_its_cases_are_redone(cohort_factory, batch_model, tmp_path):
    cohort = cohort_factory(6)
    settings = CaseSettings(model=str(batch_model), device="cpu")
    executor = ProcessStreamsExecutor(settings, workers=2)
    killed: list[int] = []

    def on_stage(case_id: str, stage: str) -> None:
        if stage == "inference" and not killed:
            pid = executor._pool[0].process.pid
            killed.append(pid)
            os.kill(pid, signal.SIGKILL)

    executor.on_stage = on_stage
    summary = run_batch(discover_cases(cohort), tmp_path / "out", settings, executor)
    assert killed and (summary.done, summary.failed) == (6, 0)
    recs = _records(tmp_path / "out")
    assert all(r.status == "done" for r in recs.values())
    assert all(f":{killed[0]}" not in r.worker for r in recs.values())  # nothing credited to the dead one
    assert len(_labels(tmp_path / "out")) == 6
    assert not [p for p in (tmp_path / "out").rglob("*") if TMP_MARKER in p.name]


def test_a_case_that_kills_its_worker_is_failed_alone(cohort_factory, batch_model, tmp_path):
    cohort = cohort_factory(5)
    settings = CaseSettings(model=str(batch_model), device="cpu")
    executor = ProcessStreamsExecutor(settings, workers=2)
    kills: list[int] = []

    def on_stage(case_id: str, stage: str) -> None:  # "case2" crashes whichever worker runs it
        if case_id == "case2" and stage == "inference":
            for w in executor._pool:
                if "case2" in w.inflight and w.process.is_alive():
                    kills.append(w.process.pid)
                    os.kill(w.process.pid, signal.SIGKILL)

    executor.on_stage = on_stage
    summary = run_batch(discover_cases(cohort), tmp_path / "out", settings, executor)
    assert len(kills) == 2
    assert (summary.done, summary.failed, summary.exit_code) == (4, 1, 3)
    recs = _records(tmp_path / "out")
    assert recs["case2"].status == "failed" and "stopped its batch worker process twice" in recs["case2"].error
    assert sorted(c for c, r in recs.items() if r.status == "done") == ["case0", "case1", "case3", "case4"]


def _descendants(pid: int) -> list[int]:
    """Children, grandchildren... (workers are forked by a forkserver, a child of the batch)."""
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    except FileNotFoundError:
        pytest.skip("pgrep not available")
    kids = [int(x) for x in out.split()]
    return kids + [d for k in kids for d in _descendants(k)]


@pytest.mark.slow
def test_workers_die_with_a_sigkilled_batch_and_a_rerun_completes(cohort_factory, batch_model, tmp_path):
    cohort = cohort_factory(6)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "medseg.cli", "batch", str(cohort), "-o", str(out), "--model", str(batch_model)]
    cmd += ["--device", "cpu", "--workers", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    workers: set[int] = set()
    while time.monotonic() < deadline:
        workers |= set(_descendants(proc.pid))
        if list(out.glob("*_seg.nii.gz")):  # the workers are writing: kill the batch now
            break
        time.sleep(0.05)
    workers |= set(_descendants(proc.pid))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert len(workers) >= 3  # the forkserver and two workers (and multiprocessing's resource tracker)
    time.sleep(1.5)  # PR_SET_PDEATHSIG is immediate; the parent-pid watchdog polls every 0.5 s
    alive = [w for w in workers if Path(f"/proc/{w}").exists() and "Z" not in Path(f"/proc/{w}/stat").read_text()]
    assert alive == [], f"worker processes outlived the batch: {alive}"

    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    recs = _records(out)
    assert sorted(recs) == [f"case{i}" for i in range(6)] and all(r.status == "done" for r in recs.values())
    assert len(_labels(out)) == 6
    assert not [p for p in out.rglob("*") if TMP_MARKER in p.name]


def test_the_forkserver_ends_without_interpreter_teardown(tmp_path):
    """The forkserver preloads ``medseg.batch.server_exit``: once the server is told to exit, it
    skips the rest of Python's shutdown (here an earlier atexit handler that would write a file),
    so a pipe reading the batch's output is not held open while torch and MONAI are torn down.
    The server is told by the environment marker ``worker_context`` starts it with (imported
    anywhere else, the module does nothing: tests/test_imports.py)."""
    from medseg.forkserver import PRELOAD, SERVER_MARKER

    assert PRELOAD[-1] == "medseg.batch.server_exit"
    marker = tmp_path / "teardown-ran"
    script = (
        "import atexit, pathlib, sys\n"
        f"atexit.register(pathlib.Path({str(marker)!r}).write_text, 'yes')\n"
        "import medseg.batch.server_exit\n"
        "sys.exit(0)\n"
    )
    env = {**os.environ, SERVER_MARKER: "1"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists()
