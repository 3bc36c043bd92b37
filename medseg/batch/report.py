"""What a batch shows while it runs (rich progress with per-case status and ETA, or plain lines)
and what ``medseg batch --status`` prints."""

from __future__ import annotations

import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from medseg.batch.case import CaseResult
from medseg.batch.ledger import CohortLedger
from medseg.batch.runner import NullReporter, RunLock, ledger_files
from medseg.errors import MedsegError


class PlainReporter(NullReporter):
    """One line per finished case on stderr (logs, CI, SLURM output files)."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self._n = 0
        self._to_run = 0
        self._t0 = time.perf_counter()

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def start(self, total: int, to_run: int, skipped: int, failed_kept: int) -> None:
        self._to_run, self._t0 = to_run, time.perf_counter()
        kept = f", {failed_kept} failed earlier (kept)" if failed_kept else ""
        self._print(f"batch: {total} case(s), {to_run} to run, {skipped} already done{kept}")

    def note(self, text: str) -> None:
        self._print(f"batch: {text}")

    def finished(self, case_id: str, result: CaseResult) -> None:
        self._n += 1
        elapsed = time.perf_counter() - self._t0
        eta = elapsed / self._n * (self._to_run - self._n)
        head = f"[{self._n}/{self._to_run}]"
        if result.ok:
            self._print(f"{head} done {case_id} ({result.seconds:.1f}s) eta {_hms(eta)}")
        else:
            self._print(f"{head} FAILED {case_id}: {result.error}")


class RichReporter(NullReporter):
    """A bar with done/total, elapsed and ETA, one live line per case in flight, and a line per result."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._lock = threading.Lock()
        self._cases: dict[str, int] = {}
        self._main = None

    def start(self, total: int, to_run: int, skipped: int, failed_kept: int) -> None:
        kept = f", {failed_kept} failed earlier (kept)" if failed_kept else ""
        self.console.print(f"batch: {total} case(s), {to_run} to run, {skipped} already done{kept}")
        self.progress.start()
        self._main = self.progress.add_task("cases", total=max(to_run, 1) if to_run else 0)

    def note(self, text: str) -> None:
        self.console.print(f"batch: {text}")

    def stage(self, case_id: str, stage: str) -> None:
        with self._lock:
            task = self._cases.get(case_id)
            label = f"  {case_id}: {stage}"
            if task is None:
                self._cases[case_id] = self.progress.add_task(label, total=None, start=False)
            else:
                self.progress.update(task, description=label)

    def finished(self, case_id: str, result: CaseResult) -> None:
        with self._lock:
            task = self._cases.pop(case_id, None)
            if task is not None:
                self.progress.remove_task(task)
        if result.ok:
            self.progress.console.print(f"[green]done[/] {case_id} ({result.seconds:.1f}s)")
        else:
            self.progress.console.print(f"[red]FAILED[/] {case_id}: {result.error}", markup=True, highlight=False)
        self.progress.advance(self._main)

    def close(self) -> None:
        self.progress.stop()


def make_reporter(quiet: bool = False):
    if quiet:
        return NullReporter()
    return RichReporter() if sys.stderr.isatty() else PlainReporter()


def _hms(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def status_text(out_dir: str | Path, max_failures: int = 50) -> str:
    """The ledger summary of every part found in ``out_dir`` (``medseg batch --status``)."""
    out_dir = Path(out_dir)
    files = ledger_files(out_dir)
    if not files:
        raise MedsegError("no batch ledger (medseg_batch*.sqlite) in this folder", out_dir)
    lines = []
    totals: dict[str, int] = {}
    for path in files:
        active = RunLock.is_held(path.with_suffix(".lock"))
        with CohortLedger(path, readonly=True) as ledger:
            counts = ledger.counts()
            runs = ledger.runs()
            failed = ledger.records("failed")
            running = ledger.records("running")
            done = ledger.records("done")
        for k, v in counts.items():
            totals[k] = totals.get(k, 0) + v
        state = "running now" if active else "not running"
        lines.append(f"{path.name} ({state})")
        lines.append(
            "  "
            + ", ".join(f"{counts.get(s, 0)} {s}" for s in ("done", "failed", "running", "pending"))
            + f" of {sum(counts.values())} case(s)"
        )
        if runs:
            last = runs[-1]
            finished = _when(last["finished_at"]) if last["finished_at"] else ("in progress" if active else "killed")
            lines.append(f"  last run: started {_when(last['started_at'])}, finished {finished} ({len(runs)} run(s))")
        secs = [r.seconds for r in done if r.seconds]
        if secs:
            lines.append(f"  mean {sum(secs) / len(secs):.1f}s per case over {len(secs)} done case(s)")
        if running:
            word = "in flight" if active else "interrupted (will be redone)"
            lines.append(f"  {len(running)} {word}: " + ", ".join(r.case_id for r in running[:10]))
        for rec in failed[:max_failures]:
            lines.append(f"  failed {rec.case_id}: {rec.error}")
        if len(failed) > max_failures:
            lines.append(f"  ... and {len(failed) - max_failures} more failed")
    if len(files) > 1:
        lines.append("all parts: " + ", ".join(f"{totals.get(s, 0)} {s}" for s in ("done", "failed", "running")))
    return "\n".join(lines)
