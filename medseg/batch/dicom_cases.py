"""DICOM series as cohort cases: a folder that directly holds DICOM files is one case per series.

A folder with one readable stack is one case named after the folder (its whole content is read and
fingerprinted). A folder holding several candidate stacks (e.g. two series saved together) gives
one case per stack, ``<folder>/<SeriesInstanceUID>[#N]``, read through one of its files; a folder
whose series cannot be read at all stays one case, so its error is recorded rather than lost.
"""

from __future__ import annotations

import re
from pathlib import Path

from medseg.batch.cohort import Case
from medseg.io.dicom import is_dicom_file, scan_dicom


def _case_part(stack_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", stack_id.replace("#", "-"))


def dicom_case_finder(root: Path, folder: Path) -> list[Case] | None:
    """Cases for ``folder`` if it directly holds DICOM files, else None (the folder is walked as usual)."""
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]
    if not any(is_dicom_file(p) for p in files):
        return None
    rel = folder.relative_to(root).as_posix()
    base = root.name if rel in ("", ".") else rel
    scan = scan_dicom(folder, recursive=False)
    candidates = [s for s in scan.stacks if s.is_candidate]
    if len(candidates) <= 1:
        return [Case(base, folder)]
    return [Case(f"{base}/{_case_part(s.id)}", s.frames[0].path) for s in sorted(candidates, key=lambda s: s.id)]
