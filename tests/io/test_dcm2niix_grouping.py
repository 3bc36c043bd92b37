"""medseg's grouping of real DICOM folders against dcm2niix itself (issue 16), on the sets of tests/data.

The comparison (in :mod:`tests.io.dcm2niix_pairing`): dcm2niix (the PyPI package's binary) converts each set and
medseg groups and reads the same folder; their volumes must pair up one to one by shape, world geometry and
voxels, and whatever does not must be a row of its ``DIFFERENCES`` table (a row that no longer applies fails
too). The sets here are the 41 development sets cut down (tests/data/README.md says how; one is a byte-identical
copy of another and left out), which keeps a case of
every row: mosaics, enhanced multi-frame objects, multi-volume series, gantry tilt, missing slices, compressed
transfer syntaxes, single images, radiographs, scouts, colour and SEG objects. ``benchmarks/dcm2niix_grouping.py``
runs the same comparison on the whole development sets (the README's counts).

Anonymised copies (blank or missing SeriesInstanceUID, SOPInstanceUID, SOPClassUID,
FrameOfReferenceUID; made with test_dicom's helper) must give medseg the same volumes as the
originals. dcm2niix groups them as their originals too (checked as well, as a note: it is not medseg's
concern); comparing the two is how medseg's grouping of anonymised SEG objects and of two studies' series in
one folder was found wrong and fixed (the regression tests at the end).
"""

from __future__ import annotations

import os
import shutil
import warnings

import pytest

from medseg.io.dicom import DicomWarning, read_dicom, scan_dicom
from tests.io.dcm2niix_pairing import ANONYMISED_SETS, D2N, SETS, compare, convert, dcm2niix_binary, same_volumes
from tests.io.test_dicom import _anonymised

#: the development sets tests/data leaves out: this one's files are byte for byte those of compressed_j2k/001
NOT_IN_TEST_DATA = [f"{D2N}/generic/compressed/001"]


@pytest.fixture(scope="module")
def dcm2niix_bin() -> str:
    found = dcm2niix_binary()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("dcm2niix is missing on CI (it comes with the test extra: pip install -e '.[test]')")
        pytest.skip("dcm2niix not installed (pip install dcm2niix, or the test extra)")
    return found


_CACHE: dict = {}


@pytest.fixture(scope="module")
def converted(test_data, dcm2niix_bin, tmp_path_factory):
    """``converted(case, how)`` -> (dcm2niix outputs, medseg outputs); ``how``: original, blank, missing."""

    def run(case: str, how: str = "original"):
        key = (case, how)
        if key not in _CACHE:
            _CACHE[key] = convert(dcm2niix_bin, test_data, case, tmp_path_factory.mktemp("d2n"), how)
        return _CACHE[key]

    return run


@pytest.mark.parametrize("case", [case for case in SETS if case not in NOT_IN_TEST_DATA])
def test_grouping_matches_dcm2niix(converted, case):
    result = compare(case, *converted(case))
    assert not result.unexplained_d and not result.unexplained_m, (
        f"{case}: dcm2niix volumes without a medseg stack: {result.unexplained_d}; "
        f"medseg stacks without a dcm2niix volume: {result.unexplained_m} "
        f"(paired: {[(d.label, m.label) for d, m in result.pairs]})"
    )
    assert not result.stale, f"{case}: DIFFERENCES rows that no longer apply: {result.stale}"


@pytest.mark.parametrize("how", ["blank", "missing"])
@pytest.mark.parametrize("case", ANONYMISED_SETS)
def test_anonymised_copies_group_as_the_originals(converted, case, how):
    """medseg: the same volumes, voxel for voxel, without the UIDs. dcm2niix (noted: not medseg's concern)
    groups every anonymised copy here as its original too; only its float scaling of the Legacy Converted
    Enhanced toy images changes (hence the comparison up to a linear rescale)."""
    theirs, ours = converted(case)
    anon_theirs, anon_ours = converted(case, how)
    assert ours, f"{case}: medseg found no stack: nothing to compare"
    lost, extra = same_volumes(ours, anon_ours)
    assert not lost and not extra, f"medseg, {how} UIDs: volumes lost {lost}, volumes gained {extra}"
    lost, extra = same_volumes(theirs, anon_theirs, exact=False)
    assert not lost and not extra, f"dcm2niix, {how} UIDs: volumes lost {lost}, volumes gained {extra}"


# --- regressions found by the anonymised comparison (no dcm2niix needed) --------------------------


@pytest.mark.parametrize("how", ["blank", "missing"])
def test_anonymised_seg_is_still_not_an_image(test_data, tmp_path, how):
    """Before: without its SOPClassUID a DICOM SEG was read as an image stack (its frames as slices), so a
    folder with a CT and its SEG held '2 series that could be the scan'. The file meta's
    MediaStorageSOPClassUID, the Modality (SEG) or the SegmentSequence still mark it. (dcmqi's liver SEG, which is
    pydicom's liver.dcm; its CT is 4x downsampled in tests/data, which does not matter here.)"""
    folder = tmp_path / "study"
    shutil.copytree(test_data / "dicom" / "dcmqi/data/segmentations/ct-3slice", folder / "ct")
    shutil.copy(test_data / "dicom" / "pydicom_data/data_store/liver.dcm", folder / "seg.dcm")
    anon = _anonymised(folder, tmp_path / "anon", how)
    scan = scan_dicom(anon)
    assert [kind for _, kind in scan.non_images] == ["segmentation / registration object"]
    assert [len(s.frames) for s in scan.stacks] == [3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DicomWarning)
        assert read_dicom(anon).shape == (128, 128, 3)


@pytest.mark.parametrize("how", ["blank", "missing"])
def test_two_studies_in_one_folder_without_series_uids_stay_apart(test_data, tmp_path, how):
    """Before: without SeriesInstanceUIDs, two 3-plane MR localizers of two studies (series 2, same
    description, one folder) merged into two 2-slice 'volumes' of images 7 mm and 3 mm apart in two
    directions, read as gantry tilt. Series numbers restart in every study: the study now splits too."""
    source = test_data / "dicom" / "pydicom_testfiles/dicomdirtests/98892003/MR2"
    anon = scan_dicom(_anonymised(source, tmp_path / "anon", how))
    original = scan_dicom(source)
    assert sorted(len(s.frames) for s in anon.stacks) == sorted(len(s.frames) for s in original.stacks) == [1] * 7
    assert not anon.candidates
