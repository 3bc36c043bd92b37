"""The SQLite ledger: schema, state transitions, transactions, read-only access."""

from __future__ import annotations

import sqlite3

import pytest

from medseg.batch.ledger import CohortLedger
from medseg.errors import MedsegError


def _done(ledger, case_id, **extra):
    fields = dict(
        input_size=10,
        input_mtime_ns=123,
        input_sha256="ab" * 32,
        outputs={"labels": {"path": "x_seg.nii.gz", "sha256": "cd" * 32, "size": 5}},
        plan={"device": "cpu"},
        stats=[{"label": 1, "volume_ml": 2.5}],
        timings={"inference": 0.5},
        settings_key="k",
        worker="host:1",
        seconds=1.5,
    )
    fields.update(extra)
    ledger.mark_done(case_id, **fields)


def test_a_case_goes_pending_running_done_and_keeps_everything(tmp_path):
    with CohortLedger(tmp_path / "l.sqlite") as ledger:
        run = ledger.start_run(["medseg", "batch"], {"model": "m"})
        ledger.ensure_pending("a", "/in/a.nii")
        assert ledger.get("a").status == "pending"
        ledger.mark_running("a", "/in/a.nii", run)
        rec = ledger.get("a")
        assert (rec.status, rec.attempts, rec.run_id) == ("running", 1, run)
        assert rec.started_at is not None and rec.finished_at is None
        _done(ledger, "a")
        rec = ledger.get("a")
        assert rec.status == "done" and rec.error is None
        assert rec.outputs["labels"]["sha256"] == "cd" * 32
        assert rec.stats == [{"label": 1, "volume_ml": 2.5}] and rec.plan == {"device": "cpu"}
        assert rec.finished_at >= rec.started_at
        ledger.finish_run(run, 1, 0, 0)
        assert ledger.runs()[0]["done"] == 1
        assert ledger.counts() == {"done": 1}


def test_a_failure_keeps_its_reason_and_drops_outputs_and_a_retry_counts_attempts(tmp_path):
    with CohortLedger(tmp_path / "l.sqlite") as ledger:
        ledger.mark_running("a", "/in/a.nii", 1)
        _done(ledger, "a")
        ledger.mark_running("a", "/in/a.nii", 2)
        ledger.mark_failed("a", "a.nii: truncated", input_size=3, input_mtime_ns=4, input_sha256="ef" * 32)
        rec = ledger.get("a")
        assert (rec.status, rec.error, rec.attempts, rec.input_size) == ("failed", "a.nii: truncated", 2, 3)
        assert rec.outputs == {} and rec.stats == []


def test_ledger_is_wal_and_a_failed_transaction_changes_nothing(tmp_path):
    path = tmp_path / "l.sqlite"
    with CohortLedger(path) as ledger:
        ledger.ensure_pending("a", "/a")
        with pytest.raises(RuntimeError), ledger.transaction() as db:
            db.execute("UPDATE cases SET status = 'done' WHERE case_id = 'a'")
            raise RuntimeError("crash mid-transaction")
        assert ledger.get("a").status == "pending"
        assert ledger._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        with pytest.raises(sqlite3.IntegrityError):
            with ledger.transaction() as db:
                db.execute("UPDATE cases SET status = 'finished' WHERE case_id = 'a'")


def test_read_only_ledger_reads_and_refuses_writes_and_missing_files(tmp_path):
    path = tmp_path / "l.sqlite"
    with CohortLedger(path) as ledger:
        ledger.ensure_pending("a", "/a")
    with CohortLedger(path, readonly=True) as ro:
        assert [r.case_id for r in ro.records()] == ["a"]
        with pytest.raises(sqlite3.OperationalError):
            ro.ensure_pending("b", "/b")
    with pytest.raises(MedsegError, match="no batch ledger"):
        CohortLedger(tmp_path / "missing.sqlite", readonly=True)


def test_a_file_that_is_not_a_ledger_is_a_one_line_error(tmp_path):
    bad = tmp_path / "l.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(MedsegError, match="not a usable batch ledger"):
        CohortLedger(bad)
