"""Which cases a batch runs: discovery in a folder tree or a CSV manifest, and SLURM-style parts.

A :class:`Case` is an id (a relative path without the image suffix, e.g. ``sub-01/ct``) and the
input it is read from. Outputs mirror the id under the output folder, so two scans called
``ct.nii.gz`` in different subfolders never collide.

Example:
    >>> cases = discover_cases("cohort/")  # doctest: +SKIP
    >>> mine = select_part(cases, num_parts=4, part_id=0)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from medseg.errors import InputError, MedsegError
from medseg.io.atomic import TMP_MARKER, sha256_of
from medseg.io.registry import IMAGE_SUFFIXES

#: skipped by default: medseg's own outputs and ground truth beside scans (``medseg phantom --layout flat``)
DEFAULT_EXCLUDES = ("*_seg.*", "*_seg_*", "*_gt.*")


@dataclass(frozen=True)
class Case:
    """One scan of a cohort.

    Attributes:
        case_id: stable, unique, relative posix path without suffix; names the outputs.
        input_path: the file (or, for DICOM, the series folder) to read.
    """

    case_id: str
    input_path: Path


#: a finder turns one folder entry into cases, or returns None when it does not handle it. DICOM
#: support registers one that yields one case per series found in a folder.
CaseFinder = Callable[[Path, Path], "list[Case] | None"]
_FINDERS: list[CaseFinder] = []


def register_case_finder(finder: CaseFinder) -> None:
    """Add a finder that is asked about every folder before the files in it are considered."""
    _FINDERS.insert(0, finder)


def image_stem(name: str) -> str | None:
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


def check_case_id(case_id: str, where: str | Path) -> str:
    """A case id becomes a relative output path: refuse anything that could escape the output folder."""
    parts = PurePosixPath(case_id).parts
    if not case_id or case_id.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in case_id:
        raise MedsegError(f"case id {case_id!r} must be a relative path without '..'", where)
    if TMP_MARKER in case_id:
        raise MedsegError(f"case id {case_id!r} contains the reserved {TMP_MARKER!r}", where)
    return case_id


def _excluded(rel: str, patterns: Iterable[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(rel, p) for p in patterns)


def discover_cases(
    root: str | Path, exclude: Iterable[str] = DEFAULT_EXCLUDES, skip: Iterable[str | Path] = ()
) -> list[Case]:
    """Every image under ``root`` (recursively), sorted by case id.

    Hidden files and folders, medseg temp files, folders in ``skip`` (e.g. the output folder when
    it lies inside ``root``) and names matching an ``exclude`` glob are left out.

    Raises:
        InputError: ``root`` is not a folder, or two files map to the same case id.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError("is not a folder (give a folder of scans, or --manifest cases.csv)", root)
    skip_dirs = {Path(p).resolve() for p in skip}
    exclude = tuple(exclude)
    cases: dict[str, Case] = {}
    for folder, dirnames, filenames in os.walk(root):
        here = Path(folder)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and (here / d).resolve() not in skip_dirs)
        claimed = None
        for finder in _FINDERS:
            claimed = finder(root, here)
            if claimed is not None:
                break
        if claimed is not None:
            for case in claimed:
                _add(cases, case, root)
            dirnames[:] = []
            continue
        for name in sorted(filenames):
            stem = image_stem(name)
            if stem is None or name.startswith(".") or TMP_MARKER in name:
                continue
            rel = (here / name).relative_to(root).as_posix()
            if _excluded(rel, exclude):
                continue
            case_id = PurePosixPath(rel).with_name(stem).as_posix()
            _add(cases, Case(case_id, here / name), root)
    return [cases[k] for k in sorted(cases)]


def _add(cases: dict[str, Case], case: Case, root: Path) -> None:
    other = cases.get(case.case_id)
    if other is not None:
        raise InputError(
            f"two inputs map to case id {case.case_id!r}: {other.input_path.name} and {case.input_path.name}; "
            "rename one or use --manifest",
            root,
        )
    cases[case.case_id] = case


def read_manifest(path: str | Path) -> list[Case]:
    """Cases from a CSV with columns ``id,path`` (relative paths are relative to the CSV's folder).

    Raises:
        InputError: missing columns, empty ids or paths, or duplicate ids (with the line number).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("manifest not found", path)
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip().lower() for f in (reader.fieldnames or [])]
        if "id" not in fields or "path" not in fields:
            found = ",".join(fields) or "none"
            raise InputError(f"manifest needs a header with columns id,path (found: {found})", path)
        cases: dict[str, Case] = {}
        for line, row in enumerate(reader, start=2):
            row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
            case_id, scan = row.get("id", ""), row.get("path", "")
            if not case_id and not scan:
                continue
            if not case_id or not scan:
                raise InputError(f"line {line}: both id and path are needed", path)
            check_case_id(case_id, f"{path}:{line}")
            if case_id in cases:
                raise InputError(f"line {line}: duplicate id {case_id!r}", path)
            scan_path = Path(scan).expanduser()
            cases[case_id] = Case(case_id, scan_path if scan_path.is_absolute() else path.parent / scan_path)
    return [cases[k] for k in sorted(cases)]


def part_of(case_id: str, num_parts: int) -> int:
    """The part a case belongs to: a hash of its id, so adding cases never moves existing ones."""
    digest = hashlib.sha256(case_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % num_parts


def select_part(cases: list[Case], num_parts: int = 1, part_id: int = 0) -> list[Case]:
    """The cases of part ``part_id`` of ``num_parts`` (deterministic; parts are disjoint and cover all)."""
    if num_parts < 1:
        raise MedsegError(f"--num-parts must be at least 1 (got {num_parts})")
    if not 0 <= part_id < num_parts:
        raise MedsegError(f"--part-id must be in 0..{num_parts - 1} (got {part_id})")
    if num_parts == 1:
        return list(cases)
    return [c for c in cases if part_of(c.case_id, num_parts) == part_id]


@dataclass(frozen=True)
class Fingerprint:
    """What identifies an input's content: size and mtime cheaply, sha256 for certain."""

    size: int
    mtime_ns: int
    sha256: str | None = None


def stat_fingerprint(path: str | Path) -> Fingerprint | None:
    """Size and mtime of a file, or of a folder's files (a DICOM series); None if it is missing."""
    path = Path(path)
    try:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            stats = [p.stat() for p in files]
            return Fingerprint(sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0))
        st = path.stat()
    except OSError:
        return None
    return Fingerprint(st.st_size, st.st_mtime_ns)


def content_sha256(path: str | Path) -> str | None:
    """sha256 of a file, or of a folder's files (:func:`medseg.io.atomic.sha256_of`); None if unreadable."""
    try:
        return sha256_of(path)
    except OSError:
        return None
