"""Reader registry: each reader says whether it can read a path and returns a :class:`Volume`.

New formats (DICOM folders, ...) plug in with :func:`register_reader`; callers only ever use
:func:`read_volume`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medseg.errors import InputError
from medseg.volume import Volume


@dataclass(frozen=True)
class Reader:
    name: str
    can_read: Callable[[Path], bool]
    read: Callable[[Path], Volume]


_READERS: list[Reader] = []


def register_reader(name: str, can_read: Callable[[Path], bool], read: Callable[[Path], Volume]) -> None:
    """Add a reader; later registrations are tried first so plugins can override defaults."""
    _READERS.insert(0, Reader(name, can_read, read))


def readers() -> list[Reader]:
    return list(_READERS)


def read_volume(path: str | Path) -> Volume:
    """Read any supported scan into a validated :class:`Volume`.

    Raises:
        InputError: one-line, user-facing description of what is wrong with ``path``.
    """
    from medseg.io.validate import validate_volume

    path = Path(path)
    if not path.exists():
        raise InputError("no such file or folder", path)
    for reader in _READERS:
        if reader.can_read(path):
            volume = reader.read(path)
            volume.meta.setdefault("source", str(path))
            volume.meta.setdefault("reader", reader.name)
            validate_volume(volume, path)
            return volume
    if path.is_dir():
        found = sorted(p.name for p in path.iterdir())[:3]
        hint = f" (found: {', '.join(found)}...)" if found else " (the folder is empty)"
        raise InputError(f"folder contains no readable image{hint}; give a NIfTI file", path)
    raise InputError("not a supported image file (expected .nii, .nii.gz, .nrrd, .mha, .mhd)", path)
