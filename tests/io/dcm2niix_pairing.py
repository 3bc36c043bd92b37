"""medseg's grouping of DICOM folders against dcm2niix itself: run both, pair their volumes, explain the rest.

Used by ``tests/io/test_dcm2niix_grouping.py`` (on the cut-down sets of ``tests/data``) and by
``benchmarks/dcm2niix_grouping.py`` (by hand, on every set of the development data set).

dcm2niix (the PyPI package's binary) converts a folder and medseg groups and reads the same folder. Every
dcm2niix volume must have a medseg stack with the same shape (3D or 4D), the same world geometry (both brought
to the closest RAS orientation, affines within 1e-3 mm) and the same voxels (up to a linear rescale: dcm2niix
writes Philips data in Philips' private "precise" scale, medseg in display values), and every medseg stack a
dcm2niix volume; one to one. Whatever does not pair up must be listed in :data:`DIFFERENCES`, the table of
deliberate differences with their reason; README.md ("medseg and dcm2niix") summarises it. A row that no longer
applies is reported too, so the table stays true.
"""

from __future__ import annotations

import fnmatch
import gzip
import shutil
import subprocess
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from medseg.errors import InputError
from medseg.io.dicom import DicomWarning, read_stack, scan_dicom
from tests.io.test_dicom import _anonymised, _canonical

AFFINE_TOL_MM = 1e-3
#: dcm2niix takes the slice spacing from the first two slices (2.0001 mm) where medseg fits all 96
#: positions (2.000001 mm): 0.01 mm apart at the last slice (see test_dicom.py)
LOOSER_AFFINE_TOL_MM = {"dcm2niix_qa/dcm_qa_frag/In": 0.011}
#: voxels must agree up to a linear rescale within this fraction of the value range (float rounding of
#: Philips scale factors), or, where medseg or dcm2niix resampled (tilt, uneven gaps), correlate this well
RESCALE_TOL = 1e-3
RESAMPLED_MIN_CORRELATION = 0.95

# --- the sets ------------------------------------------------------------------------------------

D2N = "dicom2nifti/tests_data"
D2N_CASES = [
    "anatomical/001",
    "anatomical/001_implicit",
    "failing/gantrytilting/001",
    "failing/notavolume/001",
    "failing/slicecount/001",
    "failing/sliceincrement/001",
    "failing/sliceincrement/002",
    "failing/sliceorientation/001",
    "ge/anatomical/001",
    "ge/anatomical/001_implicit",
    "ge/anatomical/001_single_slice",
    "generic/anatomical/001",
    "generic/anatomical/001_implicit",
    "generic/anatomical/002_non_isotropic",
    "generic/compressed/001",
    "generic/compressed_j2k/001",
    "generic/compressed_jpeg/001",
    "generic/compressed_jpegls/001",
    "generic/compressed_rle/001",
    "generic/rgb/001",
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
]
#: the 41 sets: paths under <data>/dicom (``ct`` is <data>/ct: CT series, an RTSTRUCT, NRRD and MHA files)
SETS = [
    "dcm2niix_qa/dcm_qa/In",  # Siemens mosaic series (axial, coronal, sagittal, multiband; JPEG-LL, J2K)
    "dcm2niix_qa/dcm_qa_enh/In",  # Siemens XA enhanced 4D; Philips enhanced field map (magnitude + Hz)
    "dcm2niix_qa/dcm_qa_frag/In",  # fragmented JPEG-lossless 3D T1
    "dcm2niix_qa/dcm_qa_nih/In",  # GE EPI: slices x volumes in one folder
    "dcm2niix_qa/dcm_qa_philips_enh/In",  # Philips pCASL, classic (a file per image) and enhanced (1 file), gzipped
    "dcm2niix_qa/dcm_qa_ts/In",  # one mosaic in 9 transfer syntaxes (one SeriesInstanceUID, 9 series numbers)
    *(f"{D2N}/{case}" for case in D2N_CASES),
    "dcmqi/data/segmentations",  # CT, toy images with Legacy Converted Enhanced copies, DICOM SEG objects
    "monai_testing_data/CT_DICOM",  # 4 CT slices with one large gap
    "lungmask_testdata",  # 2 CT slices without Modality
    "pydicom_testfiles/dicomdirtests",  # CT, CR, MR localizers and projections: 10 folders, two studies in one
    "ct",
]
#: the sets also compared as anonymised copies: the multi-series sets, and single series whose grouping is
#: delicate (GE's 4D folder dcm_qa_nih is in test_dicom.py; the Philips pCASL pair is left out for time)
ANONYMISED_SETS = [
    "dcm2niix_qa/dcm_qa/In",
    "dcm2niix_qa/dcm_qa_enh/In",
    "dcm2niix_qa/dcm_qa_ts/In",
    f"{D2N}/failing/gantrytilting/001",
    f"{D2N}/failing/notavolume/001",
    f"{D2N}/failing/sliceincrement/002",
    f"{D2N}/failing/sliceorientation/001",
    "dcmqi/data/segmentations",
    "pydicom_testfiles/dicomdirtests",
    "ct",
]


def source(data: Path, case: str) -> Path:
    """A set's folder under ``data`` (``tests/data``, or the development data set for the benchmark)."""
    return data / case if case == "ct" else data / "dicom" / case


@dataclass(frozen=True)
class Difference:
    """A deliberate difference: dcm2niix outputs and medseg stacks (fnmatch patterns) that do not pair up.

    dcm2niix outputs are named ``<SeriesNumber>_<ProtocolName><dcm2niix's suffix>`` (``-f %s_%p``);
    medseg stacks ``<SeriesNumber> <SeriesDescription>: <outcome>``, where the outcome is ``volume``,
    ``volume with --resample-irregular`` or ``refused: <reason>``. Each pattern must match at least one
    unpaired item.
    """

    kind: str
    reason: str
    #: case -> (dcm2niix output patterns, medseg stack patterns)
    where: dict[str, tuple[list[str], list[str]]]


_SINGLE = "*: refused: is a single 2D image*"
_DIRS = "pydicom_testfiles/dicomdirtests"
DIFFERENCES: list[Difference] = [
    Difference(
        "gantry tilt",
        "dcm2niix writes the tilted stack as it is, on an affine that does not follow the slices' drift, beside "
        "its corrected _Tilt_ copy; medseg reads one volume, the corrected one (it pairs with _Tilt_), or with "
        "--keep-tilt the exact sheared affine",
        {f"{D2N}/failing/gantrytilting/001": (["4_"], []), f"{D2N}/failing/sliceincrement/002": (["3_"], [])},
    ),
    Difference(
        "uneven slice gaps",
        "dcm2niix writes a stack with a missing slice as if evenly spaced, plus an _Eq_ copy interpolated onto a "
        "grid of its own (4 mm for gaps of 5, 5, 10 mm); medseg refuses it unless --resample-irregular, then "
        "interpolates at the smallest gap so that every acquired slice is kept (where the grids coincide, as "
        "in sliceincrement/002, medseg's volume pairs with dcm2niix's _Tilt_Eq_)",
        {
            f"{D2N}/failing/sliceincrement/001": (["2_dicom2nifti", "2_dicom2nifti_Eq_1"], ["2: volume with --res*"]),
            **{
                case: (["2_1.1_Routine_Brain", "2_1.1_Routine_Brain_Eq_1"], ["2 Routine Brain: volume with --res*"])
                for case in ("monai_testing_data/CT_DICOM", _DIRS)
            },
        },
    ),
    Difference(
        "all images at one position",
        "dcm2niix writes a one-slice 4D series; medseg refuses it: a segmentation model needs a 3D volume",
        {f"{D2N}/failing/notavolume/001": (["4_"], ["4: refused: all 4 images lie at the same position*"])},
    ),
    Difference(
        "single 2D image",
        "dcm2niix writes every 2D image (localizer planes, projections, a lone CT slice) as a one-slice volume; "
        "medseg lists it and refuses to segment it",
        {
            f"{D2N}/ge/anatomical/001_single_slice": (["4_dicom2nifti"], [_SINGLE]),
            _DIRS: (
                ["1_FAST_LOCALIZER*", "2_FAST_LOCALIZER", "2_T_S_C_RF_FAST_PILOT_i*", "700_ANGIO_*"],
                ["1 FAST LOCALIZER" + _SINGLE[1:], "2 *" + _SINGLE[1:], "700 *" + _SINGLE[1:]],
            ),
            "ct": (["2_"], ["2" + _SINGLE[1:]]),  # dicompyler_core/ct.0.dcm
        },
    ),
    Difference(
        "2D image without geometry",
        "CR radiographs have no patient position or orientation: dcm2niix writes them on a made-up grid, medseg "
        "refuses them",
        {
            _DIRS: (
                ["1_Cervical_LAT", "2_Cervical_OBLI_1", "3_Cervical_OBLI_2"],
                ["* refused: images lack ImagePositionPatient/ImageOrientationPatient*"],
            )
        },
    ),
    Difference(
        "localizers in several planes",
        "two CT scouts of one series, one lateral and one frontal: dcm2niix stacks them as a 2-slice volume, "
        "medseg splits images whose orientations differ (two single images, refused)",
        {_DIRS: (["4_Scout"], ["4 Scout" + _SINGLE[1:]])},
    ),
    Difference(
        "colour image",
        "dcm2niix writes RGB NIfTI; medseg segments greyscale volumes and refuses it",
        {f"{D2N}/generic/rgb/001": (["747197466_T1_WM_AX"], ["* refused: is a colour image*"])},
    ),
    Difference(
        "DICOM SEG",
        "dcm2niix converts DICOM Segmentation objects like images; medseg lists them as non-image objects "
        "(medseg.io.dicom_seg.read_dicom_seg reads them)",
        {"dcmqi/data/segmentations": (["*Segmentation*"], [])},
    ),
]

# --- running both --------------------------------------------------------------------------------


def dcm2niix_binary() -> str | None:
    try:
        import dcm2niix

        if Path(dcm2niix.bin).is_file():
            return str(dcm2niix.bin)
    except ImportError:
        pass
    return shutil.which("dcm2niix")


@dataclass
class Output:
    """One volume (or refusal) of either converter, in canonical (closest RAS) orientation."""

    label: str
    series_number: int | None
    data: np.ndarray | None = None
    affine: np.ndarray | None = None
    resampled: bool = False


def plain_copy(folder: Path, target: Path) -> Path:
    """``folder`` with its gzipped DICOM (``.dcm.gz``) gunzipped, for dcm2niix, which does not read them (medseg
    does); every other file is copied as it is. (Before, only the ``.gz`` files were copied: the ``ct`` set's
    two gzipped NIfTI files then made a "plain" copy without any DICOM, and dcm2niix found nothing.)"""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        out = target / path.relative_to(folder)
        out.parent.mkdir(parents=True, exist_ok=True)
        if path.name.endswith(".dcm.gz"):
            with gzip.open(path) as fh:
                out.with_suffix("").write_bytes(fh.read())
        else:
            shutil.copyfile(path, out)
    return target


def run_dcm2niix(binary: str, folder: Path, out: Path) -> list[Output]:
    out.mkdir(parents=True)
    proc = subprocess.run(
        [binary, "-b", "n", "-z", "n", "-f", "%s_%p", "-o", str(out), str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode in (0, 2), proc.stdout[-2000:] + proc.stderr[-2000:]  # 2: no DICOM found
    outputs = []
    for path in sorted(out.glob("*.nii")):
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        data, affine = _canonical(data, img.affine)
        number = path.stem.split("_", 1)[0]
        outputs.append(Output(path.stem, int(number) if number.isdigit() else None, data, affine))
    return outputs


def run_medseg(folder: Path) -> list[Output]:
    """Every stack medseg finds, read as ``medseg convert --series`` would (uneven gaps: with the flag)."""
    outputs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DicomWarning)
        scan = scan_dicom(folder)
        for stack in scan.stacks:
            number = stack.info.get("SeriesNumber")
            label = f"{number} {stack.info.get('SeriesDescription') or ''}".rstrip()
            if stack.error:
                outputs.append(Output(f"{label}: refused: {stack.error}", number))
                continue
            irregular = stack.geometry.irregular
            try:
                volume = read_stack(stack, resample_irregular=True)
            except InputError as err:
                outputs.append(Output(f"{label}: refused: {err}", number))
                continue
            data, affine = _canonical(volume.array, volume.affine)
            outcome = "volume with --resample-irregular" if irregular else "volume"
            resampled = volume.meta["dicom"]["resampled"] is not None
            outputs.append(Output(f"{label}: {outcome}", number, data, affine, resampled))
    return outputs  # non-image objects (SEG, RTSTRUCT, files without pixels) are not stacks


def convert(binary: str, data: Path, case: str, work: Path, how: str = "original") -> tuple[list, list]:
    """(dcm2niix outputs, medseg outputs) for one set; ``how``: original, or an anonymised copy (blank, missing)."""
    folder = source(data, case)
    plain = plain_copy(folder, work / "plain") if any(folder.rglob("*.dcm.gz")) else folder
    if how == "original":
        return run_dcm2niix(binary, plain, work / "out"), run_medseg(folder)
    anon = _anonymised(plain, work / "anon", how)
    return run_dcm2niix(binary, anon, work / "out"), run_medseg(anon)


def agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(largest residual of the best linear fit b ~ s a + c, as a fraction of b's range; correlation)."""
    x = a.ravel().astype(np.float64)
    y = b.ravel().astype(np.float64)
    x -= x.mean()
    y -= y.mean()
    sxx, syy = float(x @ x), float(y @ y)
    if sxx == 0.0 or syy == 0.0:  # a constant image
        return (0.0, 1.0) if sxx == syy else (1.0, 0.0)
    sxy = float(x @ y)
    residual = float(np.abs(y - (sxy / sxx) * x).max()) / float(y.max() - y.min())
    return residual, sxy / np.sqrt(sxx * syy)


def pair_up(theirs: list[Output], ours: list[Output], affine_tol: float):
    """One-to-one pairs of dcm2niix and medseg volumes with the same shape, geometry and voxels."""
    candidates = []
    for i, d in enumerate(theirs):
        for j, m in enumerate(ours):
            if m.data is None or d.data.shape != m.data.shape:
                continue
            diff = float(np.abs(d.affine - m.affine).max())
            if diff > affine_tol:
                continue
            residual, corr = agreement(d.data, m.data)
            if residual > RESCALE_TOL and not (m.resampled and corr >= RESAMPLED_MIN_CORRELATION):
                continue
            candidates.append((d.series_number != m.series_number, residual, -corr, diff, i, j))
    pairs, used_d, used_m = [], set(), set()
    for *_, i, j in sorted(candidates):
        if i not in used_d and j not in used_m:
            used_d.add(i)
            used_m.add(j)
            pairs.append((theirs[i], ours[j]))
    unpaired_d = [d.label for i, d in enumerate(theirs) if i not in used_d]
    unpaired_m = [m.label for j, m in enumerate(ours) if j not in used_m]
    return pairs, unpaired_d, unpaired_m


def expected(case: str) -> tuple[list[str], list[str]]:
    """The DIFFERENCES patterns for one set: (dcm2niix outputs, medseg stacks)."""
    rows = [row.where[case] for row in DIFFERENCES if case in row.where]
    return [p for d, _ in rows for p in d], [p for _, m in rows for p in m]


def explained(items: list[str], patterns: list[str]) -> tuple[list[str], list[str]]:
    """(items no pattern matches, patterns that match no item)."""
    unexplained = [item for item in items if not any(fnmatch.fnmatchcase(item, p) for p in patterns)]
    stale = [p for p in patterns if not any(fnmatch.fnmatchcase(item, p) for item in items)]
    return unexplained, stale


@dataclass
class Comparison:
    """One set: what paired up, and what did not (explained by DIFFERENCES or not)."""

    case: str
    theirs: list[Output]
    ours: list[Output]
    pairs: list[tuple[Output, Output]]
    unpaired_d: list[str]
    unpaired_m: list[str]
    unexplained_d: list[str] = field(default_factory=list)
    unexplained_m: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)

    @property
    def agrees_exactly(self) -> bool:
        return not self.unpaired_d and not self.unpaired_m

    @property
    def ok(self) -> bool:
        return not self.unexplained_d and not self.unexplained_m and not self.stale


def compare(case: str, theirs: list[Output], ours: list[Output]) -> Comparison:
    pairs, unpaired_d, unpaired_m = pair_up(theirs, ours, LOOSER_AFFINE_TOL_MM.get(case, AFFINE_TOL_MM))
    d_patterns, m_patterns = expected(case)
    d_unexplained, d_stale = explained(unpaired_d, d_patterns)
    m_unexplained, m_stale = explained(unpaired_m, m_patterns)
    return Comparison(
        case, theirs, ours, pairs, unpaired_d, unpaired_m, d_unexplained, m_unexplained, d_stale + m_stale
    )


def same_volumes(a: list[Output], b: list[Output], exact: bool = True) -> tuple[list[str], list[str]]:
    """Volumes of ``a`` and ``b`` without a partner of the same shape, affine and voxels on the other side
    (``exact=False``: voxels up to a linear rescale). Partners with the same label are tried first: a folder
    may hold identical images in two series."""
    left = [o for o in a if o.data is not None]
    right = [o for o in b if o.data is not None]

    def same(x: Output, y: Output) -> bool:
        return (
            x.data.shape == y.data.shape
            and float(np.abs(x.affine - y.affine).max()) <= 1e-6
            and (np.array_equal(x.data, y.data) if exact else agreement(x.data, y.data)[0] <= RESCALE_TOL)
        )

    unmatched = []
    for o in left:
        twin = next((r for r in sorted(right, key=lambda r: r.label != o.label) if same(o, r)), None)
        if twin is None:
            unmatched.append(o.label)
        else:
            right.remove(twin)
    return unmatched, [r.label for r in right]
