"""Rebuild ``tests/data`` from the development data set (``data`` in the ``shared`` folder beside the checkout):
the files the tests read, cut down (see tests/data/README.md). Not used by the tests themselves.

Run by hand from the repository root::

    python scripts/vendor_test_data.py            # rewrite tests/data/{ct,dicom,nifti}, then check the cut references
    python scripts/vendor_test_data.py --check    # only re-cut the references from the cut series, and check them

The checks re-derive every reference that was cut from the tool that made it: dicom2nifti (``pip install
dicom2nifti``) on each cropped dicom2nifti case, and dcm2niix (the ``dcm2niix`` package of the test extra) on each
cut dcm2niix_qa set. Each tool's output on the cut input must be a block of upstream's reference (same world
position, same voxels); the block of upstream's file is what is shipped.
"""

from __future__ import annotations

import argparse
import gzip
import io
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "tests" / "data"
SHARED = ROOT.parent / "shared" / "data"
D2N = "dicom/dicom2nifti/tests_data"
QA = "dicom/dcm2niix_qa"

# --- cuts shared with the tests (tests/io/fuzz_mutators.py crops inside them) ----------------------

#: dicom2nifti's 256^2 MR cases are cropped to rows/columns 96:160 (the pixels are random noise upstream)
MR_CROP = (slice(96, 160), slice(96, 160))
#: dicom2nifti's noise CT cases (512^2) are cropped to rows/columns 192:320, keeping their pixel spacing; the tilted
#: ones keep every row (the tilt moves each slice along the rows: a test checks that nothing is lost at the edges)
CT_CROP = (slice(192, 320), slice(192, 320))
CT_TILT_CROP = (slice(0, 512), slice(240, 272))
#: hyperfine's enhanced MR (138 x 112 per frame) is cropped to rows 32:96, columns 24:88
HYPERFINE_CROP = (slice(32, 96), slice(24, 88))
#: the nilearn MNI152 T1 template is cropped to this block
MNI_CROP = (slice(72, 120), slice(92, 140), slice(72, 120))

#: dicom2nifti cases cropped in-plane (rows, columns): the pixels are random noise upstream, the headers real
D2N_CROPPED = {
    **{
        case: MR_CROP
        for case in (
            "anatomical/001",
            "anatomical/001_implicit",
            "ge/anatomical/001",
            "ge/anatomical/001_implicit",
            "ge/anatomical/001_single_slice",
            "generic/anatomical/001",
            "generic/anatomical/001_implicit",
            "siemens/anatomical/001",
            "siemens/anatomical/001_implicit",
            "failing/slicecount/001",
            "philips_enhanced/anatomical/001",
            "philips_enhanced/anatomical/001_implicit",
            "siemens_multiframe/anatomical/001",
        )
    },
    "philips/anatomical/001": (slice(88, 152), slice(88, 152)),  # 240^2
    "philips/anatomical/001_implicit": (slice(88, 152), slice(88, 152)),
    "hyperfine/anatomical/001": HYPERFINE_CROP,
    "failing/sliceorientation/001": (slice(112, 176), slice(112, 176)),  # 288^2
    "failing/gantrytilting/001": CT_TILT_CROP,
    "failing/notavolume/001": CT_CROP,
    "failing/sliceincrement/001": CT_CROP,
    "failing/sliceincrement/002": CT_TILT_CROP,
}
#: the cropped cases with a ground truth upstream (the others are expected refusals)
D2N_WITH_TRUTH = [c for c in D2N_CROPPED if not c.startswith("failing/") or c == "failing/slicecount/001"]
D2N_AS_IS = [
    "generic/anatomical/002_non_isotropic",  # 64 x 28 already
    "hitachi/anatomical/001",  # 64^2, real pixels
    "hitachi/anatomical/001_implicit",
    "generic/rgb/001",  # J2K: compressed files are kept as they are
]
#: compressed transfer syntaxes (kept as they are): the same 4-slice series 4 times; the first 3 files of each.
#: Upstream's generic/compressed/001 is left out: its files are byte for byte those of generic/compressed_j2k/001.
D2N_COMPRESSED = [
    f"generic/{name}/001" for name in ("compressed_j2k", "compressed_jpeg", "compressed_jpegls", "compressed_rle")
]
D2N_COMPRESSED_FILES = [f"IM-0001-000{i}-0001.dcm" for i in (1, 2, 3)]

# --- small helpers ---------------------------------------------------------------------------------


def _copy(rel: str, to: str | None = None) -> Path:
    """``shared/rel`` to ``tests/data/to`` (default: the same path), file or folder, without the read-only bits."""
    src, dst = SHARED / rel, HERE / (to or rel)
    if src.is_dir():
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            _copy(str(path.relative_to(SHARED)), str(Path(to or rel) / path.relative_to(src)))
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def _out(rel: str) -> Path:
    path = HERE / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _ds_text(value: float) -> str:
    """A DS value of at most 16 characters."""
    text = f"{value:.10g}"
    return text if len(text) <= 16 else f"{value:.8g}"


def _read_dicom(path: Path):
    import pydicom

    if path.name.endswith(".gz"):
        with gzip.open(path) as fh:
            return pydicom.dcmread(io.BytesIO(fh.read()))
    return pydicom.dcmread(path)


def _save_dicom(ds, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz"):
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=False)
        path.write_bytes(gzip.compress(buffer.getvalue(), compresslevel=9, mtime=0))
    else:
        ds.save_as(path, enforce_file_format=False)


def _planes(ds):
    """Per frame: (the dataset holding its ImagePositionPatient, its orientation, its pixel spacing)."""
    if "PerFrameFunctionalGroupsSequence" not in ds:
        return [(ds, ds.ImageOrientationPatient, ds.PixelSpacing)]
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else ds

    def find(item, sequence, keyword):
        for holder in (item, shared):
            if sequence in holder:
                return holder[sequence][0]
        assert keyword in ds, (sequence, keyword)
        return ds

    return [
        (
            find(item, "PlanePositionSequence", "ImagePositionPatient"),
            find(item, "PlaneOrientationSequence", "ImageOrientationPatient").ImageOrientationPatient,
            find(item, "PixelMeasuresSequence", "PixelSpacing").PixelSpacing,
        )
        for item in ds.PerFrameFunctionalGroupsSequence
    ]


def _pixel_measures(ds):
    if "PerFrameFunctionalGroupsSequence" not in ds:
        return [ds]
    items = list(ds.get("SharedFunctionalGroupsSequence", [])) + list(ds.PerFrameFunctionalGroupsSequence)
    return [item.PixelMeasuresSequence[0] for item in items if "PixelMeasuresSequence" in item]


def _set_pixels(ds, array: np.ndarray) -> None:
    assert not ds.file_meta.TransferSyntaxUID.is_compressed and ds.file_meta.TransferSyntaxUID.is_little_endian
    ds.PixelData = np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"))).tobytes()
    ds.Rows, ds.Columns = array.shape[-2:]
    if "NumberOfFrames" in ds:
        ds.NumberOfFrames = 1 if array.ndim == 2 else array.shape[0]


def _shift_planes(ds, rows: float, cols: float) -> None:
    """Move each frame's ImagePositionPatient to the centre of pixel (rows, cols) of the old grid (and the top-level
    one that some enhanced objects carry as well)."""
    planes = _planes(ds)
    if "PerFrameFunctionalGroupsSequence" in ds and "ImagePositionPatient" in ds:
        planes.append((ds, ds.ImageOrientationPatient, ds.PixelSpacing))
    for holder, iop, spacing in planes:
        iop = np.asarray([float(x) for x in iop])
        ipp = np.asarray([float(x) for x in holder.ImagePositionPatient])
        new = ipp + cols * float(spacing[1]) * iop[:3] + rows * float(spacing[0]) * iop[3:]
        holder.ImagePositionPatient = [_ds_text(x) for x in new]


def crop_dicom(src: Path, dst: Path, rows: slice, cols: slice) -> None:
    """Crop an uncompressed DICOM (single- or multi-frame) in-plane, moving each frame's position with it."""
    ds = _read_dicom(src)
    array = ds.pixel_array[..., rows, cols]
    _shift_planes(ds, rows.start, cols.start)
    _set_pixels(ds, array)
    _save_dicom(ds, dst)


def downsample_dicom(src: Path, dst: Path, factor: int) -> None:
    """Average ``factor`` x ``factor`` blocks of stored values (rounded); pixel spacing x factor, positions at the
    centre of each first block. Single-frame, uncompressed."""
    ds = _read_dicom(src)
    array = ds.pixel_array
    r, c = (n // factor for n in array.shape)
    blocks = array[: r * factor, : c * factor].astype(np.float64).reshape(r, factor, c, factor)
    small = np.rint(blocks.mean(axis=(1, 3))).astype(array.dtype)
    half = (factor - 1) / 2
    _shift_planes(ds, half, half)
    for holder in _pixel_measures(ds):
        holder.PixelSpacing = [_ds_text(float(x) * factor) for x in holder.PixelSpacing]
    _set_pixels(ds, small)
    _save_dicom(ds, dst)


def keep_frames(src: Path, dst: Path, frames: list[int], slices: int) -> None:
    """An enhanced object with only ``frames`` (in their order): pixel data and per-frame functional groups; Philips'
    private slice count (2001,1018), which dcm2niix reads, set to the ``slices`` kept."""
    from pydicom.sequence import Sequence

    ds = _read_dicom(src)
    array = ds.pixel_array
    items = ds.PerFrameFunctionalGroupsSequence
    ds.PerFrameFunctionalGroupsSequence = Sequence([items[i] for i in frames])
    if (0x2001, 0x1018) in ds:
        ds[0x2001, 0x1018].value = slices
    _set_pixels(ds, array[frames])
    _save_dicom(ds, dst)


def crop_nifti(src: Path, dst: Path, index: tuple) -> None:
    """A block of a NIfTI file: stored voxels, scale factors, header and qform/sform codes kept, origin moved to the
    block."""
    import nibabel as nib

    img = nib.load(str(src))
    raw = np.asanyarray(img.dataobj.get_unscaled())[index]
    start = [s.start or 0 for s in index[:3]]
    affine = img.affine.copy()
    affine[:3, 3] = img.affine[:3, :3] @ start + img.affine[:3, 3]
    out = type(img)(raw, affine, img.header.copy())
    out.set_qform(affine, int(img.header["qform_code"]))
    out.set_sform(affine, int(img.header["sform_code"]))
    out.header.set_data_dtype(img.get_data_dtype())
    dst.parent.mkdir(parents=True, exist_ok=True)
    nib.save(out, str(dst))
    slope, inter = float(img.dataobj.slope), float(img.dataobj.inter)
    if (slope, inter) != (1.0, 0.0):  # nibabel writes an array's own scale (none): put upstream's back
        data = dst.read_bytes()
        data = gzip.decompress(data) if dst.name.endswith(".gz") else data
        header = type(img.header).from_fileobj(io.BytesIO(data))
        header["scl_slope"], header["scl_inter"] = slope, inter
        data = header.binaryblock + data[len(header.binaryblock) :]
        dst.write_bytes(gzip.compress(data, compresslevel=9, mtime=0) if dst.name.endswith(".gz") else data)
    check = nib.load(str(dst))
    assert np.array_equal(np.asanyarray(check.dataobj), np.asanyarray(img.dataobj)[index]), dst


def gzip_file(src: Path, dst: Path) -> None:
    """A byte-for-byte gzip copy (nibabel reads ``.nii.gz`` as the same ``.nii``)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(gzip.compress(src.read_bytes(), compresslevel=9, mtime=0))


# --- the sources -----------------------------------------------------------------------------------


def vendor_ct() -> None:
    cip = "ct/chestimagingplatform"
    for name in ("License.txt", "ct-64.nrrd", "ct-64-transformed.nrrd", "lm-64.nrrd", "wholeLung-64.nrrd"):
        _copy(f"{cip}/{name}")
    import SimpleITK as sitk

    # raw NRRD re-encoded with gzip (same voxels and geometry); the label map cut to the CT's 2 slices
    sitk.WriteImage(
        sitk.ReadImage(str(SHARED / cip / "crop_ct_2slices.nrrd")), str(_out(f"{cip}/crop_ct_2slices.nrrd")), True
    )
    labels = sitk.ReadImage(str(SHARED / cip / "crop_ct_partialLungLabelMap.nrrd"))[:, :, 60:62]
    sitk.WriteImage(labels, str(_out(f"{cip}/crop_ct_partialLungLabelMap.nrrd")), True)
    for name in ("slice001.dcm", "slice002.dcm"):
        downsample_dicom(SHARED / cip / "simple_dicom" / name, _out(f"{cip}/simple_dicom/{name}"), 2)

    _copy("ct/dicompyler_core/LICENSE")
    _copy("ct/dicompyler_core/ct.0.dcm")
    cut_rtstruct(SHARED / "ct/dicompyler_core/rtss.dcm", SHARED / "ct/dicompyler_core/ct.0.dcm")

    for name in ("LICENSE", "3DCT_lung_baseline_small.mha", "3DCT_lung_baseline_mask.mha"):
        _copy(f"ct/elastix/{name}")

    _copy("ct/ibsi_validation/LICENSE.md")
    # the citations upstream asks for; its Latin-1 text ("Vallières") in UTF-8, which ruff can read
    text = (SHARED / "ct/ibsi_validation/README.md").read_bytes().decode("latin-1")
    _out("ct/ibsi_validation/README.md").write_text(text, encoding="utf-8")
    for i in STS_SLICES:
        _copy(f"ct/ibsi_validation/STS_025/CT/image/{i:06d}.dcm")

    _copy("ct/rt_utils/LICENSE")
    for name in ("ct_1.dcm", "ct_2.dcm"):
        downsample_dicom(SHARED / "ct/rt_utils" / name, _out(f"ct/rt_utils/{name}"), 4)


#: the lower-leg CT's slices kept (of 0..46): 10..17 are tests/io/fuzz_mutators.py's base
STS_SLICES = range(10, 18)


def cut_rtstruct(rtss: Path, ct: Path) -> None:
    """The structure set with only the contours on ``ct``'s slice (every ROI is still listed)."""
    import pydicom
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(rtss)
    uid = pydicom.dcmread(ct, stop_before_pixels=True).SOPInstanceUID
    for roi in ds.ROIContourSequence:
        kept = [c for c in roi.get("ContourSequence", []) if c.ContourImageSequence[0].ReferencedSOPInstanceUID == uid]
        if kept:
            roi.ContourSequence = Sequence(kept)
        elif "ContourSequence" in roi:
            del roi.ContourSequence
    for frame in ds.ReferencedFrameOfReferenceSequence:
        for study in frame.RTReferencedStudySequence:
            for series in study.RTReferencedSeriesSequence:
                images = [i for i in series.ContourImageSequence if i.ReferencedSOPInstanceUID == uid]
                series.ContourImageSequence = Sequence(images)
    _save_dicom(ds, _out("ct/dicompyler_core/rtss.dcm"))


def vendor_dicom2nifti() -> None:
    _copy("dicom/dicom2nifti/LICENSE")
    for case in D2N_AS_IS:
        _copy(f"{D2N}/{case}")
        _copy(f"{D2N}/{case}_ground_truth.nii.gz")
    for case in D2N_COMPRESSED:
        for name in D2N_COMPRESSED_FILES:
            _copy(f"{D2N}/{case}/{name}")
    for case, (rows, cols) in D2N_CROPPED.items():
        for path in sorted((SHARED / D2N / case).iterdir()):
            crop_dicom(path, _out(f"{D2N}/{case}/{path.name}"), rows, cols)


def d2n_ground_truths(work: Path) -> None:
    """Each cut case's ground truth: the matching block of upstream's (checked against dicom2nifti itself). The five
    compressed cases share upstream's one ground truth (five byte-identical files), kept once (as compressed_j2k's)."""
    for i, case in enumerate([*D2N_WITH_TRUTH, *D2N_COMPRESSED]):
        name = f"{D2N}/{case}_ground_truth.nii.gz"
        made = _dicom2nifti(HERE / D2N / case, work / f"d2n{i}.nii.gz")
        shipped = HERE / D2N / f"{D2N_COMPRESSED[0]}_ground_truth.nii.gz" if case in D2N_COMPRESSED else HERE / name
        if case in D2N_WITH_TRUTH or case == D2N_COMPRESSED[0]:
            crop_nifti(SHARED / name, shipped, _block_in(made, SHARED / name))
        _same_image(made, shipped, f"dicom2nifti on the cut {case}")


def vendor_dcm2niix_qa() -> None:
    for qa in ("dcm_qa", "dcm_qa_ts", "dcm_qa_nih", "dcm_qa_enh", "dcm_qa_frag", "dcm_qa_philips_enh"):
        for name in ("LICENSE", "README.md"):
            _copy(f"{QA}/{qa}/{name}")
    # mosaics: one axial series (2 volumes) with its stray NIfTI (cut to a corner: it only has to be skipped)
    ax = f"{QA}/dcm_qa/In/Orientation/ax/axasc35"
    for path in sorted((SHARED / ax).iterdir()):
        if path.suffix == ".nii":
            crop_nifti(path, _out(f"{ax}/{path.name}"), (slice(0, 8), slice(0, 8), slice(0, 2)))
        else:
            _copy(str(path.relative_to(SHARED)))
    gzip_file(SHARED / f"{QA}/dcm_qa/Ref/ax_asc_35sl_6.nii", _out(f"{QA}/dcm_qa/Ref/ax_asc_35sl_6.nii.gz"))
    # one mosaic in 9 transfer syntaxes; upstream's 9 references are one file 9 times: kept once
    _copy(f"{QA}/dcm_qa_ts/In")
    gzip_file(SHARED / f"{QA}/dcm_qa_ts/Ref/1.nii", _out(f"{QA}/dcm_qa_ts/Ref/1.nii.gz"))
    # GE: NIH_SLICES of the first NIH_VOLUMES of the 10 volumes (15 files each: instance numbers 1..15 are volume 1)
    nih = f"{QA}/dcm_qa_nih/In/20180918GE"
    _copy(f"{nih}/README-Study.txt")
    _copy(f"{nih}/mr_0004/README-Series.txt")
    for path in sorted((SHARED / nih / "mr_0004").glob("*.dcm")):
        volume, position = divmod(int(path.stem.rsplit("-", 1)[1]) - 1, 15)
        if volume < NIH_VOLUMES and position in NIH_SLICES:
            _copy(str(path.relative_to(SHARED)))
    # Siemens XA enhanced: the first 2 of its 4 volumes (one file each); Philips field map: ENH_SLICES of both types
    for name in ("6_1.dcm", "6_2.dcm"):
        _copy(f"{QA}/dcm_qa_enh/In/Siemens/XA10/{name}")
    frames = [*ENH_SLICES, *(32 + k for k in ENH_SLICES)]
    keep_frames(
        SHARED / f"{QA}/dcm_qa_enh/In/Philips/IM_0027_fMAP.dcm",
        _out(f"{QA}/dcm_qa_enh/In/Philips/IM_0027_fMAP.dcm"),
        frames,
        len(ENH_SLICES),
    )
    # fragmented JPEG lossless: FRAG_FILES as they are
    for i in FRAG_FILES:
        _copy(f"{QA}/dcm_qa_frag/In/5001_anat-T1w_acq-tfl/5001{i:03d}.dcm")
    # Philips pCASL: PCASL_SLICES of the 40, all 6 volumes, classic files and the enhanced file's frames
    cl = f"{QA}/dcm_qa_philips_enh/In/cl"
    for path in sorted((SHARED / cl).iterdir()):
        if (int(path.name[5:9]) - 1) % 40 in PCASL_SLICES:
            _copy(str(path.relative_to(SHARED)))
    enh = f"{QA}/dcm_qa_philips_enh/In/enh/1903_WIP_SOURCE_-_3DpCASL.dcm.gz"
    ds = _read_dicom(SHARED / enh)
    keep = [
        i
        for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence)
        if item.FrameContentSequence[0].DimensionIndexValues[1] - 1 in PCASL_SLICES
    ]
    keep_frames(SHARED / enh, _out(enh), keep, len(PCASL_SLICES))


NIH_VOLUMES = 2
NIH_SLICES = range(4, 12)
ENH_SLICES = list(range(12, 20))
FRAG_FILES = range(47, 50)
PCASL_SLICES = range(19, 22)


def dcm2niix_refs(work: Path) -> None:
    """Cut references: the block of upstream's Ref/ that dcm2niix writes for the cut input (checked)."""
    jobs = [
        (f"{QA}/dcm_qa_nih/In", f"{QA}/dcm_qa_nih/Ref/DCM2NIIX_regression_test_4.nii", "*.nii"),
        (f"{QA}/dcm_qa_enh/In/Siemens", f"{QA}/dcm_qa_enh/Ref/Siemens_REST1_w_SMS_PF7-8_6.nii", "*.nii"),
        (f"{QA}/dcm_qa_enh/In/Philips", f"{QA}/dcm_qa_enh/Ref/Philips_WIP_B0_NS_801_e1.nii", "*_e1.nii"),
        (f"{QA}/dcm_qa_enh/In/Philips", f"{QA}/dcm_qa_enh/Ref/Philips_WIP_B0_NS_801_e2_fieldmaphz.nii", "*_e2*.nii"),
        (f"{QA}/dcm_qa_frag/In", f"{QA}/dcm_qa_frag/Ref/anat-T1w_acq-tfl_5001.nii", "*.nii"),
        (f"{QA}/dcm_qa_philips_enh/In/cl", f"{QA}/dcm_qa_philips_enh/Ref/1903_WIP_SOURCE_-_3DpCASL_cl.nii.gz", "*.nii"),
        (
            f"{QA}/dcm_qa_philips_enh/In/enh",
            f"{QA}/dcm_qa_philips_enh/Ref/1903_WIP_SOURCE_-_3DpCASL_enh.nii.gz",
            "*.nii",
        ),
    ]
    for i, (folder, ref, pattern) in enumerate(jobs):
        made = _dcm2niix(HERE / folder, work / f"dcm2niix{i}", pattern)
        crop_nifti(SHARED / ref, _out(ref), _block_in(made, SHARED / ref))
        # dcm2niix takes the slice spacing from the first two slices: 1e-4 mm/slice off over upstream's 96
        tol = 0.011 if "frag" in folder else 2e-3
        _same_image(made, HERE / ref, f"dcm2niix on the cut {folder}", tol)


def vendor_small_dicom() -> None:
    seg = "dicom/dcmqi/data/segmentations"
    _copy("dicom/dcmqi/LICENSE.txt")
    for toy in ("23x38x3", "24x38x3"):
        for part in ("image", "multiframe", "seg"):
            _copy(f"{seg}/{toy}/{part}")
    for name in ("sparse-labelmap-noppv.dcm", "sparse-labelmap-ppv5.dcm"):
        _copy(f"{seg}/{name}")
    for name in ("01.dcm", "02.dcm", "03.dcm"):
        downsample_dicom(SHARED / seg / "ct-3slice" / name, _out(f"{seg}/ct-3slice/{name}"), 4)

    for name in ("LICENSE", "0.dcm", "1.dcm", "test_mask.py.txt"):
        _copy(f"dicom/lungmask_testdata/{name}")
    for name in ("LICENSE", "CT_DICOM", "anatomical_label.nii.gz", "reoriented_anat_moved.nii"):
        _copy(f"dicom/monai_testing_data/{name}")

    store = "dicom/pydicom_data/data_store"
    _copy("dicom/pydicom_data/LICENSE.pydicom-data")
    _copy(f"{store}/liver.dcm")
    crop_dicom(
        SHARED / store / "eCT_Supplemental.dcm", _out(f"{store}/eCT_Supplemental.dcm"), slice(192, 320), slice(192, 320)
    )
    for name in ("LICENSE.pydicom", "README.txt", "CT_small.dcm", "rtstruct.dcm", "dicomdirtests"):
        _copy(f"dicom/pydicom_testfiles/{name}")


def vendor_nifti() -> None:
    for name in (
        "COPYING.nibabel",
        "tests_data/anatomical.nii",
        "tests_data/example_nifti2.nii.gz",
        "tests_data/functional.nii",
    ):
        _copy(f"nifti/nibabel/{name}")
    mni = "nifti/nilearn_mni152"
    for name in ("LICENSE.nilearn", "icbm152_2009.rst"):
        _copy(f"{mni}/{name}")
    name = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    crop_nifti(SHARED / mni / name, _out(f"{mni}/{name}"), MNI_CROP)


# --- checks ----------------------------------------------------------------------------------------


def _dicom2nifti(folder: Path, out: Path) -> Path:
    from dicom2nifti import convert_dicom, settings

    settings.disable_validate_slicecount()  # as upstream made the single-slice and 2-slice ground truths
    convert_dicom.dicom_series_to_nifti(str(folder), str(out), reorient_nifti=False)
    return out


def _dcm2niix(folder: Path, out: Path, pattern: str) -> Path:
    """dcm2niix's one output matching ``pattern`` for ``folder`` (gzipped DICOM gunzipped first: it does not read
    them)."""
    import dcm2niix

    plain = out / "plain"
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        target = plain / path.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.name.endswith(".dcm.gz"):
            target.with_suffix("").write_bytes(gzip.decompress(path.read_bytes()))
        else:
            shutil.copyfile(path, target)
    (out / "nii").mkdir()
    subprocess.run(
        [dcm2niix.bin, "-b", "n", "-z", "n", "-o", str(out / "nii"), str(plain)], check=True, capture_output=True
    )
    (made,) = sorted((out / "nii").glob(pattern))
    return made


def _block_in(sub: Path, full: Path) -> tuple:
    """The index of ``full`` (ascending, in its own axis order) whose voxels lie where ``sub``'s do: the axes may be
    flipped or swapped, the offsets must be whole voxels. 4D: the first volumes."""
    import nibabel as nib

    a, b = nib.load(str(sub)), nib.load(str(full))
    t = np.linalg.inv(b.affine) @ a.affine
    axes = np.rint(t[:3, :3])
    assert np.allclose(t[:3, :3], axes, atol=2e-3) and np.allclose(np.abs(axes).sum(axis=0), 1), (sub, full, t)
    corners = np.array([axes @ c + t[:3, 3] for c in ([0, 0, 0], np.array(a.shape[:3]) - 1)])
    assert np.allclose(corners, np.rint(corners), atol=0.02), (sub, full, corners)
    low, high = np.rint(corners.min(axis=0)).astype(int), np.rint(corners.max(axis=0)).astype(int)
    assert (low >= 0).all() and (high < np.array(b.shape[:3])).all(), (sub, full, low, high)
    index = tuple(slice(lo, hi + 1) for lo, hi in zip(low, high))
    if len(b.shape) > 3:
        index += (slice(0, a.shape[3] if len(a.shape) > 3 else 1),)
    return index


def _same_image(made: Path, shipped: Path, what: str, affine_tol: float = 2e-3) -> None:
    """Same voxels at the same places (both brought to the closest RAS orientation)."""
    import nibabel as nib

    a, b = (nib.as_closest_canonical(nib.load(str(p))) for p in (made, shipped))
    x, y = np.asanyarray(a.dataobj), np.asanyarray(b.dataobj)
    if x.dtype.names:  # RGB
        x, y = x.view(np.uint8), y.view(np.uint8)
    if x.ndim != y.ndim:
        x, y = np.squeeze(x), np.squeeze(y)
    assert x.shape == y.shape, (what, x.shape, y.shape)
    assert np.array_equal(x, y), (what, float(np.abs(x.astype(float) - y).max()))
    diff = float(np.abs(a.affine - b.affine).max())
    assert diff < affine_tol, (what, diff)
    print(f"ok: {what}: {x.shape} voxels equal, affines within {diff:.1e} mm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only re-cut the references and check them")
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} not found")
    if not args.check:
        for sub in ("ct", "dicom", "nifti"):
            shutil.rmtree(HERE / sub, ignore_errors=True)
        vendor_ct()
        vendor_dicom2nifti()
        vendor_dcm2niix_qa()
        vendor_small_dicom()
        vendor_nifti()
    with tempfile.TemporaryDirectory(prefix="vendor-") as tmp:
        d2n_ground_truths(Path(tmp))
        dcm2niix_refs(Path(tmp))


if __name__ == "__main__":
    main()
