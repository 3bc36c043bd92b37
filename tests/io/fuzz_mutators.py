"""Seeded mutators for the reader fuzz suite (``test_fuzz_readers.py``).

Base files are real scans from ``tests/data`` and ``sample_data``, cut down to about 32^3 and written back in
their own format (nibabel for NIfTI, SimpleITK for NRRD, pydicom for DICOM) so every input runs fast. The crops
are the same voxels as before those files were vendored into the repository cut down themselves (the offsets
below are relative to the vendored blocks; see scripts/vendor_test_data.py).
Each fuzz input is one base with 1-3 mutations drawn from a ``numpy.random.Generator`` seeded
with ``(seed, kind, index)``: any single input can be rebuilt from those three numbers.

Mutations write the bytes medseg will see directly (the NIfTI header block, the NRRD header
lines, raw DICOM elements), so values a library would refuse to write (NaN strings, impossible
codes, wrong lengths) still reach the readers.
"""

from __future__ import annotations

import copy
import gzip
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

KINDS = ("nifti", "nrrd", "dicom")
ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_data"


@dataclass
class FuzzInput:
    """One mutated input: ``path`` is what ``medseg infer`` is given."""

    kind: str
    base: str
    index: int
    path: Path
    files: list[Path]
    mutations: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.kind}#{self.index} base={self.base} mutations=[{'; '.join(self.mutations)}]"


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _apply(mutators: list[Callable], state: dict, rng: np.random.Generator) -> list[str]:
    """1-3 mutators drawn from ``mutators``, applied in turn; their descriptions. A mutator that
    cannot apply after an earlier one (e.g. re-encode a truncated payload) says so and is skipped."""
    done = []
    for mutator in rng.choice(mutators, size=int(rng.integers(1, 4))):
        try:
            done.append(mutator(state, rng))
        except Exception as err:  # noqa: BLE001 - the input is still valid fuzz without this one
            done.append(f"{mutator.__name__} skipped ({type(err).__name__})")
    return done


# --- NIfTI ---------------------------------------------------------------------------------------


@dataclass
class NiftiBase:
    name: str
    header: object  # nibabel Nifti1Header / Nifti2Header, vox_offset at the standard place
    data: bytes


def _nifti_base(name: str, img, crop) -> NiftiBase:
    import nibabel as nib

    img = img.slicer[crop]
    data = np.asanyarray(img.dataobj)
    klass = type(img)
    if data.dtype.kind == "f" and klass is nib.Nifti1Image:
        data = data.astype(np.float32)
    out = klass(data, img.affine, header=img.header)
    header = out.header
    header.set_data_dtype(data.dtype)
    header["scl_slope"] = np.nan
    header["scl_inter"] = np.nan
    offset = 544 if isinstance(header, nib.Nifti2Header) else 352
    header["vox_offset"] = offset
    raw = np.asarray(data, dtype=header.get_data_dtype()).tobytes(order="F")
    return NiftiBase(name, header, raw)


def nifti_bases(test_data: Path) -> list[NiftiBase]:
    import nibabel as nib
    import SimpleITK as sitk

    bases = []
    anat = nib.load(str(test_data / "nifti/nibabel/tests_data/anatomical.nii"))  # >i2, LAS, q=s=2
    bases.append(_nifti_base("anatomical", anat, (slice(0, 32), slice(4, 36), slice(None))))
    # uint8, sform only; the template's block 72:120, 92:140, 72:120, so this is its 80:112, 100:132, 80:112
    mni = nib.load(str(test_data / "nifti/nilearn_mni152/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"))
    bases.append(_nifti_base("mni152", mni, (slice(8, 40), slice(8, 40), slice(8, 40))))
    nii2 = nib.load(str(test_data / "nifti/nibabel/tests_data/example_nifti2.nii.gz"))
    bases.append(_nifti_base("nifti2", nii2, (slice(None), slice(None), slice(None), slice(0, 1))))  # 4D, t=1
    moved = nib.load(str(test_data / "dicom/monai_testing_data/reoriented_anat_moved.nii"))  # >f4, rotated
    bases.append(_nifti_base("rotated", moved, (slice(None), slice(None), slice(None))))
    # a CT in HU: the chest CT of ct-64.nrrd as int16 NIfTI (qform and sform 1)
    ct = sitk.ReadImage(str(test_data / "ct/chestimagingplatform/ct-64.nrrd"))[16:48, 16:48, 30:54]
    arr = np.transpose(sitk.GetArrayFromImage(ct), (2, 1, 0)).astype(np.int16)
    aff = np.eye(4)
    flip = np.diag([-1.0, -1.0, 1.0])
    aff[:3, :3] = flip @ np.asarray(ct.GetDirection()).reshape(3, 3) @ np.diag(ct.GetSpacing())
    aff[:3, 3] = flip @ np.asarray(ct.GetOrigin())
    img = nib.Nifti1Image(arr, aff)
    img.set_qform(aff, 1)
    img.set_sform(aff, 1)
    bases.append(_nifti_base("ct64", img, (slice(None),) * 3))
    return bases


_BIG = (1 << 15) - 1
_FLOATS = (0.0, -1.0, -2.5, np.nan, np.inf, -np.inf, 1e30, 1e-30, 3.0e38, 0.5, 7.0)
_DATATYPES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 0, 3, 9999, -1)


def _nifti_dim(state, rng):
    h = state["header"]
    dim = np.array(h["dim"], dtype=np.int64)
    how = _pick(rng, ("ndim", "one", "swap", "4d", "5d", "reshape"))
    if how == "ndim":
        dim[0] = _pick(rng, (0, 1, 2, 4, 5, 7, 8, -1, 9, 3))
    elif how == "one":
        k = int(rng.integers(1, 4))
        dim[k] = _pick(rng, (0, -1, 1, 2, _BIG, dim[k] * 2, max(dim[k] // 2, 1), dim[k] + 1, dim[k] - 1))
    elif how == "swap":
        a, b = rng.choice([1, 2, 3], size=2, replace=False)
        dim[a], dim[b] = dim[b], dim[a]
    elif how == "4d":
        dim[0] = 4
        dim[4] = _pick(rng, (1, 2, 0, -3))
    elif how == "5d":
        dim[0], dim[4], dim[5] = 5, 1, _pick(rng, (1, 2, 3))
    else:  # same voxel count, another shape (a valid file)
        n = int(np.prod(dim[1 : dim[0] + 1]))
        dim[0], dim[1], dim[2], dim[3] = 3, 1, 1, n
    h["dim"] = dim
    return f"dim {how} -> {list(map(int, dim[: max(int(dim[0]), 0) + 1]))[:8]}"


def _nifti_pixdim(state, rng):
    h = state["header"]
    pix = np.array(h["pixdim"], dtype=np.float64)
    k = int(rng.integers(0, 4))
    pix[k] = _pick(rng, _FLOATS if k else (0.0, -1.0, 1.0, 2.0, np.nan))
    h["pixdim"] = pix
    return f"pixdim[{k}]={pix[k]}"


def _nifti_datatype(state, rng):
    h = state["header"]
    code = int(_pick(rng, _DATATYPES))
    h["datatype"] = code
    if rng.random() < 0.7:
        bits = {1: 1, 2: 8, 4: 16, 8: 32, 16: 32, 32: 64, 64: 64, 128: 24, 256: 8, 512: 16, 768: 32}
        h["bitpix"] = bits.get(code, 8 * int(rng.integers(0, 17)))
    return f"datatype={code} bitpix={int(h['bitpix'])}"


def _nifti_vox_offset(state, rng):
    h = state["header"]
    size = 352 + len(state["data"])
    value = _pick(rng, (0, 100, 348, 351, 360, size - 8, size + 1000, 10**12, -1))
    h["vox_offset"] = value
    return f"vox_offset={value}"


def _nifti_scaling(state, rng):
    h = state["header"]
    key = _pick(rng, ("scl_slope", "scl_inter"))
    value = _pick(rng, _FLOATS)
    h[key] = value
    return f"{key}={value}"


def _nifti_codes(state, rng):
    h = state["header"]
    key = _pick(rng, ("qform_code", "sform_code"))
    value = int(_pick(rng, (0, 1, 2, 3, 4, 5, -1, 6, 255, _BIG)))
    h[key] = value
    return f"{key}={value}"


def _nifti_quatern(state, rng):
    h = state["header"]
    key = _pick(rng, ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z"))
    value = _pick(rng, (*_FLOATS, float(rng.uniform(-1, 1))))
    h[key] = value
    return f"{key}={value}"


def _nifti_srow(state, rng):
    h = state["header"]
    how = _pick(rng, ("nan", "zero", "dup", "huge", "rotate", "inf"))
    rows = [np.array(h[k], dtype=np.float64) for k in ("srow_x", "srow_y", "srow_z")]
    k = int(rng.integers(3))
    if how == "nan":
        rows[k][int(rng.integers(4))] = np.nan
    elif how == "inf":
        rows[k][int(rng.integers(4))] = np.inf
    elif how == "zero":
        rows[k][:3] = 0
    elif how == "dup":
        rows[k] = rows[(k + 1) % 3].copy()
    elif how == "huge":
        rows[k][int(rng.integers(4))] = 1e30
    else:  # a valid rotation: still a label file on the (new) grid
        angle = float(rng.uniform(-np.pi, np.pi))
        c, s = np.cos(angle), np.sin(angle)
        m = np.array([r[:3] for r in rows])
        m = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ m
        for i in range(3):
            rows[i][:3] = m[i]
    for key, row in zip(("srow_x", "srow_y", "srow_z"), rows):
        h[key] = row
    return f"srow {how} (row {k})"


def _nifti_magic(state, rng):
    h = state["header"]
    if h["sizeof_hdr"] == 540:
        value = _pick(rng, (b"n+2\0\r\n\x1a\n", b"ni2\0\r\n\x1a\n", b"n+1\0\0\0\0\0", b"xxxxxxxx"))
    else:
        value = _pick(rng, (b"ni1\0", b"n+2\0", b"abc\0", b"\0\0\0\0"))
    h["magic"] = value
    return f"magic={value!r}"


def _nifti_sizeof_hdr(state, rng):
    value = int(_pick(rng, (0, 347, 349, 540, 348, 1 << 24)))
    state["header"]["sizeof_hdr"] = value
    return f"sizeof_hdr={value}"


def _nifti_misc(state, rng):
    h = state["header"]
    key = _pick(rng, ("xyzt_units", "intent_code", "slice_code", "cal_max", "dim_info", "toffset"))
    value = _pick(rng, (0, 1, 2, 3, 255, 1002, -1)) if key not in ("cal_max", "toffset") else _pick(rng, _FLOATS)
    try:
        h[key] = value
    except (OverflowError, ValueError):
        h[key] = 0
        value = 0
    return f"{key}={value}"


def _nifti_truncate(state, rng):
    state["truncate"] = float(_pick(rng, (0.0, 0.1, 0.5, 0.9, 0.99, 0.999)))
    return f"truncate file to {state['truncate']}"


def _nifti_gzip_damage(state, rng):
    state["gz"] = True
    state["gz_damage"] = _pick(rng, ("cut", "garbage_tail", "flip_byte"))
    return f"gzip damage {state['gz_damage']}"


def _nifti_extra_tail(state, rng):
    state["data"] = state["data"] + bytes(rng.integers(0, 256, size=int(rng.integers(1, 512)), dtype=np.uint8))
    return "extra bytes after the data"


NIFTI_MUTATORS: list[Callable] = [
    _nifti_dim,
    _nifti_pixdim,
    _nifti_datatype,
    _nifti_vox_offset,
    _nifti_scaling,
    _nifti_codes,
    _nifti_quatern,
    _nifti_srow,
    _nifti_magic,
    _nifti_sizeof_hdr,
    _nifti_misc,
    _nifti_truncate,
    _nifti_gzip_damage,
    _nifti_extra_tail,
]


def make_nifti(base: NiftiBase, rng: np.random.Generator, folder: Path, index: int) -> FuzzInput:
    state = {"header": base.header.copy(), "data": base.data, "gz": bool(rng.random() < 0.5)}
    mutations = _apply(NIFTI_MUTATORS, state, rng)
    h = state["header"]
    offset = 544 if len(base.header.binaryblock) == 540 else 352
    blob = h.binaryblock[: offset - 4] + b"\0\0\0\0"
    blob = blob + b"\0" * (offset - len(blob)) + state["data"]
    if "truncate" in state:
        blob = blob[: int(len(blob) * state["truncate"])]
    name = f"case{index:05d}.nii" + (".gz" if state["gz"] else "")
    if state["gz"]:
        blob = gzip.compress(blob, compresslevel=1, mtime=0)
        damage = state.get("gz_damage")
        if damage == "cut":
            blob = blob[: max(len(blob) // 2, 1)]
        elif damage == "garbage_tail":
            blob = blob + b"\x1f\x8bgarbage"
        elif damage == "flip_byte":
            b = bytearray(blob)
            b[len(b) // 2] ^= 0xFF
            blob = bytes(b)
    path = folder / name
    path.write_bytes(blob)
    return FuzzInput("nifti", base.name, index, path, [path], mutations)


# --- NRRD ----------------------------------------------------------------------------------------


@dataclass
class NrrdBase:
    name: str
    magic: str
    fields: list[tuple[str, str]]  # header lines "key: value" in order (comments dropped)
    data: bytes  # the payload as stored (gzip or raw)


def _nrrd_parse(blob: bytes, name: str) -> NrrdBase:
    head, _, data = blob.partition(b"\n\n")
    lines = head.decode("ascii").split("\n")
    fields = []
    for line in lines[1:]:
        if line.startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        fields.append((key.strip(), value.strip().lstrip("=").strip()))
    return NrrdBase(name, lines[0], fields, data)


def nrrd_bases(test_data: Path, folder: Path) -> list[NrrdBase]:
    import SimpleITK as sitk

    cip = test_data / "ct/chestimagingplatform"
    plan = [
        ("ct64", cip / "ct-64.nrrd", (slice(16, 48), slice(16, 48), slice(30, 62)), True),
        ("ct64-rotated", cip / "ct-64-transformed.nrrd", (slice(16, 48), slice(16, 48), slice(30, 54)), False),
        # CIP's TestInput.nrrd, as the sample data's NIfTI (same voxels and geometry)
        ("testinput", SAMPLE / "chest_ct.nii.gz", (slice(16, 48), slice(16, 48), slice(10, 40)), True),
        ("crop2slices", cip / "crop_ct_2slices.nrrd", (slice(200, 232), slice(150, 182), slice(None)), False),
    ]
    bases = []
    for name, path, crop, compress in plan:
        image = sitk.ReadImage(str(path))[crop]
        path = folder / f"{name}.nrrd"
        sitk.WriteImage(image, str(path), compress)
        bases.append(_nrrd_parse(path.read_bytes(), name))
    return bases


def _nrrd_get(state, key):
    return next((v for k, v in state["fields"] if k == key), None)


def _nrrd_set(state, key, value):
    fields = state["fields"]
    for i, (k, _) in enumerate(fields):
        if k == key:
            if value is None:
                del fields[i]
            else:
                fields[i] = (k, value)
            return
    if value is not None:
        fields.append((key, value))


def _nrrd_sizes(state, rng):
    sizes = (_nrrd_get(state, "sizes") or "1 1 1").split()
    how = _pick(rng, ("one", "drop", "add", "text", "zero"))
    if how == "one":
        k = int(rng.integers(len(sizes)))
        sizes[k] = str(_pick(rng, (0, -1, 1, 2, 1 << 20, int(sizes[k]) + 1, int(sizes[k]) - 1, int(sizes[k]) * 2)))
    elif how == "drop":
        sizes = sizes[:-1]
    elif how == "add":
        sizes.append(str(_pick(rng, (1, 2))))
    elif how == "text":
        sizes[int(rng.integers(len(sizes)))] = "abc"
    else:
        sizes = ["0"] * len(sizes)
    _nrrd_set(state, "sizes", " ".join(sizes))
    return f"sizes {how} -> {' '.join(sizes)}"


def _nrrd_dimension(state, rng):
    value = _pick(rng, ("2", "4", "0", "-1", "x", "1"))
    _nrrd_set(state, "dimension", value)
    return f"dimension={value}"


def _nrrd_vectors(text: str) -> list[list[str]]:
    out = []
    for part in text.split():
        out.append(part.strip("()").split(",") if part != "none" else ["none"])
    return out


def _nrrd_space_directions(state, rng):
    vecs = _nrrd_vectors(_nrrd_get(state, "space directions") or "(1,0,0) (0,1,0) (0,0,1)")
    how = _pick(rng, ("nan", "zero", "collinear", "none", "drop", "huge", "text", "inf", "rotate"))
    k = int(rng.integers(len(vecs)))
    if how == "nan":
        vecs[k][int(rng.integers(len(vecs[k])))] = "nan"
    elif how == "inf":
        vecs[k][int(rng.integers(len(vecs[k])))] = "inf"
    elif how == "zero":
        vecs[k] = ["0", "0", "0"]
    elif how == "collinear":
        vecs[k] = list(vecs[(k + 1) % len(vecs)])
    elif how == "none":
        vecs[k] = ["none"]
    elif how == "drop":
        vecs = vecs[:-1]
    elif how == "huge":
        vecs[k][int(rng.integers(len(vecs[k])))] = "1e300"
    elif how == "text":
        vecs[k][0] = "abc"
    else:  # a valid rotation about z
        angle = float(rng.uniform(-np.pi, np.pi))
        c, s = np.cos(angle), np.sin(angle)
        try:
            m = np.array([[float(x) for x in v] for v in vecs])
            m = m @ np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])
            vecs = [[repr(float(x)) for x in row] for row in m]
        except ValueError:
            pass
    text = " ".join("none" if v == ["none"] else "(" + ",".join(v) + ")" for v in vecs)
    _nrrd_set(state, "space directions", text)
    return f"space directions {how}"


def _nrrd_origin(state, rng):
    value = _pick(rng, ("(nan,0,0)", "(0,0)", "(1e300,0,0)", None, "abc", "(inf,1,2)", "(10.5,-3,7)"))
    _nrrd_set(state, "space origin", value)
    return f"space origin={value}"


def _nrrd_type(state, rng):
    value = _pick(
        rng,
        ("uchar", "signed char", "ushort", "int", "uint", "float", "double", "long long", "block", "complex", "xyz"),
    )
    _nrrd_set(state, "type", value)
    return f"type={value}"


def _nrrd_encoding(state, rng):
    enc = _nrrd_get(state, "encoding")
    how = _pick(rng, ("swap", "recode", "other"))
    if how == "recode":  # consistent: the same voxels stored the other way (a valid file)
        if enc == "gzip":
            state["data"] = gzip.decompress(state["data"])
            _nrrd_set(state, "encoding", "raw")
        else:
            state["data"] = gzip.compress(state["data"], mtime=0)
            _nrrd_set(state, "encoding", "gzip")
        return "encoding recoded"
    value = ("raw" if enc == "gzip" else "gzip") if how == "swap" else _pick(rng, ("bzip2", "ascii", "hex", "zzz"))
    _nrrd_set(state, "encoding", value)
    return f"encoding={value}"


def _nrrd_endian(state, rng):
    value = _pick(rng, ("big", "little", "middle", None))
    _nrrd_set(state, "endian", value)
    return f"endian={value}"


def _nrrd_space(state, rng):
    value = _pick(
        rng, ("right-anterior-superior", "scanner-xyz", "3D-right-handed", "left-posterior-superior-time", "x", None)
    )
    _nrrd_set(state, "space", value)
    return f"space={value}"


def _nrrd_kinds(state, rng):
    value = _pick(rng, ("RGB-color domain domain", "domain domain", "vector domain domain domain", "xyz xyz xyz"))
    _nrrd_set(state, "kinds", value)
    return f"kinds={value}"


def _nrrd_remove(state, rng):
    key = _pick(rng, ("type", "sizes", "dimension", "encoding", "space directions", "kinds"))
    _nrrd_set(state, key, None)
    return f"removed {key}"


def _nrrd_data(state, rng):
    how = _pick(rng, ("truncate", "empty", "garbage", "extra", "detached"))
    data = state["data"]
    if how == "truncate":
        state["data"] = data[: int(len(data) * float(_pick(rng, (0.1, 0.5, 0.9, 0.999))))]
    elif how == "empty":
        state["data"] = b""
    elif how == "garbage":
        state["data"] = bytes(rng.integers(0, 256, size=len(data), dtype=np.uint8))
    elif how == "extra":
        state["data"] = data + b"\0" * int(rng.integers(1, 4096))
    else:
        _nrrd_set(state, "data file", "missing.raw")
    return f"data {how}"


def _nrrd_magic(state, rng):
    state["magic"] = _pick(rng, ("NRRD0001", "NRRD0005", "NRRD9999", "NRRX0004", ""))
    return f"magic={state['magic']!r}"


NRRD_MUTATORS: list[Callable] = [
    _nrrd_sizes,
    _nrrd_dimension,
    _nrrd_space_directions,
    _nrrd_origin,
    _nrrd_type,
    _nrrd_encoding,
    _nrrd_endian,
    _nrrd_space,
    _nrrd_kinds,
    _nrrd_remove,
    _nrrd_data,
    _nrrd_magic,
]


def make_nrrd(base: NrrdBase, rng: np.random.Generator, folder: Path, index: int) -> FuzzInput:
    state = {"magic": base.magic, "fields": list(base.fields), "data": base.data}
    mutations = _apply(NRRD_MUTATORS, state, rng)
    head = "\n".join([state["magic"], *(f"{k}: {v}" for k, v in state["fields"])]) + "\n\n"
    path = folder / f"case{index:05d}.nrrd"
    path.write_bytes(head.encode("ascii") + state["data"])
    return FuzzInput("nrrd", base.name, index, path, [path], mutations)


# --- DICOM ---------------------------------------------------------------------------------------


@dataclass
class DicomBase:
    name: str
    datasets: list  # pydicom Datasets in slice order, uncompressed


def _crop_dicom(ds, r0: int, c0: int, n: int):
    arr = ds.pixel_array[r0 : r0 + n, c0 : c0 + n]
    ps = [float(x) for x in ds.PixelSpacing]
    iop = np.array([float(x) for x in ds.ImageOrientationPatient])
    ipp = np.array([float(x) for x in ds.ImagePositionPatient])
    ipp = ipp + iop[:3] * ps[1] * c0 + iop[3:] * ps[0] * r0
    ds.ImagePositionPatient = [f"{x:.6f}" for x in ipp]
    ds.Rows, ds.Columns = arr.shape
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    return ds


def dicom_bases(test_data: Path) -> list[DicomBase]:
    import pydicom

    d2n = test_data / "dicom/dicom2nifti/tests_data"
    plan = [
        ("ct64", SAMPLE / "chest_ct_dicom", [f"IMG{i:04d}.dcm" for i in range(30, 38)], 16),  # CIP's ct-64Dicom
        ("sts025", test_data / "ct/ibsi_validation/STS_025/CT/image", [f"{i:06d}.dcm" for i in range(10, 18)], 50),
        ("hitachi-oblique", d2n / "hitachi/anatomical/001", None, 16),
        ("siemens-mr", d2n / "siemens/anatomical/001", None, 14),  # rows/columns 96:160 of 256: upstream's 110
    ]
    bases = []
    for name, folder, names, start in plan:
        files = [folder / n for n in names] if names else sorted(folder.glob("*.dcm"))
        datasets = [_crop_dicom(pydicom.dcmread(str(f)), start, start, 32) for f in files]
        bases.append(DicomBase(name, datasets))
    # an enhanced MR object (8 frames, per-frame positions in functional groups), cut to 48x48 (rows 32:96 and
    # columns 24:88 of upstream's in tests/data, so this is upstream's 40:88, 30:78)
    enhanced = d2n / "hyperfine/anatomical/001/001.dcm"
    bases.append(DicomBase("hyperfine-enhanced", [_crop_enhanced(pydicom.dcmread(str(enhanced)), 8, 6, 48)]))
    return bases


def _crop_enhanced(ds, r0: int, c0: int, n: int):
    shared = ds.SharedFunctionalGroupsSequence[0]
    ps = [float(x) for x in shared.PixelMeasuresSequence[0].PixelSpacing]
    iop = np.array([float(x) for x in shared.PlaneOrientationSequence[0].ImageOrientationPatient])
    for item in ds.PerFrameFunctionalGroupsSequence:
        plane = item.PlanePositionSequence[0]
        ipp = np.array([float(x) for x in plane.ImagePositionPatient])
        plane.ImagePositionPatient = [f"{x:.6f}" for x in ipp + iop[:3] * ps[1] * c0 + iop[3:] * ps[0] * r0]
    arr = ds.pixel_array[:, r0 : r0 + n, c0 : c0 + n]
    ds.Rows, ds.Columns = arr.shape[1:]
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    return ds


def set_raw(ds, keyword: str, text: str | bytes | None, vr: str | None = None) -> None:
    """Put ``text`` verbatim into ``keyword`` (None: delete it), whatever pydicom would validate."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    tag = Tag(tag_for_keyword(keyword))
    if text is None:
        if tag in ds:
            del ds[tag]
        return
    value = text.encode("latin-1") if isinstance(text, str) else text
    if len(value) % 2:
        value += b" " if (vr or dictionary_VR(tag)) not in ("UI", "OB", "OW", "US", "UL") else b"\0"
    ds[tag] = RawDataElement(tag, vr or dictionary_VR(tag), len(value), value, 0, False, True)


def _numbers(ds, keyword: str, default: list[float]) -> list[float]:
    """``keyword``'s values as floats, or ``default`` once an earlier mutation made them unreadable."""
    try:
        value = ds[keyword].value
        from pydicom.multival import MultiValue

        values = [float(x) for x in (value if isinstance(value, (list, tuple, MultiValue)) else [value])]
        return values if len(values) == len(default) else default
    except Exception:  # noqa: BLE001 - deleted, empty, raw text
        return default


def _targets(state, rng):
    dss = state["datasets"]
    if rng.random() < 0.5:
        return dss, "all"
    k = int(rng.integers(len(dss)))
    return [dss[k]], f"slice {k}"


def _dcm_position(state, rng):
    dss, where = _targets(state, rng)
    how = _pick(rng, ("nan", "two", "same", "huge", "shift", "delete", "empty", "text"))
    for ds in dss:
        ipp = _numbers(ds, "ImagePositionPatient", [0.0, 0.0, 0.0])
        if how == "nan":
            set_raw(ds, "ImagePositionPatient", f"nan\\{ipp[1]}\\{ipp[2]}")
        elif how == "two":
            set_raw(ds, "ImagePositionPatient", f"{ipp[0]}\\{ipp[1]}")
        elif how == "same":
            set_raw(ds, "ImagePositionPatient", "0\\0\\0")
        elif how == "huge":
            set_raw(ds, "ImagePositionPatient", f"{ipp[0]}\\1e300\\{ipp[2]}")
        elif how == "shift":
            set_raw(ds, "ImagePositionPatient", f"{ipp[0]}\\{ipp[1]}\\{ipp[2] + float(rng.uniform(-3, 3)):.4f}")
        elif how == "delete":
            set_raw(ds, "ImagePositionPatient", None)
        elif how == "empty":
            set_raw(ds, "ImagePositionPatient", "")
        else:
            set_raw(ds, "ImagePositionPatient", "abc\\def\\ghi")
    return f"ImagePositionPatient {how} ({where})"


def _dcm_orientation(state, rng):
    dss, where = _targets(state, rng)
    how = _pick(rng, ("zero", "nonorth", "nan", "five", "scaled", "tilt", "delete", "empty", "parallel", "flip"))
    values = {
        "zero": "0\\0\\0\\0\\0\\0",
        "nonorth": "1\\0\\0\\0.7071\\0.7071\\0",
        "nan": "nan\\0\\0\\0\\1\\0",
        "five": "1\\0\\0\\0\\1",
        "scaled": "2\\0\\0\\0\\2\\0",
        "tilt": "1\\0\\0\\0\\0.970\\-0.242",
        "parallel": "1\\0\\0\\1\\0\\0",
        "flip": "-1\\0\\0\\0\\-1\\0",
        "empty": "",
    }
    for ds in dss:
        set_raw(ds, "ImageOrientationPatient", values.get(how))
    return f"ImageOrientationPatient {how} ({where})"


def _dcm_spacing(state, rng):
    dss, where = _targets(state, rng)
    value = _pick(rng, ("0\\0", "-1\\-1", "nan\\1", "1.5", "1e300\\1e300", "", None, "0.5\\2.0", "abc\\1"))
    for ds in dss:
        set_raw(ds, "PixelSpacing", value)
    return f"PixelSpacing={value!r} ({where})"


def _dcm_thickness(state, rng):
    dss, where = _targets(state, rng)
    value = _pick(rng, ("0", "-5", "nan", None, "", "1e300", "2.5"))
    for ds in dss:
        set_raw(ds, "SliceThickness", value)
    return f"SliceThickness={value!r} ({where})"


def _us(value: int) -> bytes:
    return struct.pack("<H", value & 0xFFFF)


def _dcm_matrix(state, rng):
    dss, where = _targets(state, rng)
    key = _pick(rng, ("Rows", "Columns", "both"))
    how = _pick(rng, ("plus1", "minus1", "zero", "double", "max", "swap"))
    for ds in dss:
        rows, cols = (int(x) for x in _numbers(ds, "Rows", [32.0]) + _numbers(ds, "Columns", [32.0]))
        new = {
            "plus1": (rows + 1, cols + 1),
            "minus1": (rows - 1, cols - 1),
            "zero": (0, 0),
            "double": (rows * 2, cols * 2),
            "max": (65535, 65535),
            "swap": (rows // 2, cols * 2),
        }[how]
        if key in ("Rows", "both"):
            set_raw(ds, "Rows", _us(new[0]), "US")
        if key in ("Columns", "both"):
            set_raw(ds, "Columns", _us(new[1]), "US")
    return f"{key} {how} ({where})"


def _dcm_bits(state, rng):
    dss, where = _targets(state, rng)
    key = _pick(rng, ("BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel"))
    choices = {
        "BitsAllocated": (1, 8, 12, 32, 64, 0),
        "BitsStored": (0, 1, 8, 12, 17, 32),
        "HighBit": (0, 7, 11, 15, 31),
        "PixelRepresentation": (0, 1, 2),
        "SamplesPerPixel": (0, 3, 4),
    }
    value = int(_pick(rng, choices[key]))
    for ds in dss:
        set_raw(ds, key, _us(value), "US")
    return f"{key}={value} ({where})"


def _dcm_photometric(state, rng):
    dss, where = _targets(state, rng)
    value = _pick(rng, ("RGB", "PALETTE COLOR", "YBR_FULL", "MONOCHROME1", "XYZ", "", None))
    for ds in dss:
        set_raw(ds, "PhotometricInterpretation", value)
    return f"PhotometricInterpretation={value!r} ({where})"


def _dcm_rescale(state, rng):
    dss, where = _targets(state, rng)
    key = _pick(rng, ("RescaleSlope", "RescaleIntercept"))
    value = _pick(rng, ("nan", "0", "inf", "1e300", "", "-1", "abc", "2.5"))
    for ds in dss:
        set_raw(ds, key, value)
    return f"{key}={value!r} ({where})"


_TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2",  # implicit LE
    "1.2.840.10008.1.2.1",  # explicit LE
    "1.2.840.10008.1.2.2",  # explicit BE
    "1.2.840.10008.1.2.1.99",  # deflated
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.70",  # JPEG lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.5",  # RLE
    "1.2.3.4",
    "",
)


def _dcm_transfer_syntax(state, rng):
    value = _pick(rng, _TRANSFER_SYNTAXES)
    where = "all" if rng.random() < 0.5 else f"slice {int(rng.integers(len(state['datasets'])))}"
    state["ts"] = (value, where)
    return f"TransferSyntaxUID={value!r} ({where})"


def _dcm_frames(state, rng):
    dss, where = _targets(state, rng)
    value = _pick(rng, ("2", "0", "-1", "abc", "1"))
    for ds in dss:
        set_raw(ds, "NumberOfFrames", value, "IS")
    return f"NumberOfFrames={value!r} ({where})"


def _dcm_delete(state, rng):
    dss, where = _targets(state, rng)
    key = _pick(
        rng,
        (
            "SOPInstanceUID",
            "SeriesInstanceUID",
            "Modality",
            "PixelData",
            "Rows",
            "BitsAllocated",
            "SOPClassUID",
            "StudyInstanceUID",
            "PixelRepresentation",
            "PhotometricInterpretation",
            "SeriesNumber",
            "InstanceNumber",
        ),
    )
    empty = rng.random() < 0.5 and key != "PixelData"
    for ds in dss:
        if empty:
            set_raw(ds, key, b"")
        else:
            set_raw(ds, key, None)
    return f"{'emptied' if empty else 'deleted'} {key} ({where})"


def _dcm_pixeldata(state, rng):
    dss, where = _targets(state, rng)
    how = _pick(rng, ("half", "minus2", "empty", "extra", "odd"))
    for ds in dss:
        try:
            data = bytes(ds.PixelData)
        except Exception:  # noqa: BLE001 - deleted by an earlier mutation
            data = b""
        data = {
            "half": data[: len(data) // 2],
            "minus2": data[:-2],
            "empty": b"",
            "extra": data + b"\0" * 64,
            "odd": data[:-1],
        }[how]
        set_raw(ds, "PixelData", data, "OW")
    return f"PixelData {how} ({where})"


def _dcm_duplicate(state, rng):
    dss = state["datasets"]
    k = int(rng.integers(len(dss)))
    dup = copy.deepcopy(dss[k])
    if rng.random() < 0.5:
        set_raw(dup, "SOPInstanceUID", f"{dss[k].get('SOPInstanceUID', '1.2.3')}.9", "UI")
        how = "new SOPInstanceUID"
    else:
        how = "identical"
    dss.insert(k, dup)
    return f"duplicate slice {k} ({how})"


def _dcm_remove(state, rng):
    dss = state["datasets"]
    how = _pick(rng, ("middle", "first", "last", "all but one"))
    if len(dss) < 2:
        return f"removed slice(s): {how} (nothing to remove from one file)"
    if how == "middle" and len(dss) > 2:
        del dss[len(dss) // 2]
    elif how == "first":
        del dss[0]
    elif how == "last":
        del dss[-1]
    elif how == "all but one":
        del dss[1:]
    return f"removed slice(s): {how}"


def _dcm_series_uid(state, rng):
    dss = state["datasets"]
    k = int(rng.integers(len(dss)))
    set_raw(dss[k], "SeriesInstanceUID", "1.2.826.0.1.3680043.2.1125.999", "UI")
    return f"slice {k} in another series"


def _dcm_functional_groups(state, rng):
    """Enhanced objects: per-frame positions, shared orientation and spacing, frame items."""
    ds = state["datasets"][0]
    if "PerFrameFunctionalGroupsSequence" not in ds:
        return _dcm_position(state, rng)
    per_frame = ds.PerFrameFunctionalGroupsSequence
    shared = ds.SharedFunctionalGroupsSequence[0]
    k = int(rng.integers(len(per_frame)))
    how = _pick(rng, ("position nan", "position shift", "position delete", "orientation", "spacing", "drop frame"))
    if how.startswith("position"):
        plane = per_frame[k].PlanePositionSequence[0]
        ipp = _numbers(plane, "ImagePositionPatient", [0.0, 0.0, 0.0])
        value = {"position nan": f"nan\\{ipp[1]}\\{ipp[2]}", "position delete": None}.get(
            how, f"{ipp[0]}\\{ipp[1]}\\{ipp[2] + float(rng.uniform(-2, 2)):.4f}"
        )
        set_raw(plane, "ImagePositionPatient", value)
        return f"frame {k}: {how}"
    if how == "orientation":
        value = _pick(rng, ("0\\0\\0\\0\\0\\0", "2\\0\\0\\0\\2\\0", "1\\0\\0\\1\\0\\0", None))
        set_raw(shared.PlaneOrientationSequence[0], "ImageOrientationPatient", value)
        return f"shared ImageOrientationPatient={value!r}"
    if how == "spacing":
        value = _pick(rng, ("0\\0", "-1\\-1", "nan\\1", None, "0.5\\2"))
        set_raw(shared.PixelMeasuresSequence[0], "PixelSpacing", value)
        return f"shared PixelSpacing={value!r}"
    del per_frame[k]
    return f"dropped frame item {k} of {len(per_frame) + 1}"


def _dcm_file_damage(state, rng):
    k = int(rng.integers(len(state["datasets"])))
    how = _pick(rng, ("truncate", "garbage file", "zero length"))
    state.setdefault("file_damage", []).append((k, how, float(rng.uniform(0.05, 0.95))))
    return f"file {k}: {how}"


DICOM_MUTATORS: list[Callable] = [
    _dcm_position,
    _dcm_orientation,
    _dcm_spacing,
    _dcm_thickness,
    _dcm_matrix,
    _dcm_bits,
    _dcm_photometric,
    _dcm_rescale,
    _dcm_transfer_syntax,
    _dcm_frames,
    _dcm_delete,
    _dcm_pixeldata,
    _dcm_duplicate,
    _dcm_remove,
    _dcm_series_uid,
    _dcm_file_damage,
    _dcm_functional_groups,
]


def patch_transfer_syntax(blob: bytes, uid: str) -> bytes:
    """Rewrite (0002,0010) in a written file's meta group (explicit VR LE), fixing the group length."""
    tag = b"\x02\x00\x10\x00UI"
    at = blob.find(tag)
    if at < 0:
        return blob
    (old_len,) = struct.unpack("<H", blob[at + 6 : at + 8])
    value = uid.encode("ascii")
    if len(value) % 2:
        value += b"\0"
    blob = blob[:at] + tag + struct.pack("<H", len(value)) + value + blob[at + 8 + old_len :]
    group = blob.find(b"\x02\x00\x00\x00UL\x04\x00")
    if group >= 0:
        (n,) = struct.unpack("<I", blob[group + 8 : group + 12])
        blob = blob[: group + 8] + struct.pack("<I", n + len(value) - old_len) + blob[group + 12 :]
    return blob


def make_dicom(base: DicomBase, rng: np.random.Generator, folder: Path, index: int) -> FuzzInput:
    from io import BytesIO

    state = {"datasets": [copy.deepcopy(ds) for ds in base.datasets]}
    mutations = _apply(DICOM_MUTATORS, state, rng)
    series = folder / f"case{index:05d}"
    series.mkdir()
    files = []
    ts, ts_where = state.get("ts", (None, None))
    for k, ds in enumerate(state["datasets"]):
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        blob = buffer.getvalue()
        if ts is not None and ts_where in ("all", f"slice {k}"):
            blob = patch_transfer_syntax(blob, ts)
        path = series / f"s{k:03d}.dcm"
        path.write_bytes(blob)
        files.append(path)
    for k, how, fraction in state.get("file_damage", []):
        if k >= len(files):
            continue
        if how == "truncate":
            files[k].write_bytes(files[k].read_bytes()[: int(files[k].stat().st_size * fraction)])
        elif how == "zero length":
            files[k].write_bytes(b"")
        else:
            files[k].write_bytes(bytes(rng.integers(0, 256, size=2048, dtype=np.uint8)))
    if rng.random() < 0.2:  # one file of the series: medseg reads the series it belongs to
        k = int(rng.integers(len(files)))
        return FuzzInput("dicom", base.name, index, files[k], files, [*mutations, f"input: file {k}"])
    return FuzzInput("dicom", base.name, index, series, files, mutations)
