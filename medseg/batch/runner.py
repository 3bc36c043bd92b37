"""The batch runner: decide what to (re)do from the ledger, feed an executor, record results.

Resume rules (checked for every case, every run):

- **done**: skipped when the input is unchanged (same size and mtime, or else the same sha256),
  the settings are the same (model weights sha256, stats/preview/overlap), and every recorded
  output still exists with its recorded sha256. Anything else redoes the case, with the reason.
- **failed**: skipped unless ``--retry-failed``, or unless the input changed (a fixed scan is
  retried on its own).
- **running / pending** (a run was killed or interrupted): redone. Outputs that exist but are not
  recorded ``done`` are never trusted: the ledger records ``done`` only after every output,
  sidecar last, is renamed into place, so an unrecorded output can only come from an attempt that
  did not reach its commit; its outputs are removed and the case is redone (at most the cases that
  were in flight when the run died).

Stale ``.medseg-tmp-`` files from a killed run are removed at the start of the next one, and those
of a worker killed during this run once every worker has stopped (unless another part of the same
cohort is running on the folder right now).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import csv
import io
import json
import os
import shutil
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medseg.batch.case import CaseResult, CaseSettings, CaseTask, failed_result
from medseg.batch.cohort import Case, Fingerprint, content_sha256, stat_fingerprint
from medseg.batch.ledger import CaseRecord, CohortLedger
from medseg.errors import MedsegError
from medseg.inference.outputs import labels_name, output_paths
from medseg.io.atomic import TMP_MARKER, sha256_of, write_text_atomic
from medseg.models.registry import check_model_options, open_model

LEDGER_STEM = "medseg_batch"
STATISTICS_CSV = "statistics.csv"
STAT_COLUMNS = ("case_id", "label", "name", "voxels", "volume_ml", "mean_intensity", "std_intensity")


def part_suffix(num_parts: int = 1, part_id: int = 0) -> str:
    return "" if num_parts == 1 else f".part-{part_id}-of-{num_parts}"


def ledger_path(out_dir: str | Path, num_parts: int = 1, part_id: int = 0) -> Path:
    """One ledger per part: SQLite must not be shared by writers on different hosts."""
    return Path(out_dir) / f"{LEDGER_STEM}{part_suffix(num_parts, part_id)}.sqlite"


def ledger_files(out_dir: str | Path) -> list[Path]:
    return sorted(Path(out_dir).glob(f"{LEDGER_STEM}*.sqlite"))


def labels_path_for(out_dir: Path, case_id: str) -> Path:
    return out_dir / labels_name(case_id)


def case_output_for(out_dir: Path, case_id: str, settings: CaseSettings) -> Path:
    """The output a case's task names: its label NIfTI, or with ``--format dicom-seg`` its SEG file."""
    labels = labels_path_for(out_dir, case_id)
    return (
        labels.with_name(labels.name.removesuffix(".nii.gz") + ".dcm")
        if settings.output_format == "dicom-seg"
        else labels
    )


def settings_key(settings: CaseSettings) -> str:
    """What makes two runs' outputs interchangeable: the model (its weights' sha256) and the options."""
    model = open_model(settings.model, options=settings.model_options or None)
    check_model_options(model, overlap=settings.overlap)
    key = {
        "model": model.name,
        "version": model.version,
        "weights_sha256": model.weights_digest(),
        "stats": settings.stats,
        "preview": settings.preview,
        "overlap": settings.overlap,
        "read": settings.read.to_dict(),
    }
    if settings.output_format != "nifti" or settings.split_masks:  # other files per case (older keys stay valid)
        key["outputs"] = {"format": settings.output_format, "split_masks": settings.split_masks}
    if settings.model_options:
        key["model_options"] = settings.model_options
    return json.dumps(key, sort_keys=True)


# -- locking ---------------------------------------------------------------------------------
class RunLock:
    """An exclusive lock on one ledger: two runners on the same ledger would redo each other's cases."""

    def __init__(self, ledger_file: Path) -> None:
        self.path = ledger_file.with_suffix(".lock")
        self._fh = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a+")  # noqa: SIM115 - held for the whole run
        try:
            import fcntl

            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # no fcntl (Windows): run unlocked
            pass
        except OSError:
            self._fh.seek(0)
            holder = self._fh.read().strip() or "another process"
            self._fh.close()
            raise MedsegError(f"another medseg batch ({holder}) is running on this ledger", self.path) from None
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(f"pid {os.getpid()}")
        self._fh.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            self._fh.close()  # closing drops the flock

    @staticmethod
    def is_held(lock_file: Path) -> bool:
        try:
            import fcntl
        except ImportError:
            return False
        try:
            with open(lock_file, "a+") as fh:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    return True
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        except OSError:
            return False
        return False


def other_runs_active(out_dir: Path, mine: Path) -> bool:
    return any(p != mine and RunLock.is_held(p) for p in out_dir.glob(f"{LEDGER_STEM}*.lock"))


def clean_stale_temp_files(out_dir: Path) -> list[Path]:
    """Remove ``.medseg-tmp-`` files under ``out_dir``: leftovers of a killed write."""
    removed = []
    for folder, _dirs, files in os.walk(out_dir):
        for name in files:
            if TMP_MARKER in name:
                p = Path(folder) / name
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed.append(p)
    return removed


# -- decisions -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    case: Case
    action: str  # "run", "skip" (done), "keep-failed"
    reason: str


def _input_state(case: Case, rec: CaseRecord, ledger: CohortLedger) -> str:
    """``same``, ``changed`` or ``missing``; a touched but identical file counts as the same."""
    fp = stat_fingerprint(case.input_path)
    if fp is None:
        return "missing"
    if rec.input_size == fp.size and rec.input_mtime_ns == fp.mtime_ns:
        return "same"
    if rec.input_sha256 and rec.input_size == fp.size and content_sha256(case.input_path) == rec.input_sha256:
        ledger.update_fingerprint(rec.case_id, fp.size, fp.mtime_ns)
        return "same"
    return "changed"


def _outputs_intact(rec: CaseRecord) -> str | None:
    """None when every recorded output is there with its recorded hash, else what is wrong."""
    if "sidecar" not in rec.outputs or not ("labels" in rec.outputs or "dicom_seg" in rec.outputs):
        return "outputs not recorded"
    for kind, out in rec.outputs.items():
        p = Path(out["path"])
        try:
            if p.stat().st_size != out["size"]:
                return f"{kind} output changed size"
        except OSError:
            return f"{kind} output is missing"
        if sha256_of(p) != out["sha256"]:
            return f"{kind} output was modified"
    return None


def decide(case: Case, rec: CaseRecord | None, key: str, ledger: CohortLedger, retry_failed: bool) -> Decision:
    """What to do with ``case`` given its ledger row (see the module docstring for the rules)."""
    if rec is None:
        return Decision(case, "run", "new")
    if rec.status in ("running", "pending"):
        return Decision(case, "run", "interrupted earlier" if rec.status == "running" else "not started yet")
    state = _input_state(case, rec, ledger)
    if rec.status == "failed":
        if state == "changed":
            return Decision(case, "run", "input changed since it failed")
        if retry_failed:
            return Decision(case, "run", "retrying a failed case")
        return Decision(case, "keep-failed", rec.error or "failed")
    if state == "changed":
        return Decision(case, "run", "input changed")
    if rec.settings_key != key:
        return Decision(case, "run", "model or output options changed")
    problem = _outputs_intact(rec)
    if problem:
        return Decision(case, "run", problem)
    return Decision(case, "skip", "done")


# -- results ---------------------------------------------------------------------------------
@dataclass
class BatchSummary:
    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    failed_earlier: int = 0
    redone: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    out_dir: str = ""
    ledger: str = ""
    executor: str = ""
    stale_temp_files_removed: int = 0

    @property
    def cases_per_hour(self) -> float:
        return 3600.0 * self.done / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """0 when every case is done, 3 when some are failed (now or kept from earlier runs)."""
        return 3 if (self.failed or self.failed_earlier) else 0

    def lines(self) -> list[str]:
        earlier = ""
        if self.failed_earlier:
            earlier = f" ({self.failed_earlier} from earlier runs; --retry-failed retries them)"
        out = [
            f"{self.total} case(s): {self.done} done now, {self.skipped} skipped (already done), "
            f"{self.failed + self.failed_earlier} failed{earlier}"
        ]
        if self.done:
            out.append(f"{self.seconds:.1f}s, {self.cases_per_hour:.0f} cases/hour ({self.executor})")
        for case_id, error in self.failures[:20]:
            out.append(f"  failed {case_id}: {error}")
        if len(self.failures) > 20:
            out.append(f"  ... and {len(self.failures) - 20} more (medseg batch --status {self.out_dir})")
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cases_per_hour"] = round(self.cases_per_hour, 1)
        d["failures"] = [{"case_id": c, "error": e} for c, e in self.failures]
        return d


class NullReporter:
    def start(self, total: int, to_run: int, skipped: int, failed_kept: int) -> None: ...
    def stage(self, case_id: str, stage: str) -> None: ...
    def finished(self, case_id: str, result: CaseResult) -> None: ...
    def note(self, text: str) -> None: ...
    def close(self) -> None: ...


def statistics_rows(out_dir: Path) -> list[dict[str, Any]]:
    """Per case and label, from every ledger in ``out_dir`` (all parts), done cases only."""
    rows = []
    for path in ledger_files(out_dir):
        with CohortLedger(path, readonly=True) as ledger:
            for rec in ledger.records("done"):
                for stat in rec.stats:
                    rows.append({"case_id": rec.case_id, **{k: stat.get(k) for k in STAT_COLUMNS[1:]}})
    rows.sort(key=lambda r: (r["case_id"], r["label"]))
    return rows


def write_statistics(out_dir: Path) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(STAT_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(statistics_rows(out_dir))
    return write_text_atomic(out_dir / STATISTICS_CSV, buf.getvalue())


def _remove_outputs(output: Path, settings: CaseSettings) -> None:
    for p in output_paths(output, output, settings.output_format, settings.split_masks).values():
        if p.is_dir():  # --split-masks: the case's mask folder
            shutil.rmtree(p, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            p.unlink()


def run_batch(
    cases: list[Case],
    out_dir: str | Path,
    settings: CaseSettings,
    executor,
    *,
    retry_failed: bool = False,
    num_parts: int = 1,
    part_id: int = 0,
    reporter=None,
    argv: list[str] | None = None,
) -> BatchSummary:
    """Run ``cases`` (already restricted to this part) into ``out_dir`` with ``executor``.

    The executor is entered (model loaded, cluster started) only when some case needs running.
    Returns the run's summary; ``summary.exit_code`` is what the CLI exits with.
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reporter = reporter or NullReporter()
    lpath = ledger_path(out_dir, num_parts, part_id)
    summary = BatchSummary(total=len(cases), out_dir=str(out_dir), ledger=str(lpath), executor=executor.description)
    key = settings_key(settings)
    with RunLock(lpath) as lock, CohortLedger(lpath) as ledger:
        if not other_runs_active(out_dir, lock.path):
            summary.stale_temp_files_removed = len(clean_stale_temp_files(out_dir))
        decisions = [decide(c, ledger.get(c.case_id), key, ledger, retry_failed) for c in cases]
        to_run = [d for d in decisions if d.action == "run"]
        summary.skipped = sum(d.action == "skip" for d in decisions)
        kept = [d for d in decisions if d.action == "keep-failed"]
        summary.failed_earlier = len(kept)
        summary.failures.extend((d.case.case_id, d.reason) for d in kept)
        for d in to_run:
            if d.reason != "new":
                summary.redone[d.reason] = summary.redone.get(d.reason, 0) + 1
        run_id = ledger.start_run(argv or sys.argv, {**settings.to_dict(), "num_parts": num_parts, "part_id": part_id})
        reporter.start(len(cases), len(to_run), summary.skipped, len(kept))
        for reason, n in summary.redone.items():
            reporter.note(f"redoing {n} case(s): {reason}")
        try:
            if to_run:
                with executor:
                    summary.executor = executor.description  # settled once the model is loaded
                    _drive(to_run, out_dir, settings, executor, ledger, key, run_id, reporter, summary)
                # every worker has stopped: a temp file left now is a killed worker's unfinished
                # write (its case was redone elsewhere), unless another part is writing here
                if not other_runs_active(out_dir, lock.path):
                    summary.stale_temp_files_removed += len(clean_stale_temp_files(out_dir))
        finally:
            reporter.close()
            summary.seconds = time.perf_counter() - t_start
            ledger.finish_run(run_id, summary.done, summary.skipped, summary.failed + summary.failed_earlier)
        write_statistics(out_dir)
        write_text_atomic(
            out_dir / f"batch_summary{part_suffix(num_parts, part_id)}.json",
            json.dumps(summary.to_dict(), indent=2) + "\n",
        )
    return summary


def _largest_first(decisions: list[Decision]) -> list[Decision]:
    """Biggest inputs first (stable for equal sizes): the last cases to start are then the short
    ones, so parallel streams finish together instead of one running a big case alone at the end."""
    sizes = {id(d): (stat_fingerprint(d.case.input_path) or Fingerprint(0, 0)).size for d in decisions}
    return sorted(decisions, key=lambda d: -sizes[id(d)])


def _drive(to_run, out_dir, settings, executor, ledger, key, run_id, reporter, summary) -> None:
    pending = deque(_largest_first(to_run))
    inflight: dict[cf.Future, CaseTask] = {}
    while pending or inflight:
        while pending and len(inflight) < executor.capacity():
            case = pending.popleft().case
            task = CaseTask(case.case_id, str(case.input_path), str(case_output_for(out_dir, case.case_id, settings)))
            ledger.mark_running(case.case_id, task.input_path, run_id)
            _remove_outputs(Path(task.labels_path), settings)  # nothing of an earlier attempt may mix with this one
            inflight[executor.submit(task)] = task
        finished, _ = cf.wait(list(inflight), timeout=1.0, return_when=cf.FIRST_COMPLETED)
        for fut in finished:
            task = inflight.pop(fut)
            try:
                result = fut.result()
            except Exception as err:  # noqa: BLE001 - one case's failure never stops the cohort
                result = failed_result(task, err)
            _record(ledger, result, key)
            if result.ok:
                summary.done += 1
            else:
                summary.failed += 1
                summary.failures.append((result.case_id, result.error or "failed"))
            reporter.finished(task.case_id, result)


def _record(ledger: CohortLedger, result: CaseResult, key: str) -> None:
    if result.ok:
        ledger.mark_done(
            result.case_id,
            input_size=result.input_size,
            input_mtime_ns=result.input_mtime_ns,
            input_sha256=result.input_sha256,
            outputs=result.outputs,
            plan=result.plan,
            stats=result.stats,
            timings=result.timings,
            settings_key=key,
            worker=result.worker,
            seconds=result.seconds,
        )
    else:
        ledger.mark_failed(
            result.case_id,
            result.error or "failed",
            input_size=result.input_size,
            input_mtime_ns=result.input_mtime_ns,
            input_sha256=result.input_sha256,
            settings_key=key,
            worker=result.worker,
        )


__all__ = ["BatchSummary", "Decision", "decide", "run_batch", "ledger_path"]
