"""Reading scans into :class:`~medseg.volume.Volume` and writing results back onto their grid."""

from __future__ import annotations

from medseg.io.dicom import is_dicom_input, read_dicom
from medseg.io.nifti import is_nifti, read_nifti, write_labels, write_nifti
from medseg.io.registry import read_volume, register_reader
from medseg.io.sitk import is_sitk_image, read_sitk

register_reader("dicom", is_dicom_input, read_dicom)  # folders, and files that are DICOM
register_reader("sitk", is_sitk_image, read_sitk)
register_reader("nifti", is_nifti, read_nifti)

__all__ = ["read_volume", "register_reader", "write_labels", "write_nifti"]
