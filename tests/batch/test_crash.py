"""Crash safety: SIGKILL `medseg batch` at many points (during writes, between an output's rename
and the ledger commit, during model load, at random moments), rerun it each time, and check that
every case ends done exactly once, with complete outputs that the ledger agrees with."""

from __future__ import annotations

import csv
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.batch import CohortLedger
from medseg.batch.runner import ledger_path
from medseg.io.atomic import TMP_MARKER
from medseg.io.atomic import sha256_of as file_sha256
from tests.batch.conftest import make_cohort

ROOT = Path(__file__).resolve().parents[2]

# Runs the real CLI; CRASH_AT=point:n makes the process SIGKILL itself at the n-th time it reaches
# `point`. The hooks live here, in the test, not in medseg.
CRASHING_CLI = r"""
import os, signal, sys
point, n = os.environ.get("CRASH_AT", "none:0").split(":")
n = int(n)
hits = {"count": 0}

def bomb():
    hits["count"] += 1
    if hits["count"] == n:
        os.kill(os.getpid(), signal.SIGKILL)

def before(obj, name):
    real = getattr(obj, name)
    def wrapped(*a, **k):
        bomb()
        return real(*a, **k)
    setattr(obj, name, wrapped)

def after(obj, name):
    real = getattr(obj, name)
    def wrapped(*a, **k):
        out = real(*a, **k)
        bomb()
        return out
    setattr(obj, name, wrapped)

import medseg.batch.runner as runner
from medseg.batch.ledger import CohortLedger
if point == "fsync":          # a temp file is written but not yet flushed/renamed
    before(os, "fsync")
elif point == "replace":      # a complete temp file, just before its rename
    before(os, "replace")
elif point == "before_done":  # every output renamed into place, ledger not yet committed
    before(CohortLedger, "mark_done")
elif point == "after_done":
    after(CohortLedger, "mark_done")
elif point == "after_running":
    after(CohortLedger, "mark_running")
elif point == "after_start_run":
    after(CohortLedger, "start_run")
elif point == "statistics":   # all cases finished, before the cohort table
    before(runner, "write_statistics")

from medseg.cli import main
main()
"""

N_GOOD = 10


def _reader(stream, lines: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        lines.put(line)
    lines.put(None)


def _run_batch(script, cohort, out, model, crash_at=None, kill_after=None, rng=None, timeout=120.0):
    """Run the CLI once; ``kill_after=(prefix, max_delay)`` SIGKILLs it from outside after a line
    starting with ``prefix`` appears on stderr plus a random delay. Returns the exit status."""
    env = {**os.environ, "CRASH_AT": crash_at or "none:0", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(script), "batch", str(cohort), "-o", str(out), "--model", str(model)]
    # one process: the hooks above patch this process, where --workers 1 reads, infers and writes
    # (worker processes are killed with their batch in tests/batch/test_process_streams.py)
    cmd += ["--device", "cpu", "--stats", "--workers", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stderr, lines), daemon=True).start()
    deadline = time.monotonic() + timeout
    try:
        if kill_after is not None:
            prefix, max_delay = kill_after
            while time.monotonic() < deadline:
                try:
                    line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if line is None:
                    break
                if line.startswith(prefix):
                    time.sleep(rng.uniform(0.0, max_delay))
                    proc.send_signal(signal.SIGKILL)
                    break
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        if rc not in (-signal.SIGKILL, 0, 3):  # show why
            time.sleep(0.2)
            rest = []
            while not lines.empty():
                rest.append(lines.get() or "")
            raise AssertionError(f"exit status {rc}: {''.join(rest)[-2000:]}")
        return rc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        proc.stdout.close()


@pytest.mark.slow
def test_sigkill_at_many_points_then_resume_leaves_every_case_done_once(phantom_bank, batch_model, tmp_path):
    rng = random.Random(20261122)
    cohort = make_cohort(phantom_bank, tmp_path / "cohort", N_GOOD, corrupt=("broken",))
    out = tmp_path / "out"
    script = tmp_path / "crashing_cli.py"
    script.write_text(CRASHING_CLI)

    plan = [
        ("fsync:1", None),  # during the very first write
        ("after_start_run:1", None),
        ("after_running:2", None),
        ("before_done:1", None),  # outputs complete, ledger not told
        ("replace:2", None),  # a complete temp file not yet renamed
        ("fsync:7", None),  # mid-write of a later case
        (None, ("batch:", 0.3)),  # at random during start-up (the model loads in ~0.1 s, then cases run)
        ("after_done:2", None),
        (None, ("[1/", 0.4)),  # at random while cases are in flight
        ("replace:4", None),  # the sidecar of a case, just before its rename
        (None, ("[2/", 0.4)),
        ("change-input", None),  # a scan is replaced between two crashes
        ("before_done:2", None),
        ("statistics:1", None),  # everything processed, cohort table not yet written
    ]
    killed = []
    for crash_at, kill_after in plan:
        if crash_at == "change-input":
            shutil.copy(phantom_bank / "p9.nii.gz", cohort / "case3.nii.gz")
            continue
        rc = _run_batch(script, cohort, out, batch_model, crash_at, kill_after, rng)
        assert rc in (-signal.SIGKILL, 3), f"unexpected exit status {rc} at {crash_at or kill_after}"
        if rc == -signal.SIGKILL:
            killed.append(crash_at or kill_after[0])
    assert len(killed) >= 10, f"only {len(killed)} runs were killed: {killed}"

    rc = _run_batch(script, cohort, out, batch_model)
    assert rc == 3  # the corrupt scan is failed, the exit status says so

    with CohortLedger(ledger_path(out), readonly=True) as ledger:
        records = {r.case_id: r for r in ledger.records()}
    assert sorted(records) == ["broken"] + [f"case{i}" for i in range(N_GOOD)]
    assert records["broken"].status == "failed" and "truncated or corrupt" in records["broken"].error
    expected_files = {
        out / name for name in ("medseg_batch.sqlite", "medseg_batch.lock", "statistics.csv", "batch_summary.json")
    }
    for i in range(N_GOOD):
        rec = records[f"case{i}"]
        src = cohort / f"case{i}.nii.gz"
        assert rec.status == "done", (rec.case_id, rec.status, rec.error)
        assert rec.input_sha256 == file_sha256(src)  # case3 was redone on its new content
        assert set(rec.outputs) == {"labels", "stats_csv", "stats_json", "sidecar"}
        for out_info in rec.outputs.values():
            path = Path(out_info["path"])
            assert file_sha256(path) == out_info["sha256"] and path.stat().st_size == out_info["size"]
            expected_files.add(path)
        labels = nib.load(str(out / f"case{i}_seg.nii.gz"))
        data = np.asanyarray(labels.dataobj)  # the whole compressed stream decodes
        assert labels.shape == nib.load(str(src)).shape and data.max() <= 2
        sidecar = json.loads((out / f"case{i}_seg.json").read_text())
        assert sidecar["input"]["sha256"] == rec.input_sha256
        assert len(json.loads((out / f"case{i}_seg_stats.json").read_text())) == 2
    found = {p for p in out.rglob("*") if p.is_file()}
    assert not [p for p in found if TMP_MARKER in p.name]
    assert found - {out / "medseg_batch.sqlite-wal", out / "medseg_batch.sqlite-shm"} == expected_files
    rows = list(csv.DictReader(open(out / "statistics.csv")))
    assert sorted({r["case_id"] for r in rows}) == [f"case{i}" for i in range(N_GOOD)] and len(rows) == 2 * N_GOOD

    # the ledger agrees with the files: one more run has nothing to redo
    rc = _run_batch(script, cohort, out, batch_model)
    summary = json.loads((out / "batch_summary.json").read_text())
    assert rc == 3 and (summary["done"], summary["skipped"], summary["redone"]) == (0, N_GOOD, {})
