"""Reader registry: each reader says whether it can read a path and returns a :class:`Volume`.

New formats plug in with :func:`register_reader`; callers only ever use :func:`read_volume`,
with :class:`ReadOptions` for what the user chose about how to read (a DICOM series, ...).

Example:
    >>> volume = read_volume("study/", ReadOptions(series="2", keep_tilt=True))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from medseg.errors import InputError
from medseg.io.dicom import DICOM_FILE_SUFFIXES as DICOM_FILE_SUFFIXES  # single DICOM files, re-exported
from medseg.io.nifti import NIFTI_SUFFIXES
from medseg.io.sitk import SITK_SUFFIXES
from medseg.volume import Volume

#: files that hold one scan each (what a cohort case can be). A DICOM file (``DICOM_FILE_SUFFIXES``)
#: is one image of a series: :func:`read_volume` reads the whole series it belongs to.
IMAGE_SUFFIXES = NIFTI_SUFFIXES + SITK_SUFFIXES
_STEM_SUFFIXES = tuple(sorted(IMAGE_SUFFIXES + DICOM_FILE_SUFFIXES, key=len, reverse=True))


def output_stem(path: Path) -> str:
    """``scan.nii.gz`` -> ``scan``; a DICOM folder keeps its whole name (``1.2.3``)."""
    if path.is_dir():
        return path.name
    name = path.name
    for suffix in _STEM_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def sidecar_path(labels_path: str | Path) -> Path:
    """``scan_seg.nii.gz`` -> ``scan_seg.json``: the JSON sidecar with label names beside a label file
    (as ``medseg infer``, the napari writer, ``medseg prompt`` and training data use it)."""
    labels_path = Path(labels_path)
    return labels_path.parent / f"{output_stem(labels_path)}.json"


@dataclass(frozen=True)
class ReadOptions:
    """How to read an input. All options so far are DICOM's; other formats refuse them.

    Attributes:
        series: stack id, SeriesInstanceUID or SeriesNumber to read from a DICOM folder
            (``medseg series`` lists them); None picks the only readable volume.
        resample_irregular: interpolate DICOM stacks with missing slices or uneven gaps onto an even grid.
        keep_tilt: keep DICOM gantry tilt as a sheared affine instead of resampling onto an orthogonal grid.
    """

    series: str | None = None
    resample_irregular: bool = False
    keep_tilt: bool = False

    def __post_init__(self) -> None:
        if self.series is not None:
            series = str(self.series).strip()  # a SeriesNumber may come as an int
            if not series:
                raise ValueError("series must not be empty")
            object.__setattr__(self, "series", series)
        object.__setattr__(self, "resample_irregular", bool(self.resample_irregular))
        object.__setattr__(self, "keep_tilt", bool(self.keep_tilt))

    @property
    def dicom_flags(self) -> tuple[str, ...]:
        """The command-line flags of the DICOM options that are set, e.g. ``("--series",)``."""
        return tuple(
            "--" + f.name.replace("_", "-") for f in fields(self) if getattr(self, f.name) not in (None, False)
        )

    @property
    def has_dicom_options(self) -> bool:
        """True when any DICOM-only option is set (the input must then be DICOM)."""
        return bool(self.dicom_flags)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values; ``ReadOptions(**d)`` rebuilds the options."""
        return asdict(self)


@dataclass(frozen=True)
class Reader:
    """A format: ``can_read(path)`` is cheap; ``read(path, options)`` returns an unvalidated Volume.

    ``takes_dicom_options``: the reader honours :class:`ReadOptions`' DICOM options; for any other
    reader, :func:`read_volume` refuses them rather than ignore them.
    """

    name: str
    can_read: Callable[[Path], bool]
    read: Callable[[Path, ReadOptions], Volume]
    takes_dicom_options: bool = False


_READERS: list[Reader] = []


def register_reader(
    name: str,
    can_read: Callable[[Path], bool],
    read: Callable[[Path, ReadOptions], Volume],
    *,
    takes_dicom_options: bool = False,
) -> None:
    """Add a reader; later registrations are tried first so plugins can override defaults."""
    _READERS.insert(0, Reader(name, can_read, read, takes_dicom_options))


def readers() -> list[Reader]:
    return list(_READERS)


def read_volume(path: str | Path, options: ReadOptions | None = None) -> Volume:
    """Read any supported scan into a validated :class:`Volume`.

    Args:
        path: a NIfTI/NRRD/MHA file, a DICOM folder (searched recursively) or one DICOM file.
        options: how to read it; DICOM options on a non-DICOM input are an error, never ignored.

    Raises:
        InputError: one-line, user-facing description of what is wrong with ``path``.
    """
    from medseg.io.validate import validate_volume

    path = Path(path)
    options = options or ReadOptions()
    if not path.exists():
        raise InputError("no such file or folder", path)
    # every folder reaches the DICOM reader, which says what a folder without a readable series holds
    for reader in _READERS:
        if reader.can_read(path):
            if options.has_dicom_options and not reader.takes_dicom_options:
                flags = options.dicom_flags
                verb = "applies" if len(flags) == 1 else "apply"
                raise InputError(f"{', '.join(flags)} {verb} to DICOM input only; this is not a DICOM file", path)
            volume = reader.read(path, options)
            volume.meta.setdefault("source", str(path))
            volume.meta.setdefault("reader", reader.name)
            validate_volume(volume, path)
            return volume
    raise InputError("not a supported image file (expected .nii, .nii.gz, .nrrd, .mha, .mhd or DICOM)", path)
