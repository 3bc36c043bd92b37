"""`medseg infer` with the default model on real files written by others (tests/data: some are blocks cut
from upstream's files, with their headers' geometry codes kept).

The default model (``ct-anatomy``) is a CT model, so it refuses these MR scans unless
``--force-modality`` is given; forced, its labels mean nothing, and what is checked is what must
hold for any input: the label file's geometry equals the input's exactly.
"""

import json

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from medseg.cli import main

GEOMETRY_CASES = {
    "las-big-endian": "nifti/nibabel/tests_data/anatomical.nii",
    "ras-sform-only-mni": "nifti/nilearn_mni152/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "rotated-float-big-endian": "dicom/monai_testing_data/reoriented_anat_moved.nii",
    "ras-siemens-t1-dcm2niix": "dicom/dcm2niix_qa/dcm_qa_frag/Ref/anat-T1w_acq-tfl_5001.nii",  # 3 of 96 slices
    "double-oblique-hitachi-pil": "dicom/dicom2nifti/tests_data/hitachi/anatomical/001_ground_truth.nii.gz",
    "coronal-philips-lip": "dicom/dicom2nifti/tests_data/philips/anatomical/001_ground_truth.nii.gz",
    "oblique-anisotropic-lps-float64": (
        "dicom/dicom2nifti/tests_data/generic/anatomical/002_non_isotropic_ground_truth.nii.gz"
    ),
    "trailing-singleton-4d": "dicom/dicom2nifti/tests_data/philips_enhanced/anatomical/001_ground_truth.nii.gz",
    "single-slice": "dicom/dicom2nifti/tests_data/ge/anatomical/001_single_slice_ground_truth.nii.gz",
    "philips-enhanced-fieldmap-ras": "dicom/dcm2niix_qa/dcm_qa_enh/Ref/Philips_WIP_B0_NS_801_e1.nii",
}


@pytest.mark.parametrize("case", list(GEOMETRY_CASES))
def test_infer_on_real_nifti_keeps_exact_geometry(test_data, tmp_path, case):
    src = test_data / GEOMETRY_CASES[case]
    out = tmp_path / "labels.nii.gz"
    refused = CliRunner().invoke(main, ["infer", str(src), "-o", str(out), "--device", "cpu", "-q"])
    assert refused.exit_code == 1 and "needs CT in Hounsfield units" in refused.stderr and not out.exists()
    args = ["infer", str(src), "-o", str(out), "--device", "cpu", "-q", "--stats", "--force-modality"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + result.stderr
    ref, lab = nib.load(str(src)), nib.load(str(out))
    assert lab.shape == ref.shape
    assert np.array_equal(lab.affine, ref.affine)
    assert np.array_equal(lab.header.get_qform(), ref.header.get_qform())
    assert np.array_equal(lab.header.get_sform(), ref.header.get_sform())
    assert int(lab.header["qform_code"]) == int(ref.header["qform_code"])
    assert int(lab.header["sform_code"]) == int(ref.header["sform_code"])
    assert lab.get_data_dtype() == np.uint8
    sidecar = json.loads((tmp_path / "labels.json").read_text())
    assert sidecar["input"]["shape"] == list(ref.shape[:3])
    assert sidecar["modality"]["forced"] is True


@pytest.mark.parametrize(
    "rel, expected",
    [
        ("dicom/dcm2niix_qa/dcm_qa/Ref/ax_asc_35sl_6.nii.gz", "2 volumes"),
        ("nifti/nibabel/tests_data/functional.nii", "20 volumes"),
        ("dicom/dicom2nifti/tests_data/generic/rgb/001_ground_truth.nii.gz", "voxel type"),
    ],
)
def test_real_files_medseg_must_refuse(test_data, tmp_path, rel, expected):
    src = test_data / rel
    result = CliRunner().invoke(main, ["infer", str(src), "-o", str(tmp_path / "x.nii.gz"), "--device", "cpu"])
    assert result.exit_code == 1
    assert expected in result.stderr and src.name in result.stderr
    assert not list(tmp_path.iterdir())
