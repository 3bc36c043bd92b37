"""Label a cohort case by case, resumably: the GUI-free logic behind ``medseg view DIR``.

A cohort is one of:

- a ``medseg batch`` output folder (it holds ``medseg_batch*.sqlite``): every case the batch
  finished, its scan as the ledger recorded it, its labels ``<case>_seg.nii.gz`` in the folder;
- a folder of scans (NIfTI/NRRD/MHA files found below it as ``medseg batch`` finds them, medseg's
  own outputs and ``*_gt.*`` left out), each with the ``<scan>_seg.nii.gz`` that ``medseg infer``
  writes beside it when there is one (else the case starts from empty labels);
- a CSV manifest (``id,path`` as ``medseg batch --manifest`` takes; an optional ``labels`` column),
  with labels from the batch output folder given with it, or beside each scan.

A folder holding only DICOM files is not a cohort: ``medseg view`` opens it as one scan, as before.

Corrected labels never replace the model's output: they go beside it as
``<case>_seg_corrected.nii.gz`` (with its JSON sidecar, the original's provenance kept), on the
scan's exact grid and written atomically. The batch ledger holds the sha256 of ``<case>_seg.nii.gz``,
so overwriting it would make the next ``medseg batch`` redo the case and replace the correction;
keeping both also leaves the pair a model-versus-reader comparison needs. A case with a corrected
file reopens with it.

Which cases are done is kept in ``medseg_review.jsonl`` in the cohort folder (for a manifest: in the
output folder, or beside the CSV as ``<manifest>_review.jsonl``): one JSON line per event (case id,
``reviewed`` | ``skipped`` | ``saved``, the label file and its sha256, whether it was corrected, the
time and the reviewer), appended and fsynced, so the file is also the audit trail. The last line of
a case wins; a case reviewed or skipped whose label file has changed since (sha256) counts as not
reviewed again. A torn line (a crash mid-write) or a corrupt one is skipped with a warning, costing at
most that one event.

Example:
    >>> session = CohortSession(open_cohort("results/"))  # doctest: +SKIP
    >>> session.progress_text()  # doctest: +SKIP
    'case 13/40 (12 reviewed)'
"""

from __future__ import annotations

import csv
import getpass
import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from medseg.errors import InputError, MedsegError

REVIEW_LEDGER = "medseg_review.jsonl"
CORRECTED_SUFFIX = "_corrected"
#: ``reviewed`` and ``skipped`` settle a case; ``saved`` (edits written, not yet signed off) does not
STATUSES = ("reviewed", "skipped", "saved")
DECIDED = ("reviewed", "skipped")


# -- cases -------------------------------------------------------------------------------------------
def corrected_path(labels: str | Path) -> Path:
    """``results/ct_seg.nii.gz`` -> ``results/ct_seg_corrected.nii.gz``."""
    from medseg.inference.outputs import output_stem

    labels = Path(labels)
    return labels.parent / f"{output_stem(labels)}{CORRECTED_SUFFIX}.nii.gz"


@dataclass(frozen=True)
class CohortCase:
    """One case to review.

    Attributes:
        case_id: the batch's case id (relative path without suffix) or the manifest's id.
        image: the scan (file or DICOM folder).
        labels: the model's labels, or None when there are none (the reviewer starts from empty).
        corrected: where corrected labels are saved (beside ``labels``, or beside the scan).
    """

    case_id: str
    image: Path
    labels: Path | None
    corrected: Path

    @property
    def labels_to_open(self) -> Path | None:
        """The corrected labels when saved earlier, else the model's labels, else None."""
        if self.corrected.is_file():
            return self.corrected
        return self.labels if self.labels is not None and self.labels.is_file() else None


def _case(case_id: str, image: Path, labels: Path | None) -> CohortCase:
    from medseg.inference.outputs import default_output

    return CohortCase(case_id, image, labels, corrected_path(labels if labels is not None else default_output(image)))


@dataclass
class Cohort:
    """The cases of a cohort, where it came from, and where its review ledger lives."""

    source: Path
    kind: str  # "batch", "folder" or "manifest"
    cases: list[CohortCase]
    ledger_path: Path
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        what = {"batch": "medseg batch output", "folder": "folder of scans", "manifest": "manifest"}[self.kind]
        return f"{len(self.cases)} case(s) from {self.source} ({what}); review ledger {self.ledger_path}"


def is_batch_output(folder: str | Path) -> bool:
    from medseg.batch.runner import ledger_files

    folder = Path(folder)
    return folder.is_dir() and bool(ledger_files(folder))


def is_cohort_folder(folder: str | Path) -> bool:
    """True for a ``medseg batch`` output folder, a folder with a review ledger, or one holding
    NIfTI/NRRD/MHA scans at any depth; a folder of DICOM files alone is one scan, not a cohort."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    if is_batch_output(folder) or (folder / REVIEW_LEDGER).is_file():
        return True
    return _holds_scan_files(folder)


def _holds_scan_files(root: Path) -> bool:
    from medseg.batch.cohort import DEFAULT_EXCLUDES, _excluded, image_stem
    from medseg.io.atomic import TMP_MARKER

    for _folder, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith(".") or TMP_MARKER in name or image_stem(name) is None:
                continue
            if not _excluded(name, DEFAULT_EXCLUDES):
                return True
    return False


def open_cohort(
    path: str | Path | None = None, manifest: str | Path | None = None, output: str | Path | None = None
) -> Cohort:
    """The cohort at ``path`` (a batch output folder or a folder of scans), or in ``manifest``.

    Args:
        path: a ``medseg batch`` output folder or a folder of scans.
        manifest: a CSV with ``id,path`` (and optionally ``labels``) instead of ``path``.
        output: with ``manifest``: the batch output folder holding ``<id>_seg.nii.gz``; the review
            ledger goes there too.

    Raises:
        InputError: nothing to review, or the folder/manifest cannot be used.
    """
    if (path is None) == (manifest is None):
        raise MedsegError("give a cohort folder or a manifest, not both")
    if manifest is not None:
        cohort = _manifest_cohort(Path(manifest), None if output is None else Path(output))
    else:
        if output is not None:
            raise MedsegError("an output folder goes with a manifest only (a batch output folder is the cohort)")
        folder = Path(path)
        if not folder.is_dir():
            raise InputError("is not a folder", folder)
        cohort = _batch_cohort(folder) if is_batch_output(folder) else _folder_cohort(folder)
    if not cohort.cases:
        why = f" ({'; '.join(cohort.notes)})" if cohort.notes else ""
        raise InputError(f"no cases to review{why}", cohort.source)
    return cohort


def _batch_cohort(out_dir: Path) -> Cohort:
    from medseg.batch.ledger import CohortLedger
    from medseg.batch.runner import labels_path_for, ledger_files

    cases: dict[str, CohortCase] = {}
    not_done = 0
    for ledger_file in ledger_files(out_dir):
        with CohortLedger(ledger_file, readonly=True) as ledger:
            for rec in ledger.records():
                if rec.status != "done":
                    not_done += 1
                    continue
                labels = labels_path_for(out_dir, rec.case_id)
                recorded = (rec.outputs.get("labels") or {}).get("path")
                image = _recorded_input(rec.input_path, recorded, labels)
                cases[rec.case_id] = _case(rec.case_id, image, labels)
    notes = [f"{not_done} case(s) the batch has not finished are left out"] if not_done else []
    return Cohort(out_dir, "batch", [cases[k] for k in sorted(cases)], out_dir / REVIEW_LEDGER, notes)


def _recorded_input(input_path: str, recorded_labels: str | None, labels: Path) -> Path:
    """The scan a batch read, found again: the batch records paths as given on its command line,
    so relative ones are resolved from the folder the batch ran in (found by matching the recorded
    label path against where the labels are now), then from here."""
    image = Path(input_path)
    if image.is_absolute():
        return image
    if recorded_labels and not Path(recorded_labels).is_absolute():
        rec_parts = PurePath(recorded_labels).parts
        now = labels.resolve().parts
        if ".." not in rec_parts and len(now) > len(rec_parts) and now[-len(rec_parts) :] == rec_parts:
            candidate = Path(*now[: -len(rec_parts)]) / image
            if candidate.exists():
                return candidate
    return image.resolve()


def _folder_cohort(root: Path) -> Cohort:
    from medseg.batch.cohort import discover_cases
    from medseg.inference.outputs import default_output

    found = discover_cases(root)
    cases = []
    for c in found:
        labels = default_output(c.input_path)
        cases.append(_case(c.case_id, c.input_path, labels if labels.is_file() else None))
    without = sum(c.labels is None for c in cases)
    notes = [f"{without} case(s) have no <scan>_seg.nii.gz and start from empty labels"] if without else []
    return Cohort(root, "folder", cases, root / REVIEW_LEDGER, notes)


def _manifest_cohort(manifest: Path, output: Path | None) -> Cohort:
    from medseg.batch.cohort import read_manifest
    from medseg.batch.runner import labels_path_for
    from medseg.inference.outputs import default_output

    if output is not None and not output.is_dir():
        raise InputError("is not a folder (give the medseg batch output folder)", output)
    listed = {}
    with open(manifest, newline="", encoding="utf-8-sig") as fh:
        for row in csv.DictReader(fh):
            row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
            if row.get("id") and row.get("labels"):
                p = Path(row["labels"]).expanduser()
                listed[row["id"]] = p if p.is_absolute() else manifest.parent / p
    cases = []
    for c in read_manifest(manifest):
        if c.case_id in listed:
            labels = listed[c.case_id]
        elif output is not None:
            labels = labels_path_for(output, c.case_id)
        else:
            labels = default_output(c.input_path)
        cases.append(_case(c.case_id, c.input_path, labels if labels.is_file() else None))
    without = sum(c.labels is None for c in cases)
    notes = [f"{without} case(s) have no labels and start from empty labels"] if without else []
    ledger = output / REVIEW_LEDGER if output is not None else manifest.with_name(f"{manifest.stem}_review.jsonl")
    return Cohort(manifest, "manifest", cases, ledger, notes)


# -- the review ledger -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReviewRecord:
    """One line of the review ledger. ``labels`` is relative to the ledger's folder when inside it."""

    case_id: str
    status: str
    time: str
    reviewer: str
    labels: str | None = None
    labels_sha256: str | None = None
    corrected: bool = False

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReviewRecord:
        if not isinstance(d.get("case_id"), str) or d.get("status") not in STATUSES:
            raise ValueError("not a review record")
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in names})


class ReviewLedger:
    """Append-only JSON-lines record of a labelling session (see the module docstring).

    Args:
        path: the ``.jsonl`` file; created on the first record.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.latest: dict[str, ReviewRecord] = {}
        self.bad_lines: list[int] = []
        self._load()

    def _load(self) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        for number, line in enumerate(raw.split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                record = ReviewRecord.from_dict(json.loads(line))
            except (ValueError, TypeError, UnicodeDecodeError):
                self.bad_lines.append(number)
                continue
            self.latest[record.case_id] = record
        if self.bad_lines:
            lines = ", ".join(map(str, self.bad_lines[:5])) + (" ..." if len(self.bad_lines) > 5 else "")
            warnings.warn(
                f"{self.path}: skipped {len(self.bad_lines)} unreadable line(s) ({lines}); "
                "those events are lost, the others stand",
                UserWarning,
                stacklevel=2,
            )

    def status(self, case_id: str) -> str | None:
        record = self.latest.get(case_id)
        return None if record is None else record.status

    def append(self, record: ReviewRecord) -> ReviewRecord:
        """Add one line and fsync it; a file left mid-line by a crash gets a line break first."""
        line = json.dumps(asdict(record), sort_keys=True).encode("utf-8") + b"\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() > 0:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    line = b"\n" + line
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self.latest[record.case_id] = record
        return record

    def relative(self, path: Path | None) -> str | None:
        if path is None:
            return None
        try:
            return Path(os.path.relpath(Path(path).resolve(), self.path.parent.resolve())).as_posix()
        except ValueError:  # another drive (Windows)
            return str(Path(path).resolve())

    def resolve(self, recorded: str | None) -> Path | None:
        return None if recorded is None else (self.path.parent / recorded)


def current_reviewer() -> str:
    try:
        return os.environ.get("USER") or os.environ.get("USERNAME") or getpass.getuser()
    except Exception:  # noqa: BLE001 - no user database (containers): still record something
        return "unknown"


def labels_digest(data: Any) -> str:
    """A fingerprint of a label array's values, to tell whether it was edited since it was opened."""
    array = np.ascontiguousarray(np.asarray(data))
    h = hashlib.sha256(f"{array.shape}{array.dtype.str}".encode())
    h.update(memoryview(array).cast("B"))
    return h.hexdigest()


# -- the session -------------------------------------------------------------------------------------
class CohortSession:
    """Where a reviewer is in a cohort: the current case, navigation, saving and the review ledger.

    A new session (after a restart or a crash) reads the ledger and starts at the first case not yet
    reviewed or skipped (from the start of the list), or at ``start`` when given.

    Args:
        cohort: from :func:`open_cohort`.
        reviewer: recorded with every event (default: ``$USER``).
        unreviewed_only: next/previous step over cases already reviewed or skipped.
        start: a case id to start at.
    """

    def __init__(
        self, cohort: Cohort, reviewer: str | None = None, unreviewed_only: bool = False, start: str | None = None
    ) -> None:
        self.cohort = cohort
        self.cases = cohort.cases
        self.ledger = ReviewLedger(cohort.ledger_path)
        self.reviewer = reviewer or current_reviewer()
        self.unreviewed_only = unreviewed_only
        self._hashes: dict[tuple[str, int, int], str] = {}
        if start is not None:
            ids = [c.case_id for c in self.cases]
            if start not in ids:
                raise MedsegError(f"no case {start!r} in this cohort", cohort.source)
            self.index = ids.index(start)
        else:
            first = self.first_unreviewed()
            self.index = 0 if first is None else first

    # -- state --
    @property
    def current(self) -> CohortCase:
        return self.cases[self.index]

    def status(self, case: CohortCase | None = None) -> str:
        """``reviewed``, ``skipped``, ``saved`` (edited, not signed off), ``changed`` (reviewed or
        skipped, but the label file it was decided on has changed or gone since) or ``todo``."""
        record = self.ledger.latest.get((case or self.current).case_id)
        if record is None:
            return "todo"
        if record.status in DECIDED and record.labels is not None and not self._unchanged(record):
            return "changed"
        return record.status

    def _unchanged(self, record: ReviewRecord) -> bool:
        """The record's label file still has its recorded sha256 (hashed once per size and mtime)."""
        from medseg.io.atomic import sha256_of

        path = self.ledger.resolve(record.labels)
        try:
            st = path.stat()
            key = (str(path), st.st_size, st.st_mtime_ns)
            if key not in self._hashes:
                self._hashes[key] = sha256_of(path)
        except OSError:
            return False
        return self._hashes[key] == record.labels_sha256

    def is_decided(self, case: CohortCase) -> bool:
        return self.status(case) in DECIDED

    def counts(self) -> dict[str, int]:
        out = {"reviewed": 0, "skipped": 0, "changed": 0, "saved": 0, "todo": 0}
        for case in self.cases:
            out[self.status(case)] += 1
        return out

    def progress_text(self) -> str:
        """E.g. ``case 3/40 (12 reviewed, 1 skipped)`` (and ``, 2 changed`` since their review)."""
        counts = self.counts()
        extra = "".join(f", {counts[k]} {k}" for k in ("skipped", "changed") if counts[k])
        return f"case {self.index + 1}/{len(self.cases)} ({counts['reviewed']} reviewed{extra})"

    def first_unreviewed(self, after: int = -1) -> int | None:
        """The first case after index ``after`` that is neither reviewed nor skipped (wrapping round)."""
        n = len(self.cases)
        for step in range(1, n + 1):
            i = (after + step) % n
            if not self.is_decided(self.cases[i]):
                return i
        return None

    # -- navigation --
    def _step(self, direction: int) -> CohortCase | None:
        i = self.index + direction
        while 0 <= i < len(self.cases):
            if not (self.unreviewed_only and self.is_decided(self.cases[i])):
                self.index = i
                return self.current
            i += direction
        return None

    def next(self) -> CohortCase | None:
        """Move to the next case (the next undecided one with ``unreviewed_only``); None at the end."""
        return self._step(1)

    def previous(self) -> CohortCase | None:
        return self._step(-1)

    def go_to(self, case_id: str) -> CohortCase:
        for i, case in enumerate(self.cases):
            if case.case_id == case_id:
                self.index = i
                return case
        raise MedsegError(f"no case {case_id!r} in this cohort", self.cohort.source)

    # -- recording --
    def save_corrected(self, data: Any, state: Mapping[str, Any], image_metadata: Mapping | None = None) -> Path:
        """Write the current case's edited labels to its ``_corrected`` file and record ``saved``.

        Args:
            data: the Labels layer's data (display orientation).
            state: the layer's state (``metadata``, ``features``, ``colormap``), as napari's writer gets it.
            image_metadata: the scan's layer metadata: when the labels lie on the scan's grid, they are
                written with the scan's header (shape, affine, qform/sform codes).
        """
        from medseg.viewer._writer import write_labels_layer
        from medseg.viewer.layers import META_KEY, geometry_of

        case = self.current
        state = dict(state)
        metadata = dict(state.get("metadata") or {})
        labels_geometry, image_geometry = geometry_of(metadata), geometry_of(image_metadata)
        if image_geometry is not None and (labels_geometry is None or labels_geometry.same_grid(image_geometry)):
            metadata[META_KEY] = image_metadata[META_KEY]
        state["metadata"] = metadata
        written = write_labels_layer(str(case.corrected), data, state)
        if len(written) > 1 and case.labels is not None:
            _keep_provenance(Path(written[1]), case.labels)
        self._record("saved", case.corrected)
        return case.corrected

    def mark(self, status: str) -> ReviewRecord:
        """Record the current case ``reviewed`` or ``skipped`` with the label file as it is on disk."""
        if status not in DECIDED:
            raise ValueError(f"status must be one of {', '.join(DECIDED)}")
        return self._record(status, self.current.labels_to_open)

    def _record(self, status: str, labels: Path | None) -> ReviewRecord:
        from medseg.io.atomic import sha256_of

        record = ReviewRecord(
            case_id=self.current.case_id,
            status=status,
            time=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            reviewer=self.reviewer,
            labels=self.ledger.relative(labels),
            labels_sha256=sha256_of(labels) if labels is not None and labels.is_file() else None,
            corrected=labels is not None and labels == self.current.corrected,
        )
        return self.ledger.append(record)


def _keep_provenance(corrected_sidecar: Path, original_labels: Path) -> None:
    """Carry the model's sidecar fields (model, version, plan, ...) into the corrected labels' sidecar."""
    from medseg.io.atomic import write_text_atomic
    from medseg.viewer.layers import sidecar_path

    try:
        original = json.loads(sidecar_path(original_labels).read_text())
        record = json.loads(corrected_sidecar.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(original, dict) or not isinstance(record, dict):
        return
    kept = {k: v for k, v in original.items() if k != "outputs"}  # the model's file list, not this one's
    merged = {**kept, **record, "input": original.get("input", record.get("input"))}
    merged["corrected_from"] = str(original_labels)
    write_text_atomic(corrected_sidecar, json.dumps(merged, indent=2) + "\n")
