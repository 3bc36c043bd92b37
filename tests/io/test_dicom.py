"""DICOM series in: geometry against converters written by others, and the expected refusals.

References (tests/data, see its README.md): dicom2nifti's ground-truth NIfTI and dcm2niix's ``Ref/``
output. Both are compared in world space: each image is brought to the closest canonical (RAS)
orientation, then the affines must agree within 1e-3 mm and the voxel values must agree. Most series
are cut down there (cropped in-plane, fewer slices or volumes); each cut reference is the block of
upstream's file that the converter itself writes for the cut series.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.errors import InputError
from medseg.io import read_volume
from medseg.io.dicom import DicomWarning, read_dicom, scan_dicom
from medseg.io.dicom_geometry import analyze_stack, untilt

AFFINE_TOL_MM = 1e-3
ROOT = Path(__file__).resolve().parents[2]
#: the CIP chest CT series (ct-64Dicom upstream), shipped as sample data
CT64_DICOM = ROOT / "sample_data" / "chest_ct_dicom"
#: dcmqi's GE CT (3 slices of 512 x 512 upstream, 4x downsampled in tests/data)
CT_3SLICE = "dcmqi/data/segmentations/ct-3slice"
CT_3SLICE_SHAPE = (128, 128, 3)

D2N_CASES = [
    "anatomical/001",
    "anatomical/001_implicit",
    "ge/anatomical/001",
    "ge/anatomical/001_implicit",
    "generic/anatomical/001",
    "generic/anatomical/001_implicit",
    "generic/anatomical/002_non_isotropic",
    "generic/compressed_j2k/001",  # upstream's generic/compressed/001 holds the same files, byte for byte
    "generic/compressed_jpeg/001",
    "generic/compressed_jpegls/001",
    "generic/compressed_rle/001",
    "hitachi/anatomical/001",
    "hitachi/anatomical/001_implicit",
    "hyperfine/anatomical/001",
    "philips/anatomical/001",
    "philips/anatomical/001_implicit",
    "philips_enhanced/anatomical/001",
    "philips_enhanced/anatomical/001_implicit",
    "siemens/anatomical/001",
    "siemens/anatomical/001_implicit",
    "siemens_multiframe/anatomical/001",
    "failing/slicecount/001",
]


def _canonical(data: np.ndarray, affine: np.ndarray):
    img = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    return np.asanyarray(img.dataobj), img.affine


#: upstream's compressed cases have one ground truth (five byte-identical files); tests/data keeps one
COMPRESSED_TRUTH = "generic/compressed_j2k/001_ground_truth.nii.gz"


def _ref(path: Path):
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    return data, img.affine


def assert_matches(volume, ref_data, ref_affine, affine_tol=AFFINE_TOL_MM, rtol=0.0, atol=0.0):
    ours, our_affine = _canonical(volume.array, volume.affine)
    theirs, their_affine = _canonical(ref_data, ref_affine)
    assert ours.shape == theirs.shape
    diff = float(np.abs(our_affine - their_affine).max())
    assert diff <= affine_tol, f"affine differs by {diff} mm"
    np.testing.assert_allclose(ours.astype(np.float64), theirs.astype(np.float64), rtol=rtol, atol=atol)


def _read(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DicomWarning)
        return read_dicom(path, **kw)


@pytest.fixture(scope="module")
def d2n(test_data) -> Path:
    return test_data / "dicom" / "dicom2nifti" / "tests_data"


@pytest.fixture(scope="module")
def qa(test_data) -> Path:
    return test_data / "dicom" / "dcm2niix_qa"


# --- references: dicom2nifti (GE, Siemens, Philips, Hitachi, Hyperfine; compressed; enhanced) -----


@pytest.mark.parametrize("case", D2N_CASES)
def test_matches_dicom2nifti_ground_truth(d2n, case):
    volume = read_volume(d2n / case)  # through the registry, as `infer` reads it
    assert volume.meta["reader"] == "dicom"
    data, affine = _ref(d2n / (COMPRESSED_TRUTH if "/compressed" in case else f"{case}_ground_truth.nii.gz"))
    # Philips stores float display values (RescaleSlope); dicom2nifti writes them as float32 too
    assert_matches(volume, data, affine, atol=1e-3 if data.dtype.kind == "f" else 0)


# --- references: dcm2niix ------------------------------------------------------------------------


@pytest.mark.parametrize("ts", range(1, 10))
def test_mosaic_in_nine_transfer_syntaxes_matches_dcm2niix(qa, ts):
    """Siemens mosaic, demosaiced; Explicit/Implicit/BigEndian, RLE, JPEG-LL, JPEG-LS, J2K. dcm2niix's nine
    references are one file (byte-identical upstream), kept once."""
    volume = _read(qa / "dcm_qa_ts" / "In" / f"{ts}.dcm")  # one file: its own series number
    assert volume.shape == (64, 64, 35)
    assert_matches(volume, *_ref(qa / "dcm_qa_ts" / "Ref" / "1.nii.gz"))


def test_mosaic_time_series_matches_dcm2niix(qa):
    """An oblique axial mosaic series (2 volumes, so 4D) with a stray .nii among its files, which is skipped.

    Upstream's other five series (coronal, sagittal, multiband JPEG-lossless/J2K) are left out of tests/data
    for size; benchmarks/dcm2niix_grouping.py compares medseg with dcm2niix on all of them."""
    volume = _read(qa / "dcm_qa" / "In" / "Orientation" / "ax" / "axasc35")
    assert volume.array.ndim == 4 and volume.array.shape[3] == 2
    assert_matches(volume, *_ref(qa / "dcm_qa" / "Ref" / "ax_asc_35sl_6.nii.gz"))


def test_ge_multi_volume_series_is_split_not_stacked(qa):
    """16 files = 8 slices x 2 volumes in one folder (cut from upstream's 15 x 10): 4D like dcm2niix, not one
    stack of 16 slices."""
    volume = _read(qa / "dcm_qa_nih" / "In")
    assert volume.array.shape == (64, 64, 8, 2)
    assert_matches(volume, *_ref(qa / "dcm_qa_nih" / "Ref" / "DCM2NIIX_regression_test_4.nii"))


def test_siemens_xa_enhanced_4d_matches_dcm2niix(qa):
    """One enhanced file per volume (the first 2 of upstream's 4)."""
    volume = _read(qa / "dcm_qa_enh" / "In" / "Siemens")
    assert volume.array.shape == (64, 64, 6, 2)
    assert_matches(volume, *_ref(qa / "dcm_qa_enh" / "Ref" / "Siemens_REST1_w_SMS_PF7-8_6.nii"))


def test_fragmented_jpeg_lossless_matches_dcm2niix_and_every_slice_position(qa):
    """3 of the 96 sagittal slices (the files as they are). dcm2niix took the slice spacing of its reference from
    the first two of the 96 (2.0001 mm); we fit the positions (2.000001 mm).

    Its affine is therefore 1e-4 mm/slice off ours, 0.005 mm at these slices (47-49) and 0.01 mm at the last of
    the 96; ours puts every slice exactly at its ImagePositionPatient, which is checked here to 1e-3 mm.
    """
    folder = qa / "dcm_qa_frag" / "In"
    volume = _read(folder)
    assert_matches(volume, *_ref(qa / "dcm_qa_frag" / "Ref" / "anat-T1w_acq-tfl_5001.nii"), affine_tol=0.011)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine
    for k, frame in enumerate(volume.meta["dicom"]["frames"]):
        np.testing.assert_allclose(lps[:3, :3] @ [0, 0, k] + lps[:3, 3], frame["position"], atol=AFFINE_TOL_MM)


def _philips_precise_factor(path: Path, frame: int | None = None) -> float:
    """dcm2niix's Philips 'precise' scale: stored x RS + RI becomes (stored x RS + RI) / (RS x SS)."""
    import gzip

    import pydicom

    with gzip.open(path) if path.name.endswith(".gz") else open(path, "rb") as fh:
        ds = pydicom.dcmread(fh, stop_before_pixels=True)
    if frame is None:
        return 1.0 / (float(ds.RescaleSlope) * float(ds[0x2005, 0x100E].value))
    item = ds.PerFrameFunctionalGroupsSequence[frame]
    rs = float(item.PixelValueTransformationSequence[0].RescaleSlope)
    return 1.0 / (rs * float(item[0x2005, 0x140F][0][0x2005, 0x100E].value))


def test_philips_field_map_splits_into_magnitude_and_hz_like_dcm2niix(qa):
    """One enhanced file, 16 frames = 2 image types x 8 slices (cut from 32): two stacks, not one 2-volume stack.

    dcm2niix writes the magnitude with Philips' private 'precise' scaling; medseg keeps the DICOM
    display values (RescaleSlope/Intercept), so the magnitude is compared after applying that factor.
    """
    folder = qa / "dcm_qa_enh" / "In" / "Philips"
    stacks = scan_dicom(folder).stacks
    assert [s.split["image_type"][-1] for s in stacks] == ["M", "FIELD_MAP"]
    with pytest.raises(InputError, match="2 series that could be the scan"):
        _read(folder)
    magnitude = _read(folder, series=stacks[0].id)
    factor = _philips_precise_factor(folder / "IM_0027_fMAP.dcm", frame=0)
    scaled = magnitude.with_array(magnitude.array * factor)
    assert_matches(scaled, *_ref(qa / "dcm_qa_enh" / "Ref" / "Philips_WIP_B0_NS_801_e1.nii"), rtol=1e-5, atol=1e-2)
    field_map = _read(folder, series=stacks[1].id)
    ref = _ref(qa / "dcm_qa_enh" / "Ref" / "Philips_WIP_B0_NS_801_e2_fieldmaphz.nii")
    assert_matches(field_map, *ref, rtol=1e-5, atol=1e-2)


@pytest.mark.parametrize("variant", ["cl", "enh"])
def test_philips_pcasl_classic_and_enhanced_give_dcm2niix_4d(qa, variant):
    """18 gzipped images (or one 18-frame file) = 3 slices x 6 volumes (cut from 40 slices), in dcm2niix's volume
    order."""
    folder = qa / "dcm_qa_philips_enh" / "In" / variant
    volume = _read(folder)
    assert volume.array.shape == (96, 96, 3, 6)
    first = sorted(folder.iterdir())[0]
    factor = _philips_precise_factor(first, frame=0 if variant == "enh" else None)
    scaled = volume.with_array(volume.array * factor)
    ref = _ref(qa / "dcm_qa_philips_enh" / "Ref" / f"1903_WIP_SOURCE_-_3DpCASL_{variant}.nii.gz")
    assert_matches(scaled, *ref, rtol=1e-4, atol=1e-2)


# --- expected refusals: one clear line each ------------------------------------------------------


def _error(path, **kw) -> str:
    with pytest.raises(InputError) as info:
        _read(path, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_all_slices_at_one_position_is_not_a_volume(d2n):
    assert "all 4 images lie at the same position: not a volume" in _error(d2n / "failing/notavolume/001")


def test_missing_slice_is_an_error_unless_resampled(d2n):
    folder = d2n / "failing/sliceincrement/001"
    assert "not uniform (gaps 5, 10 mm" in _error(folder)
    with pytest.warns(DicomWarning, match="interpolated onto 5 slices 5 mm apart"):
        volume = read_dicom(folder, resample_irregular=True)
    assert volume.shape == (128, 128, 5)  # cropped in-plane from 512 x 512 in tests/data
    assert volume.spacing[2] == pytest.approx(5.0, abs=1e-4)
    raw = np.sort([_slice_z(f) for f in sorted(folder.iterdir())])
    np.testing.assert_allclose(volume.affine[2, 3], raw[0], atol=AFFINE_TOL_MM)  # axial: k grows superior
    stack = _read_slices(folder)
    np.testing.assert_array_equal(volume.array[:, :, 0], stack[0])
    np.testing.assert_array_equal(volume.array[:, :, 4], stack[3])
    # the missing slice (between 28.1 and 38.1 mm) is the rounded mean of its neighbours
    expected = np.rint((stack[2].astype(np.float64) + stack[3]) / 2)
    np.testing.assert_array_equal(volume.array[:, :, 3], expected)


def _slice_z(path: Path) -> float:
    import pydicom

    return float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2])


def _read_slices(folder: Path) -> list[np.ndarray]:
    import pydicom

    datasets = sorted((pydicom.dcmread(p) for p in folder.iterdir()), key=lambda d: float(d.ImagePositionPatient[2]))
    return [(d.pixel_array.T * float(d.RescaleSlope) + float(d.RescaleIntercept)) for d in datasets]


def test_two_orientations_in_one_series_are_two_stacks_and_ambiguous(d2n):
    message = _error(d2n / "failing/sliceorientation/001")
    assert "2 series that could be the scan" in message and "#1" in message and "#2" in message


def test_single_2d_image_colour_and_non_image_objects_are_refused(test_data, d2n):
    assert "single 2D image" in _error(d2n / "ge/anatomical/001_single_slice")
    assert "colour image" in _error(d2n / "generic/rgb/001")
    testfiles = test_data / "dicom" / "pydicom_testfiles"
    assert "single 2D image" in _error(testfiles / "CT_small.dcm")
    assert "radiotherapy object, not an image volume" in _error(testfiles / "rtstruct.dcm")
    seg = test_data / "dicom" / "pydicom_data" / "data_store" / "liver.dcm"
    assert "segmentation" in _error(seg)


def test_folder_of_unrelated_files_and_truncated_file(tmp_path, d2n):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "data.bin").write_bytes(b"\x00" * 300)
    assert "no readable image" in _error(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(d2n / "hitachi/anatomical/001", broken)
    victim = sorted(broken.iterdir())[1]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size - 3000])
    message = _error(broken)
    assert victim.name in message and ("cannot decode" in message or "cannot read" in message)


def test_primary_series_is_picked_and_named_when_the_others_are_not_volumes(tmp_path, test_data, d2n):
    shutil.copytree(d2n / "hitachi/anatomical/001", tmp_path / "t2")
    shutil.copy(test_data / "dicom" / "pydicom_testfiles" / "CT_small.dcm", tmp_path / "scout.dcm")
    with pytest.warns(DicomWarning, match="using series .* 1 other stack"):
        volume = read_dicom(tmp_path)
    assert volume.shape == (64, 64, 4) and volume.meta["dicom"]["series_number"] is not None


def test_ambiguous_folder_lists_candidates_and_series_picks_one(test_data):
    root = test_data / "dicom" / "pydicom_testfiles" / "dicomdirtests"
    message = _error(root)
    assert "could be the scan; choose one with --series" in message
    uid = "1.3.6.1.4.1.5962.1.1.0.0.0.1194734704.16302.0.6"
    assert uid in message
    volume = _read(root, series=uid)
    assert volume.shape == (16, 16, 5) and volume.meta["dicom"]["series_instance_uid"] == uid
    assert "no series 'nope'" in _error(root, series="nope")


def test_one_file_reads_its_whole_series(d2n):
    volume = _read(d2n / "siemens/anatomical/001/IM-0001-0113-0001.dcm")
    assert volume.shape == (64, 64, 4)  # cropped in-plane from 256 x 256 in tests/data


def test_slice_order_ignores_file_names_and_instance_numbers(tmp_path, d2n):
    """Shuffle file names and InstanceNumbers: the volume must not change."""
    import pydicom

    source = d2n / "philips/anatomical/001"
    files = sorted(source.iterdir())
    for n, path in enumerate(files):
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = 100 - 7 * n
        ds.save_as(tmp_path / f"{(n * 3) % len(files)}_{path.name[::-1]}")
    shuffled, reference = _read(tmp_path), _read(source)
    np.testing.assert_array_equal(shuffled.array, reference.array)
    np.testing.assert_array_equal(shuffled.affine, reference.affine)


# --- gantry tilt ---------------------------------------------------------------------------------


def test_gantry_tilt_is_resampled_with_a_warning_or_kept_sheared(d2n):
    import pydicom

    folder = d2n / "failing/gantrytilting/001"
    with pytest.warns(DicomWarning, match="gantry tilt 14.00 deg"):
        volume = read_dicom(folder)
    rot = volume.affine[:3, :3] / np.array(volume.spacing)
    np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=1e-9)  # orthogonal grid
    assert volume.meta["dicom"]["resampled"] == "gantry tilt" and not volume.meta["dicom"]["on_source_grid"]
    with pytest.warns(DicomWarning, match="kept in a sheared affine"):
        sheared = read_dicom(folder, keep_tilt=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ sheared.affine
    datasets = sorted((pydicom.dcmread(p) for p in folder.iterdir()), key=lambda d: float(d.ImagePositionPatient[2]))
    for k, ds in enumerate(datasets):
        np.testing.assert_allclose(lps[:3, :3] @ [0, 0, k] + lps[:3, 3], ds.ImagePositionPatient, atol=AFFINE_TOL_MM)
        np.testing.assert_array_equal(sheared.array[:, :, k], ds.pixel_array.T.astype(np.int32) - 1024)
    # every resampled slice carries the same values, shifted in-plane: the slice sums agree closely
    body = volume.array.astype(np.float64) + 1024
    ratio = body.sum(axis=(0, 1)) / (sheared.array.astype(np.float64) + 1024).sum(axis=(0, 1))
    np.testing.assert_allclose(ratio, 1.0, rtol=2e-3)


def test_untilt_shifts_each_slice_by_its_drift():
    """A stack drifting exactly one column per slice comes back as identical, aligned slices."""
    rng = np.random.default_rng(0)
    plane = rng.integers(0, 100, size=(6, 5)).astype(np.float32)
    data = np.zeros((9, 5, 4), np.float32)
    for k in range(4):
        data[k : k + 6, :, k] = plane
    orientation = np.array([1.0, 0, 0, 0, 1, 0])
    affine = np.eye(4)
    affine[:3, 2] = [-1.0, 0, 2.0]  # each slice starts one column further left in world space
    out, new_affine = untilt(data, affine, orientation, fill=0.0)
    np.testing.assert_allclose(new_affine[:3, 2], [0, 0, 2.0])
    for k in range(4):
        np.testing.assert_allclose(out[:, :, k], out[:, :, 0])


def test_analyze_stack_groups_volumes_and_detects_gaps():
    orientation = np.array([1.0, 0, 0, 0, 1, 0])
    z = [0.0, 2.0, 4.0, 8.0]
    g = analyze_stack(np.array([[0, 0, v] for v in z]), orientation)
    assert g.irregular and g.problem is None
    positions = np.array([[0, 0, v] for v in [0.0, 2.0, 4.0] * 3])
    g = analyze_stack(positions, orientation, [(i // 3,) for i in range(9)])
    assert (g.n_slices, g.n_volumes) == (3, 3) and g.order[1] == [3, 4, 5]
    g = analyze_stack(np.array([[0, 0, v] for v in [0.0, 2.0, 2.0]]), orientation)
    assert "different numbers of images" in g.problem


# --- other vendors and sources load, or fail with a reason ---------------------------------------


@pytest.mark.parametrize(
    "relative,shape",
    [
        (CT_3SLICE, CT_3SLICE_SHAPE),  # GE CT, FFS
        ("lungmask_testdata", (512, 512, 2)),  # CT with an empty Modality tag
        ("pydicom_data/data_store/eCT_Supplemental.dcm", (128, 128, 2)),  # enhanced CT (cropped from 512 x 512)
        ("pydicom_testfiles/dicomdirtests/98892001/CT5N", (16, 16, 5)),
    ],
)
def test_other_sources_load(test_data, relative, shape):
    volume = _read(test_data / "dicom" / relative)
    assert volume.shape == shape
    assert volume.meta["dicom"]["files"]


def test_ct_values_are_hounsfield(test_data):
    import pydicom

    folder = test_data / "dicom" / CT_3SLICE
    volume = _read(folder)
    assert volume.array.dtype == np.int16
    for frame in volume.meta["dicom"]["frames"]:
        ds = pydicom.dcmread(frame["path"])
        k = volume.meta["dicom"]["frames"].index(frame)
        hu = ds.pixel_array.T.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        np.testing.assert_array_equal(volume.array[:, :, k], hu)
    inside = volume.array[volume.array > -3024]  # -3024 pads outside the reconstruction circle
    assert np.mean((inside > -1100) & (inside < -900)) > 0.05  # air
    assert np.mean((inside > -100) & (inside < 100)) > 0.05  # soft tissue


def test_series_listing_hides_patient_identity(test_data):
    scan = scan_dicom(test_data / "dicom" / CT_3SLICE)
    row = scan.stacks[0].summary()
    assert "patient_name" not in row and "patient_id" not in row
    assert row["matrix"] == list(CT_3SLICE_SHAPE) and row["orientation"] == "LPS" and row["problem"] is None
    assert "patient_name" in scan.stacks[0].summary(show_patient=True)


# --- anonymised series: blank or missing UIDs read as the volumes they are ------------------------

_ANON_UIDS = ("SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "FrameOfReferenceUID")


def _anonymised(source: Path, target: Path, how: str) -> Path:
    """A copy of a real series whose anonymiser blanked (``blank``) or removed (``missing``) its UIDs."""
    import pydicom

    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    target.mkdir(parents=True)
    for i, path in enumerate(files):
        try:
            ds = pydicom.dcmread(path)
        except Exception:  # noqa: BLE001 - a non-DICOM file beside the series (e.g. a .nii)
            continue
        for keyword in _ANON_UIDS:
            if keyword in ds:
                if how == "blank":
                    setattr(ds, keyword, "")
                else:
                    delattr(ds, keyword)
        if how == "missing" and hasattr(ds, "file_meta"):
            ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(prefix=None, entropy_srcs=[str(i)])
        ds.save_as(target / f"IM{i:04d}.dcm", enforce_file_format=False)
    return target


@pytest.mark.parametrize("how", ["blank", "missing"])
@pytest.mark.parametrize(
    "relative",
    [
        "dicom2nifti/tests_data/ge/anatomical/001",
        "dicom2nifti/tests_data/siemens/anatomical/001",
        "dicom2nifti/tests_data/philips/anatomical/001",
        "dicom2nifti/tests_data/generic/compressed_j2k/001",
        CT_3SLICE,
        "dcm2niix_qa/dcm_qa_nih/In",  # GE MR
        "dcm2niix_qa/dcm_qa_enh/In/Siemens",  # enhanced multi-frame
        "dcm2niix_qa/dcm_qa_ts/In/3.dcm",  # Siemens mosaic
    ],
)
def test_anonymised_series_read_as_the_original(test_data, tmp_path, relative, how):
    """An anonymiser that blanks SOPInstanceUID used to collapse a series to its first slice (every
    image looked like a copy of it); duplicates are now found by content, grouping by what the files
    share."""
    original = _read(test_data / "dicom" / relative)
    anonymised = _read(_anonymised(test_data / "dicom" / relative, tmp_path / "anon", how))
    assert anonymised.shape == original.shape
    np.testing.assert_allclose(anonymised.affine, original.affine, atol=1e-6)
    np.testing.assert_array_equal(anonymised.array, original.array)


def test_a_file_saved_twice_without_uids_is_one_image(test_data, tmp_path):
    folder = _anonymised(test_data / "dicom" / CT_3SLICE, tmp_path / "anon", "blank")
    first = sorted(folder.iterdir())[0]
    shutil.copy(first, folder / "copy_of_first.dcm")
    assert _read(folder).shape == CT_3SLICE_SHAPE


def test_a_trailing_add_in_image_type_does_not_split_a_series(test_data, tmp_path):
    """GE marks some slices ORIGINAL\\PRIMARY\\AXIAL\\ADD beside ORIGINAL\\PRIMARY\\AXIAL: one series."""
    import pydicom

    source = test_data / "dicom" / CT_3SLICE
    shutil.copytree(source, tmp_path / "ge")
    files = sorted((tmp_path / "ge").iterdir())
    ds = pydicom.dcmread(files[0])
    ds.ImageType = list(ds.ImageType)[:3] + ["ADD"]
    ds.save_as(files[0])
    assert _read(tmp_path / "ge").shape == CT_3SLICE_SHAPE
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]  # a derived image still splits
    ds.save_as(files[0])
    assert len(scan_dicom(tmp_path / "ge").stacks) == 2


# --- found by the reader fuzz (tests/io/test_fuzz_readers.py) ------------------------------------


def _ct_slices(tmp_path, n: int = 4) -> list[Path]:
    source = CT64_DICOM
    folder = tmp_path / "ct"
    folder.mkdir()
    for name in [f"IMG{i:04d}.dcm" for i in range(30, 30 + n)]:
        shutil.copy(source / name, folder / name)
    return sorted(folder.iterdir())


def _rewrite(files, **raw):
    """Put raw element values (DICOM text, written verbatim) into every file."""
    import pydicom

    from tests.io.fuzz_mutators import set_raw

    for f in files:
        ds = pydicom.dcmread(f)
        for keyword, value in raw.items():
            set_raw(ds, keyword, value)
        ds.save_as(f)


@pytest.mark.parametrize(
    "tags, expected",
    [
        ({"ImageOrientationPatient": "2\\0\\0\\0\\2\\0"}, "ImageOrientationPatient (2\\0\\0\\0\\2\\0) is not two orth"),
        ({"ImageOrientationPatient": "0\\0\\0\\0\\0\\0"}, "is not two orthogonal unit vectors"),
        ({"ImageOrientationPatient": "1\\0\\0\\0.7071\\0.7071\\0"}, "is not two orthogonal unit vectors"),
        ({"PixelSpacing": "-1\\-1"}, "PixelSpacing (-1\\-1) is not positive"),
        ({"ImagePositionPatient": "0\\1e300\\0"}, "ImagePositionPatient (0\\1e+300\\0) is beyond any scanner"),
        ({"PixelSpacing": "1e300\\1e300"}, "PixelSpacing (1e+300\\1e+300) is beyond any scanner"),
    ],
    ids=["iop-scaled", "iop-zero", "iop-skewed", "spacing-negative", "position-huge", "spacing-huge"],
)
def test_corrupt_geometry_tags_are_refused_not_read_onto_another_grid(tmp_path, tags, expected):
    """Before: a scaled or skewed orientation or a negative spacing gave labels on a scaled, sheared or
    mirrored grid; a position of 1e300 mm gave a label file with an infinite origin."""
    files = _ct_slices(tmp_path)
    _rewrite(files, **tags)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no numpy overflow/NaN warnings on the way
        message = _error(files[0].parent)
    assert expected in message


def test_rescale_beyond_float32_is_refused(tmp_path):
    """Before: RescaleIntercept 1e300 raised a bare OverflowError ("Python int too large")."""
    files = _ct_slices(tmp_path)
    _rewrite(files, RescaleIntercept="1e300")
    assert "RescaleIntercept 1e+300 give values beyond the float32 range" in _error(files[0].parent)
    _rewrite(files, RescaleIntercept="0", RescaleSlope="1e300")
    assert "beyond the float32 range" in _error(files[0].parent)


@pytest.mark.parametrize(
    "tags, expected",
    [
        ({"RescaleSlope": "abc"}, "RescaleSlope ('abc') is not a finite number"),
        ({"RescaleSlope": "NaN"}, "RescaleSlope ('NaN') is not a finite number"),
        ({"RescaleIntercept": "inf"}, "RescaleIntercept ('inf') is not a finite number"),
        ({"RescaleSlope": "0"}, "RescaleSlope is 0"),
    ],
    ids=["slope-text", "slope-nan", "intercept-inf", "slope-zero"],
)
def test_unreadable_rescale_tags_are_refused_not_taken_as_1_and_0(tmp_path, tags, expected):
    """Before: a slope of NaN or 'abc' silently became 1.0 (intensities the scanner did not write)."""
    files = _ct_slices(tmp_path)
    _rewrite(files, **tags)
    assert expected in _error(files[0].parent)


def test_empty_transfer_syntax_is_a_one_line_error(tmp_path):
    """Before: an empty TransferSyntaxUID that pydicom cannot decode raised AttributeError ('str' has no 'name')."""
    from tests.io.fuzz_mutators import patch_transfer_syntax

    files = _ct_slices(tmp_path)
    for f in files:
        f.write_bytes(patch_transfer_syntax(f.read_bytes(), ""))
    message = _error(files[0].parent)
    assert "cannot decode the pixel data (no transfer syntax)" in message
    assert "Compressed DICOM" not in message  # the decoder hint is for compressed data only


def test_pydicom_warnings_about_malformed_elements_are_not_shown(tmp_path):
    """Before: an over-long UID or a non-numeric IS printed pydicom's two-line UserWarnings beside
    medseg's own message."""
    files = _ct_slices(tmp_path)
    _rewrite(files[:1], SOPInstanceUID="1." * 33)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert read_volume(files[0].parent).shape == (64, 64, 4)
        _rewrite(files[:1], NumberOfFrames="abc")
        assert "invalid literal for int()" in _error(files[0].parent)
    assert [str(w.message) for w in caught if "pydicom" in w.filename] == []
