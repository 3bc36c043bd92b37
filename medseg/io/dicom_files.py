"""DICOM files: which files are DICOM (by name, gzip, preamble), opening them (``.dcm.gz`` too) and reading
headers quietly; the one warning type of the DICOM reader."""

from __future__ import annotations

import contextlib
import gzip
import warnings
from pathlib import Path

#: names that mark a file as DICOM without opening it
DICOM_FILE_SUFFIXES = (".dcm", ".dcm.gz", ".ima", ".dicom")
# files that are certainly not DICOM: skipped without being opened
_NOT_DICOM_SUFFIXES = (
    ".nii",
    ".nii.gz",
    ".json",
    ".txt",
    ".md",
    ".nrrd",
    ".nhdr",
    ".mha",
    ".mhd",
    ".png",
    ".jpg",
    ".jpeg",
    ".csv",
    ".py",
    ".sh",
    ".bval",
    ".bvec",
    ".xml",
    ".html",
    ".pdf",
    ".zip",
)
_DICOMDIR_SOP = "1.2.840.10008.1.3.10"
_NON_IMAGE_SOP_PREFIXES = {
    "1.2.840.10008.5.1.4.1.1.66": "segmentation / registration object",
    "1.2.840.10008.5.1.4.1.1.481": "radiotherapy object",
    "1.2.840.10008.5.1.4.1.1.88": "structured report",
    "1.2.840.10008.5.1.4.1.1.11": "presentation state",
    "1.2.840.10008.5.1.4.1.1.104": "encapsulated document",
    "1.2.840.10008.5.1.4.1.1.9": "waveform",
}
#: Modality values of non-image objects: what marks them when an anonymiser removed the SOPClassUID
_NON_IMAGE_MODALITIES = {
    "SEG": "segmentation / registration object",
    "REG": "segmentation / registration object",
    "RTSTRUCT": "radiotherapy object",
    "RTPLAN": "radiotherapy object",
    "RTDOSE": "radiotherapy object",
    "RTRECORD": "radiotherapy object",
    "SR": "structured report",
    "PR": "presentation state",
    "DOC": "encapsulated document",
}
_LOCALIZER_TYPES = {"LOCALIZER", "SCOUT", "SURVEY", "TOPOGRAM"}
_PATIENT_KEYS = ("PatientName", "PatientID")


class DicomWarning(UserWarning):
    """Something the user should know about how a series was read (tilt corrected, series picked)."""

    medseg_warning = True


def _warn(message: str, warnings_list: list[str] | None = None) -> None:
    if warnings_list is not None:
        warnings_list.append(message)
    warnings.warn(message, DicomWarning, stacklevel=3)


# ----------------------------------------------------------------------------------------------
# Files


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") and _is_gzip(path) else open(path, "rb")


def is_dicom_file(path: Path) -> bool:
    """A file with the DICM preamble (also inside ``.gz``) or a ``.dcm``/``.ima`` name."""
    path = Path(path)
    if not path.is_file():
        return False
    name = path.name.lower()
    if name.endswith(DICOM_FILE_SUFFIXES):
        return True
    if name.endswith(_NOT_DICOM_SUFFIXES):
        return False
    try:
        with _open(path) as fh:
            head = fh.read(132)
    except (OSError, EOFError):
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def is_dicom_input(path: Path) -> bool:
    """Registry test: a folder (scanned for DICOM when read) or a DICOM file."""
    path = Path(path)
    return path.is_dir() or is_dicom_file(path)


@contextlib.contextmanager
def _quiet_pydicom():
    """pydicom warns about malformed elements as it reads and converts them (wrong VR, over-long or
    invalid values); medseg decides what is usable and says so in one line, so those are not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
        yield


def _read_header(path: Path):
    """Header without pixel data, or ``None`` if the file is not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with _open(path) as fh, _quiet_pydicom():
            try:
                return pydicom.dcmread(fh, stop_before_pixels=True)
            except InvalidDicomError:
                fh.seek(0)
                ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
                # without a preamble, accept only what is clearly a DICOM image header
                return ds if "SOPClassUID" in ds and "SOPInstanceUID" in ds else None
    except (InvalidDicomError, EOFError, OSError, gzip.BadGzipFile):
        return None
    except Exception:  # noqa: BLE001 - pydicom raises many types on garbage; such a file is not DICOM to us
        return None
