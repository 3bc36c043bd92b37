"""Reading scans into :class:`~medseg.volume.Volume` and writing results back onto their grid."""

from __future__ import annotations

from pathlib import Path

from medseg.io.dicom import is_dicom_input, read_dicom
from medseg.io.nifti import is_nifti, read_nifti, write_labels, write_nifti
from medseg.io.registry import IMAGE_SUFFIXES, ReadOptions, read_volume, register_reader
from medseg.io.sitk import is_sitk_image, read_sitk
from medseg.volume import Volume


def _read_dicom(path: Path, options: ReadOptions) -> Volume:
    return read_dicom(path, options.series, resample_irregular=options.resample_irregular, keep_tilt=options.keep_tilt)


def _read_sitk(path: Path, options: ReadOptions) -> Volume:
    return read_sitk(path)


def _read_nifti(path: Path, options: ReadOptions) -> Volume:
    return read_nifti(path)


# folders (every one: the DICOM reader says what a folder without a series holds), and DICOM files
register_reader("dicom", is_dicom_input, _read_dicom, takes_dicom_options=True)
register_reader("sitk", is_sitk_image, _read_sitk)
register_reader("nifti", is_nifti, _read_nifti)

__all__ = ["IMAGE_SUFFIXES", "ReadOptions", "read_volume", "register_reader", "write_labels", "write_nifti"]
