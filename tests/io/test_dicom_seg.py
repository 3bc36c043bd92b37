"""DICOM SEG out (highdicom), read back; and the DICOM commands of the CLI end to end."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from medseg.cli import main
from medseg.errors import MedsegError
from medseg.io.dicom import DicomWarning, read_dicom
from medseg.io.dicom_seg import (
    labels_on_source_frames,
    read_dicom_seg,
    seg_on_source_frames,
    segment_concept,
    write_dicom_seg,
)
from tests.conftest import write_tiny_model

try:
    import highdicom  # noqa: F401
except ImportError:  # the `dicom-seg` extra; CI installs it, so there its absence fails
    if os.environ.get("CI"):
        raise
    pytest.skip("highdicom is not installed (pip install 'medseg[dicom-seg]')", allow_module_level=True)

LABELS = {1: ("liver", (220, 90, 50)), 2: ("kidneys", (240, 220, 40)), 3: ("widget", None)}


def _read(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DicomWarning)
        return read_dicom(path, **kw)


def _labels_for(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint8)
    i, j = shape[0] // 4, shape[1] // 4
    labels[i : 2 * i, j : 3 * j, :] = 1
    labels[2 * i : 3 * i, j : 2 * j, shape[2] // 2 :] = 2
    labels[rng.integers(0, shape[0], 20), rng.integers(0, shape[1], 20), rng.integers(0, shape[2], 20)] = 3
    return labels


def _with_frame_of_reference(source: Path, target: Path) -> Path:
    """A copy of anonymised test data given the FrameOfReferenceUID that real scans carry."""
    import pydicom

    shutil.copytree(source, target)
    for path in target.iterdir():
        ds = pydicom.dcmread(path)
        ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.1"
        ds.save_as(path)
    return target


@pytest.fixture(scope="module")
def ct_folder(test_data) -> Path:
    """dcmqi's real GE CT: 3 slices (4x downsampled to 128 x 128 in tests/data)."""
    return test_data / "dicom" / "dcmqi" / "data" / "segmentations" / "ct-3slice"


def test_seg_round_trip_on_real_ct_equals_labels(tmp_path, ct_folder):
    import pydicom

    volume = _read(ct_folder)
    labels = _labels_for(volume.shape)
    path = write_dicom_seg(labels, volume, tmp_path / "seg.dcm", LABELS, "tiny")
    back, names = read_dicom_seg(path, like=volume)
    np.testing.assert_array_equal(back.array, labels)
    assert names == {1: "liver", 2: "kidneys", 3: "widget"}
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and ds.SegmentationType == "BINARY"
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"  # uncompressed, what viewers display
    assert ds.FrameOfReferenceUID == pydicom.dcmread(next(ct_folder.iterdir())).FrameOfReferenceUID
    referenced = {i.ReferencedSOPInstanceUID for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {f["sop_instance_uid"] for f in volume.meta["dicom"]["frames"]}
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == volume.meta["dicom"]["series_instance_uid"]
    for item in ds.PerFrameFunctionalGroupsSequence:  # each frame names the source image it segments
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert source in referenced
    codes = {s.SegmentLabel: s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in ds.SegmentSequence}
    assert codes == {"liver": "10200004", "kidneys": "64033007", "widget": "85756007"}
    assert all(s.SegmentAlgorithmType == "AUTOMATIC" for s in ds.SegmentSequence)
    colours = {s.SegmentLabel: "RecommendedDisplayCIELabValue" in s for s in ds.SegmentSequence}
    assert colours == {"liver": True, "kidneys": True, "widget": False}
    # without a reference grid, the SEG's own geometry is the source grid (up to index order)
    alone, _ = read_dicom_seg(path)
    ours = nib.as_closest_canonical(nib.Nifti1Image(alone.array, alone.affine))
    truth = nib.as_closest_canonical(nib.Nifti1Image(labels, volume.affine))
    np.testing.assert_allclose(ours.affine, truth.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asanyarray(ours.dataobj), np.asanyarray(truth.dataobj))


def test_seg_round_trip_on_enhanced_multiframe_source(tmp_path, test_data):
    source = test_data / "dicom" / "dicom2nifti" / "tests_data" / "philips_enhanced" / "anatomical" / "001"
    folder = _with_frame_of_reference(source, tmp_path / "src")
    volume = _read(folder)
    labels = _labels_for(volume.shape, seed=1)
    path = write_dicom_seg(labels, volume, tmp_path / "seg.dcm", LABELS)
    back, _ = read_dicom_seg(path, like=volume)
    np.testing.assert_array_equal(back.array, labels)


def test_seg_of_tilted_series_lies_on_the_tilted_source_slices(tmp_path, test_data):
    source = test_data / "dicom" / "dicom2nifti" / "tests_data" / "failing" / "gantrytilting" / "001"
    volume = _read(_with_frame_of_reference(source, tmp_path / "src"))
    assert volume.meta["dicom"]["resampled"] == "gantry tilt"
    labels = _labels_for(volume.shape, seed=2)
    path = write_dicom_seg(labels, volume, tmp_path / "seg.dcm", LABELS)
    on_frames = seg_on_source_frames(path, volume)
    np.testing.assert_array_equal(on_frames, labels_on_source_frames(labels, volume))
    assert on_frames.shape == (4, 512, 32)  # every row, 32 of the 512 columns in tests/data
    # independent check: label 1 sits at the same place in world space on the tilted slices
    frames = volume.meta["dicom"]["frames"]
    world = []
    for k, r, c in np.argwhere(on_frames == 1):
        ori, ps = np.asarray(frames[k]["orientation"]), frames[k]["pixel_spacing"]
        world.append(np.asarray(frames[k]["position"]) + c * ps[1] * ori[:3] + r * ps[0] * ori[3:])
    centre_on_frames = np.diag([-1.0, -1.0, 1.0]) @ np.mean(world, axis=0)  # LPS -> RAS
    ijk = np.argwhere(labels == 1).mean(axis=0)
    centre_in_volume = volume.affine[:3, :3] @ ijk + volume.affine[:3, 3]
    np.testing.assert_allclose(centre_on_frames, centre_in_volume, atol=1.0)  # within ~2 voxels (0.42 mm)


def test_seg_needs_a_dicom_source_and_a_frame_of_reference(tmp_path, ct_folder, test_data):
    volume = _read(ct_folder)
    labels = _labels_for(volume.shape)
    nifti_like = volume.with_array(volume.array)
    nifti_like.meta = {"source": "scan.nii.gz"}
    with pytest.raises(MedsegError, match="needs a DICOM input series"):
        write_dicom_seg(labels, nifti_like, tmp_path / "a.dcm", LABELS)
    with pytest.raises(MedsegError, match="have no name"):
        write_dicom_seg(labels, volume, tmp_path / "b.dcm", {1: ("liver", None)})
    anonymised = _read(test_data / "dicom" / "dicom2nifti" / "tests_data" / "hitachi" / "anatomical" / "001")
    with pytest.raises(MedsegError, match="no FrameOfReferenceUID"):
        write_dicom_seg(_labels_for(anonymised.shape), anonymised, tmp_path / "c.dcm", LABELS)
    assert not list(tmp_path.iterdir())  # nothing left behind


def test_a_models_own_label_code_is_the_segment_concept(tmp_path, ct_folder):
    import pydicom

    volume = _read(ct_folder)
    labels = _labels_for(volume.shape)
    info = {**LABELS, 3: ("widget", None, {"scheme": "SCT", "value": "71854001", "meaning": "Colon"})}
    ds = pydicom.dcmread(write_dicom_seg(labels, volume, tmp_path / "seg.dcm", info))
    concepts = {s.SegmentLabel: s.SegmentedPropertyTypeCodeSequence[0] for s in ds.SegmentSequence}
    widget = concepts["widget"]
    assert (widget.CodeValue, widget.CodingSchemeDesignator, widget.CodeMeaning) == ("71854001", "SCT", "Colon")
    assert concepts["liver"].CodeValue == "10200004"  # no code given: looked up by name


def test_sparse_label_values_become_segments_1_to_n_with_totalsegmentator_codes(tmp_path, ct_folder):
    """A subset of a big label set (TotalSegmentator's --roi-subset: liver is 5, aorta 52) is renumbered
    1..N in value order; names and SNOMED codes (TotalSegmentator's own mapping) stay with each segment."""
    pytest.importorskip("totalsegmentator")
    import pydicom

    from medseg.models.totalsegmentator import snomed_codes

    codes = snomed_codes()
    volume = _read(ct_folder)
    labels = (_labels_for(volume.shape) * np.uint8(0)).astype(np.uint8)
    ref = _labels_for(volume.shape)
    labels[ref == 1], labels[ref == 2] = 5, 52
    info = {5: ("liver", (200, 80, 60), codes["liver"]), 52: ("aorta", (220, 30, 30), codes["aorta"])}
    path = write_dicom_seg(labels, volume, tmp_path / "seg.dcm", info)
    back, names = read_dicom_seg(path, like=volume)
    assert names == {1: "liver", 2: "aorta"}
    np.testing.assert_array_equal(back.array, np.select([labels == 5, labels == 52], [1, 2], 0))
    ds = pydicom.dcmread(path)
    concepts = {s.SegmentLabel: s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in ds.SegmentSequence}
    assert concepts == {"liver": codes["liver"]["value"], "aorta": codes["aorta"]["value"]}


def test_segment_concepts():
    assert segment_concept("Liver")[1].value == "10200004"
    assert segment_concept("lungs")[1].value == "39607008"
    assert segment_concept("spine")[1].value == "421060004"
    assert segment_concept("body")[1].value == "38266002"
    category, concept = segment_concept("tumour")
    assert (category.value, concept.value) == ("49755003", "108369006")
    assert segment_concept("class7")[1].value == "85756007"


# --- CLI ------------------------------------------------------------------------------------------


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_infer_dicom_folder_writes_nifti_and_seg_that_agree(tmp_path, ct_folder):
    model = write_tiny_model(tmp_path / "model", out_channels=4)
    out = tmp_path / "out" / "ct_seg.nii.gz"
    result = _run(
        "infer", ct_folder, "-o", out, "--model", model, "--device", "cpu", "-q", "--format", "nifti+dicom-seg"
    )
    assert result.exit_code == 0, result.output
    seg_path = out.with_name("ct_seg.dcm")
    assert out.is_file() and seg_path.is_file() and out.with_name("ct_seg.json").is_file()
    img = nib.load(str(out))
    volume = _read(ct_folder)
    np.testing.assert_allclose(img.affine, volume.affine, atol=1e-4)
    labels = np.asanyarray(img.dataobj)
    back, names = read_dicom_seg(seg_path, like=volume)
    np.testing.assert_array_equal(back.array, labels)
    assert names == {1: "class1", 2: "class2", 3: "class3"}
    assert not [p for p in out.parent.iterdir() if ".medseg-tmp-" in p.name]


def test_cli_infer_dicom_seg_only_and_refusal_for_nifti_input(tmp_path, ct_folder):
    model = write_tiny_model(tmp_path / "model", out_channels=3)
    out = tmp_path / "seg.dcm"
    result = _run("infer", ct_folder, "-o", out, "--model", model, "--device", "cpu", "-q", "--format", "dicom-seg")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["seg.dcm", "seg.json"]
    nifti = tmp_path / "scan.nii.gz"
    assert _run("convert", ct_folder, nifti).exit_code == 0
    result = _run("infer", nifti, "--model", model, "--device", "cpu", "-q", "--format", "dicom-seg")
    assert result.exit_code == 1 and "needs a DICOM input series" in result.stderr
    assert not (tmp_path / "scan_seg.dcm").exists() and not (tmp_path / "scan_seg.json").exists()


def test_cli_series_lists_without_patient_identity(test_data):
    import pydicom

    folder = test_data / "dicom" / "dicom2nifti" / "tests_data" / "failing"
    result = _run("series", folder)
    assert result.exit_code == 0, result.output
    assert "not a volume" in result.output and "gantry tilt 14.00 deg" in result.output
    assert "uneven slice gaps (5, 10 mm)" in result.output and "7 stack(s)" in result.output
    first = next((folder / "notavolume" / "001").iterdir())
    name = str(pydicom.dcmread(first).PatientName)
    assert name and name not in result.output
    shown = _run("series", folder, "--show-patient")
    assert name in shown.output


def test_cli_convert_warns_on_tilt_and_errors_in_one_line(tmp_path, test_data):
    base = test_data / "dicom" / "dicom2nifti" / "tests_data" / "failing"
    result = _run("convert", base / "gantrytilting", tmp_path / "t.nii.gz")
    assert result.exit_code == 0, result.output
    assert "medseg: warning:" in result.stderr and "gantry tilt" in result.stderr
    img = nib.load(str(tmp_path / "t.nii.gz"))
    assert img.shape[2] == 4 and img.get_data_dtype() == np.int16
    bad = _run("convert", base / "sliceincrement" / "001", tmp_path / "s.nii.gz")
    assert bad.exit_code == 1 and len(bad.stderr.strip().splitlines()) == 1
    assert "--resample-irregular" in bad.stderr and not (tmp_path / "s.nii.gz").exists()
    ok = _run("convert", base / "sliceincrement", tmp_path / "s.nii.gz", "--series", "2", "--resample-irregular")
    assert ok.exit_code == 0, ok.output
    assert nib.load(str(tmp_path / "s.nii.gz")).shape == (128, 128, 5)  # cropped from 512 x 512 in tests/data


def test_dicom_seg_from_an_anonymised_source_refuses_before_inference(tmp_path, ct_folder):
    """Blank UIDs (series, SOP instances, frame of reference): a SEG could reference nothing; refused with
    the missing UIDs named, before the model runs, and nothing is written."""
    import pydicom

    folder = tmp_path / "anon"
    shutil.copytree(ct_folder, folder)
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ""
        ds.SeriesInstanceUID = ""
        ds.FrameOfReferenceUID = ""
        ds.save_as(path)
    out = tmp_path / "out"
    result = _run("infer", folder, "-o", out / "seg.dcm", "--format", "dicom-seg", "--model", "ct-anatomy")
    assert result.exit_code == 1
    assert "SOPInstanceUID" in result.output and "FrameOfReferenceUID" in result.output
    assert "NIfTI" in result.output
    assert not out.exists() or not list(out.iterdir())
