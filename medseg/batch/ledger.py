"""The cohort ledger: an SQLite database beside the outputs that says what is done.

One row per case records the input's fingerprint (size, mtime, sha256), the status
(``pending`` -> ``running`` -> ``done`` | ``failed``), start/end times, the one-line error, the
outputs with their sha256 and size, the plan, and the per-label statistics that feed the cohort
table. Every change is one transaction; the database runs in WAL mode with ``synchronous=FULL``,
so a SIGKILL (or a power cut) at any point leaves either the old row or the new one.

The ledger is only ever written by the process that drives the batch (with Dask: the client);
workers never touch it.

Example:
    >>> with CohortLedger("out/medseg_batch.sqlite") as ledger:  # doctest: +SKIP
    ...     print(ledger.counts())
    {'done': 118, 'failed': 2}
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.errors import MedsegError

SCHEMA_VERSION = 1
STATUSES = ("pending", "running", "done", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id      INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at  REAL NOT NULL,
    finished_at REAL,
    argv        TEXT,
    settings    TEXT,
    done        INTEGER,
    skipped     INTEGER,
    failed      INTEGER
);
CREATE TABLE IF NOT EXISTS cases (
    case_id        TEXT PRIMARY KEY,
    input_path     TEXT NOT NULL,
    input_size     INTEGER,
    input_mtime_ns INTEGER,
    input_sha256   TEXT,
    status         TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
    attempts       INTEGER NOT NULL DEFAULT 0,
    run_id         INTEGER,
    started_at     REAL,
    finished_at    REAL,
    seconds        REAL,
    error          TEXT,
    worker         TEXT,
    settings_key   TEXT,
    outputs        TEXT,
    plan           TEXT,
    stats          TEXT,
    timings        TEXT
);
CREATE INDEX IF NOT EXISTS cases_status ON cases (status);
"""


@dataclass
class CaseRecord:
    """A ledger row. ``outputs`` maps kind -> ``{"path", "sha256", "size"}``."""

    case_id: str
    input_path: str
    status: str
    input_size: int | None = None
    input_mtime_ns: int | None = None
    input_sha256: str | None = None
    attempts: int = 0
    run_id: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    seconds: float | None = None
    error: str | None = None
    worker: str | None = None
    settings_key: str | None = None
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    plan: dict[str, Any] | None = None
    stats: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


_JSON_COLUMNS = {"outputs": dict, "plan": None, "stats": list, "timings": dict}


class CohortLedger:
    """SQLite ledger of one batch (one part of a split cohort).

    Args:
        path: the database file; created with its schema when missing.
        readonly: open an existing ledger for reading only (``medseg batch --status``).
    """

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly:
            if not self.path.is_file():
                raise MedsegError("no batch ledger here", self.path)
            uri = f"file:{self.path.resolve()}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        try:
            if not readonly:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.executescript(_SCHEMA)  # idempotent; executescript commits on its own
                with self.transaction() as db:
                    db.execute(
                        "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                    )
            version = self.meta("schema_version")
        except sqlite3.DatabaseError as err:
            self._db.close()
            raise MedsegError(f"not a usable batch ledger ({err})", self.path) from None
        if version is not None and int(version) > SCHEMA_VERSION:
            self._db.close()
            raise MedsegError(f"ledger schema {version} is newer than this medseg understands", self.path)

    # -- plumbing ---------------------------------------------------------------------------
    def __enter__(self) -> CohortLedger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` .. ``COMMIT``; rolled back on any exception."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def meta(self, key: str) -> str | None:
        try:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.OperationalError:
            return None
        return None if row is None else row["value"]

    @staticmethod
    def _record(row: sqlite3.Row) -> CaseRecord:
        data = dict(row)
        for name, empty in _JSON_COLUMNS.items():
            raw = data.get(name)
            data[name] = json.loads(raw) if raw else (empty() if empty else None)
        return CaseRecord(**data)

    # -- reading ----------------------------------------------------------------------------
    def get(self, case_id: str) -> CaseRecord | None:
        row = self._db.execute("SELECT * FROM cases WHERE case_id = ?", (case_id,)).fetchone()
        return None if row is None else self._record(row)

    def records(self, status: str | None = None) -> list[CaseRecord]:
        if status is None:
            rows = self._db.execute("SELECT * FROM cases ORDER BY case_id").fetchall()
        else:
            rows = self._db.execute("SELECT * FROM cases WHERE status = ? ORDER BY case_id", (status,)).fetchall()
        return [self._record(r) for r in rows]

    def counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT status, COUNT(*) AS n FROM cases GROUP BY status").fetchall()
        return {r["status"]: int(r["n"]) for r in rows}

    def runs(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._db.execute("SELECT * FROM runs ORDER BY run_id").fetchall()]

    # -- writing ----------------------------------------------------------------------------
    def start_run(self, argv: list[str], settings: dict[str, Any]) -> int:
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO runs (started_at, argv, settings) VALUES (?, ?, ?)",
                (time.time(), json.dumps(argv), json.dumps(settings, sort_keys=True)),
            )
            return int(cur.lastrowid)

    def finish_run(self, run_id: int, done: int, skipped: int, failed: int) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE runs SET finished_at = ?, done = ?, skipped = ?, failed = ? WHERE run_id = ?",
                (time.time(), done, skipped, failed, run_id),
            )

    def ensure_pending(self, case_id: str, input_path: str) -> None:
        """Add a case the ledger has not seen (as ``pending``); known cases are left as they are."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO cases (case_id, input_path, status) VALUES (?, ?, 'pending')",
                (case_id, input_path),
            )

    def update_fingerprint(self, case_id: str, size: int, mtime_ns: int) -> None:
        """Same content, new mtime (``touch``, a copy): remember it so the next check is cheap."""
        with self.transaction() as db:
            db.execute(
                "UPDATE cases SET input_size = ?, input_mtime_ns = ? WHERE case_id = ?", (size, mtime_ns, case_id)
            )

    def mark_running(self, case_id: str, input_path: str, run_id: int) -> None:
        """The case is about to be (re)done: it is no longer ``done`` from this commit on."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO cases (case_id, input_path, status) VALUES (?, ?, 'pending')",
                (case_id, input_path),
            )
            db.execute(
                "UPDATE cases SET status = 'running', input_path = ?, attempts = attempts + 1, run_id = ?, "
                "started_at = ?, finished_at = NULL, seconds = NULL, error = NULL WHERE case_id = ?",
                (input_path, run_id, time.time(), case_id),
            )

    def mark_done(
        self,
        case_id: str,
        *,
        input_size: int | None,
        input_mtime_ns: int | None,
        input_sha256: str | None,
        outputs: dict[str, dict[str, Any]],
        plan: dict[str, Any] | None,
        stats: list[dict[str, Any]],
        timings: dict[str, float],
        settings_key: str,
        worker: str | None,
        seconds: float | None,
    ) -> None:
        """Record a finished case. Call only once every output is renamed into place."""
        with self.transaction() as db:
            db.execute(
                "UPDATE cases SET status = 'done', finished_at = ?, seconds = ?, error = NULL, input_size = ?, "
                "input_mtime_ns = ?, input_sha256 = ?, outputs = ?, plan = ?, stats = ?, timings = ?, "
                "settings_key = ?, worker = ? WHERE case_id = ?",
                (
                    time.time(),
                    seconds,
                    input_size,
                    input_mtime_ns,
                    input_sha256,
                    json.dumps(outputs, sort_keys=True),
                    json.dumps(plan, sort_keys=True) if plan is not None else None,
                    json.dumps(stats),
                    json.dumps(timings, sort_keys=True),
                    settings_key,
                    worker,
                    case_id,
                ),
            )

    def mark_failed(
        self,
        case_id: str,
        error: str,
        *,
        input_size: int | None = None,
        input_mtime_ns: int | None = None,
        input_sha256: str | None = None,
        settings_key: str | None = None,
        worker: str | None = None,
    ) -> None:
        """Record a failure with its one-line reason (the fingerprint lets a fixed input be retried)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE cases SET status = 'failed', finished_at = ?, error = ?, input_size = ?, input_mtime_ns = ?, "
                "input_sha256 = ?, outputs = NULL, stats = NULL, settings_key = ?, worker = ? WHERE case_id = ?",
                (time.time(), error, input_size, input_mtime_ns, input_sha256, settings_key, worker, case_id),
            )
