"""NIfTI-1/2 reading and writing with nibabel, keeping the source header for exact write-back."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.spatialimages import HeaderDataError

from medseg.errors import InputError
from medseg.io.atomic import TMP_MARKER, atomic_path
from medseg.volume import Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")
_INTENT_LABEL = 1002  # NIFTI_INTENT_LABEL
_GEOMETRY_FIELDS = (
    "qform_code",
    "sform_code",
    "quatern_b",
    "quatern_c",
    "quatern_d",
    "qoffset_x",
    "qoffset_y",
    "qoffset_z",
    "srow_x",
    "srow_y",
    "srow_z",
    "xyzt_units",
)


def is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES)


def read_nifti(path: str | Path) -> Volume:
    """Read a NIfTI file eagerly (so truncation is found now, not halfway through inference).

    Trailing singleton dimensions beyond the third are kept in ``meta['source_shape']`` and dropped
    from the array; a 4th dimension with several volumes becomes the channel axis ``(i, j, k, c)``.
    """
    path = Path(path)
    try:
        img = nib.load(str(path))
    except HeaderDataError as err:  # a header field nibabel cannot work with (datatype, vox_offset, ...)
        raise InputError(f"has an invalid NIfTI header ({_short(err)})", path) from None
    except (nib.filebasedimages.ImageFileError, ValueError) as err:
        raise InputError(f"not a readable NIfTI file ({_short(err)})", path) from None
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile) as err:
        raise InputError(f"cannot read the file, it may be truncated or corrupt ({_short(err)})", path) from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"is a {type(img).__name__}, not a NIfTI image", path)
    _check_declared_size(img, path)
    try:
        data = np.asanyarray(img.dataobj)
    except HeaderDataError as err:  # e.g. a valid scl_slope with a NaN scl_inter
        raise InputError(f"has an invalid NIfTI header ({_short(err)})", path) from None
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError) as err:
        raise InputError(f"image data is truncated or corrupt ({_short(err)})", path) from None
    source_shape = tuple(int(s) for s in data.shape)
    if data.ndim > 3:
        extra = data.shape[3:]
        if int(np.prod(extra)) == 1:
            data = data.reshape(data.shape[:3])
        elif data.ndim == 5 and data.shape[3] == 1:
            data = data.reshape(data.shape[:3] + (data.shape[4],))  # NIfTI vector (i, j, k, 1, c)
    if data.dtype.byteorder not in ("=", "|"):
        data = data.astype(data.dtype.newbyteorder("="))
    header = img.header.copy()
    meta = {
        "source": str(path),
        "format": "nifti",
        "nifti_header": header,
        "nifti_class": type(img).__name__,
        "source_shape": source_shape,
        "qform_code": int(header["qform_code"]),
        "sform_code": int(header["sform_code"]),
    }
    return Volume(c_order(data), img.affine, meta)


def f_order(data: np.ndarray, rows: int = 32) -> np.ndarray:
    """``np.asfortranarray(data)`` for a C-order array, copied a block of the first axis at a time
    (each block's source is contiguous): 0.14 s against numpy's 0.44 s for 512 x 512 x 200 uint8, and
    nibabel's own column-major write of a C-order array took 0.6 s (measured)."""
    if data.flags.f_contiguous or data.ndim < 3 or not data.flags.c_contiguous:
        return data
    out = np.empty(data.shape, data.dtype, order="F")
    for x in range(0, data.shape[0], rows):
        out[x : x + rows] = data[x : x + rows]
    return out


def c_order(data: np.ndarray, planes: int = 8) -> np.ndarray:
    """``np.ascontiguousarray(data)`` for NIfTI's column-major arrays, copied a few planes of the third
    axis at a time: each block's source is contiguous and stays in cache, 4x faster than numpy's
    one-pass transposing copy (0.20 s against 0.84 s for 512 x 512 x 200 int16, measured)."""
    if data.flags.c_contiguous or data.ndim < 3 or not data.flags.f_contiguous:
        return np.ascontiguousarray(data)
    out = np.empty(data.shape, data.dtype)
    for z in range(0, data.shape[2], planes):
        out[:, :, z : z + planes] = data[:, :, z : z + planes]
    return out


#: deflate cannot shrink data by more than about 1032:1, so a .nii.gz can hold at most this many bytes per byte
_MAX_DEFLATE_RATIO = 1032


def _check_declared_size(img, path: Path) -> None:
    """A header that declares more voxel bytes than the file can hold is a truncated or corrupt file:
    refused here, against the file's size, before anything is allocated."""
    header = img.header
    shape = [int(s) for s in header.get_data_shape()]
    if any(s < 0 for s in shape):
        raise InputError(f"header declares a negative dimension {tuple(shape)}; the file is corrupt", path)
    need = int(np.prod(shape, dtype=object)) * header.get_data_dtype().itemsize + int(header.get_data_offset())
    size = path.stat().st_size
    gz = path.name.lower().endswith(".gz")
    room = size * _MAX_DEFLATE_RATIO + 4096 if gz else size
    if need > room:
        dims = "x".join(map(str, shape))
        raise InputError(
            f"is truncated or corrupt: its header declares {dims} {header.get_data_dtype()} voxels "
            f"({_bytes(need)}) but the file holds {_bytes(size)}{' compressed' if gz else ''}",
            path,
        )


def _bytes(n: int) -> str:
    for unit, scale in (("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:160]


def _label_header(like: Volume, dtype: np.dtype):
    """A header for a label map on ``like``'s grid: same geometry fields, label intent."""
    header = like.meta.get("nifti_header")
    klass = nib.Nifti2Image if like.meta.get("nifti_class") == "Nifti2Image" else nib.Nifti1Image
    if header is None:
        return klass, None
    header = header.copy()
    header.set_data_dtype(dtype)
    header["scl_slope"] = np.nan
    header["scl_inter"] = np.nan
    header["cal_min"] = 0
    header["cal_max"] = 0
    return klass, header


def to_nifti_image(volume: Volume, dtype: np.dtype | None = None, label: bool = False):
    """Build a nibabel image for ``volume``; with a source header, qform/sform are copied verbatim."""
    data = volume.array if dtype is None else volume.array.astype(dtype, copy=False)
    source_shape = volume.meta.get("source_shape")
    if source_shape and len(source_shape) > data.ndim and int(np.prod(source_shape)) == data.size:
        data = data.reshape(source_shape)  # keep e.g. a trailing singleton time axis exactly
    data = f_order(data)  # nibabel writes column-major: from a C-order array it copies 4x slower
    klass, header = (
        _label_header(volume, data.dtype)
        if volume.meta.get("nifti_header") is not None
        else (
            nib.Nifti1Image,
            None,
        )
    )
    if header is not None:
        img = klass(data, None, header=header)
        # copy the raw geometry fields: re-encoding a qform from its matrix drifts by ~1e-16
        for key in _GEOMETRY_FIELDS:
            img.header[key] = header[key]
    else:
        img = nib.Nifti1Image(data, volume.affine)
        img.set_qform(volume.affine, 1)
        img.set_sform(volume.affine, 1)
    img.header.set_data_dtype(data.dtype)
    if label:
        img.header.set_intent(_INTENT_LABEL)
        img.header["descrip"] = b"medseg labels"
    return img


def write_nifti(volume: Volume, path: str | Path, dtype: np.dtype | None = None, label: bool = False) -> Path:
    """Write ``volume`` atomically as NIfTI (``.nii`` or ``.nii.gz``)."""
    path = Path(path)
    img = to_nifti_image(volume, dtype, label=label)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def label_dtype(max_label: int) -> np.dtype:
    return np.dtype(np.uint8) if max_label <= 255 else np.dtype(np.uint16)


def write_labels(labels: np.ndarray, like: Volume, path: str | Path) -> Path:
    """Write a label map on ``like``'s grid: same shape, affine and qform/sform codes; uint8/uint16."""
    if tuple(labels.shape) != like.shape:
        raise ValueError(f"labels shape {labels.shape} != image shape {like.shape}")
    dtype = label_dtype(int(labels.max()) if labels.size else 0)
    return write_nifti(like.with_array(labels), path, dtype=dtype, label=True)


def write_label_masks(labels: np.ndarray, like: Volume, folder: str | Path, names: dict[int, str]) -> Path:
    """One binary uint8 mask per named label (``<name>.nii.gz``, empty ones too, as TotalSegmentator
    writes them) in ``folder``, each on ``like``'s grid. The folder appears whole or not at all: the
    masks are written into a temporary sibling folder that is then renamed onto ``folder`` (an older
    ``folder`` is replaced)."""
    import os
    import secrets
    import shutil

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f"{folder.name}{TMP_MARKER}{secrets.token_hex(6)}")
    tmp.mkdir()
    old = None
    try:
        for value, name in sorted(names.items()):
            if value == 0:
                continue
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
            write_nifti(like.with_array((labels == value).astype(np.uint8)), tmp / f"{safe}.nii.gz", label=True)
        if folder.exists():
            old = folder.with_name(f"{folder.name}{TMP_MARKER}old-{secrets.token_hex(6)}")
            os.replace(folder, old)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return folder
