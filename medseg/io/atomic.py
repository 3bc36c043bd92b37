"""Files on disk: atomic writes (temporary name beside the target, fsync, rename) and content hashes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

TMP_MARKER = ".medseg-tmp-"


def _suffixes(name: str) -> str:
    # keep compound suffixes such as .nii.gz so writers that look at the name still work
    for compound in (".nii.gz", ".tar.gz"):
        if name.endswith(compound):
            return compound
    return Path(name).suffix


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it onto ``target``.

    On any exception the temporary file is removed and ``target`` is left untouched, so a crash
    never leaves a truncated output under the final name.

    Example:
        >>> with atomic_path(tmp / "out.json") as p:  # doctest: +SKIP
        ...     p.write_text("{}")
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{TMP_MARKER}{secrets.token_hex(6)}-{target.name}")
    tmp = tmp.with_name(tmp.name[: -len(target.name)] + "x" + _suffixes(target.name))
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text_atomic(target: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(target, text.encode("utf-8"))


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, or of a folder's files (a DICOM series).

    A folder hashes each file's relative posix path and bytes in sorted order, so renaming,
    adding or changing any file changes the digest.

    Raises:
        OSError: the path (or a file under it) cannot be read.
    """
    path = Path(path)
    h = hashlib.sha256()
    is_dir = path.is_dir()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if is_dir else [path]
    for f in files:
        if is_dir:
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()
