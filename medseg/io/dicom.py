"""DICOM series in: discovery, grouping into stacks, geometry checks, and reading to a Volume.

A folder is scanned recursively; every image (a classic single-frame file, each frame of an
enhanced multi-frame object, each tile of a Siemens mosaic) becomes a :class:`Frame`. Frames are
grouped by SeriesInstanceUID and split further into :class:`Stack` s wherever SeriesNumber,
matrix, pixel spacing, orientation, image type or echo differ (localizers, magnitude/phase,
echoes). A stack's slices are ordered by position along the slice normal; spacing comes from the
positions; several images per position make a multi-volume (4D) stack.

Bad geometry is never stacked silently: missing slices or uneven gaps raise unless the caller
asks to resample; gantry tilt is resampled onto an orthogonal grid with a warning (or kept in
a sheared affine); a single 2D image, a stack whose slices sit at one position, mixed
orientations and colour images are refused with a reason.

Example:
    >>> scan = scan_dicom("study/")  # doctest: +SKIP
    >>> [s.id for s in scan.stacks]  # doctest: +SKIP
    ['1.2.840...']
    >>> volume = read_dicom("study/")  # doctest: +SKIP

The files (:mod:`medseg.io.dicom_files`) and the series and stacks (:mod:`medseg.io.dicom_series`) are in
modules of their own; this one decodes a stack's pixels and reads it into a :class:`~medseg.volume.Volume`,
and re-exports what callers use.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError
from medseg.io.dicom_files import (
    DICOM_FILE_SUFFIXES,
    DicomWarning,
    _open,
    _quiet_pydicom,
    _warn,
    is_dicom_file,
    is_dicom_input,
)
from medseg.io.dicom_geometry import (
    StackGeometry,
    describe_gaps,
    lps_affine,
    regularize,
    slice_normal,
    untilt,
)
from medseg.io.dicom_series import DicomScan, Frame, Stack, _int, _listing, scan_dicom, select_stack
from medseg.volume import LPS_TO_RAS, Volume

# ----------------------------------------------------------------------------------------------
# Pixels


class _PixelCache:
    """Decoded pixel arrays per file: ``(frames, rows, cols)``, stored values (no rescale)."""

    def __init__(self) -> None:
        self._arrays: dict[Path, np.ndarray] = {}

    def get(self, frame: Frame) -> np.ndarray:
        arr = self._arrays.get(frame.path)
        if arr is None:
            arr = self._decode(frame.path)
            self._arrays = {frame.path: arr} if len(self._arrays) > 8 else {**self._arrays, frame.path: arr}
        if frame.mosaic is not None:
            return _mosaic_tile(arr[0], frame.mosaic, frame.rows, frame.cols)
        return arr[frame.frame or 0]

    @staticmethod
    def _decode(path: Path) -> np.ndarray:
        import pydicom

        try:
            with _open(path) as fh, _quiet_pydicom():
                ds = pydicom.dcmread(fh, force=True)
        except Exception as err:  # noqa: BLE001
            raise InputError(f"cannot read the file ({type(err).__name__}: {str(err)[:120]})", path) from None
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                arr = ds.pixel_array
        except Exception as err:  # noqa: BLE001 - decoder errors come in many types
            first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            # an empty or unknown TransferSyntaxUID reads as a plain string, without a name
            name = getattr(ts, "name", None) or (f"transfer syntax '{ts}'" if ts else "no transfer syntax")
            hint = (
                ". Compressed DICOM needs the decoders pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg, "
                "pylibjpeg-rle and pyjpegls (or python-gdcm)"
                if _is_compressed(ts)
                else ""
            )
            raise InputError(f"cannot decode the pixel data ({name}): {first}{hint}", path) from None
        with _quiet_pydicom():
            n_frames = _int(ds.get("NumberOfFrames"), 1) or 1
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3 or arr.shape[0] != n_frames:
            raise InputError(f"decoded pixel data has shape {arr.shape}, expected {n_frames} frame(s)", path)
        if arr.dtype.byteorder not in ("=", "|"):
            arr = arr.astype(arr.dtype.newbyteorder("="))
        return arr


def _is_compressed(ts) -> bool:
    try:
        return bool(ts.is_compressed)
    except (AttributeError, ValueError):  # empty, unknown or not a transfer syntax at all
        return False


def _mosaic_tile(mosaic: np.ndarray, k: int, rows: int, cols: int) -> np.ndarray:
    per_row = mosaic.shape[1] // cols
    r, c = divmod(k, per_row)
    return mosaic[r * rows : (r + 1) * rows, c * cols : (c + 1) * cols]


def _output_dtype(frames: list[Frame], stored: np.dtype, lo: float, hi: float) -> np.dtype:
    slopes = {f.slope for f in frames}
    intercepts = {f.intercept for f in frames}
    if stored.kind == "f":
        return np.dtype(np.float32)
    if slopes == {1.0} and intercepts == {0.0}:
        return stored
    if slopes == {1.0} and all(float(i).is_integer() for i in intercepts):
        for dtype in (np.int16, np.uint16, np.int32):
            info = np.iinfo(dtype)
            if info.min <= lo and hi <= info.max:
                return np.dtype(dtype)
    return np.dtype(np.float32)


# ----------------------------------------------------------------------------------------------
# Reading


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def read_stack(
    stack: Stack, resample_irregular: bool = False, keep_tilt: bool = False, source: Path | None = None
) -> Volume:
    """Decode a stack into a :class:`Volume` (RAS affine; 4D as ``(i, j, k, volume)``).

    Raises:
        InputError: the stack is not a volume, or its spacing is uneven and ``resample_irregular``
            is false.
    """
    path = Path(source or stack.info["folder"])
    if stack.error:
        raise InputError(f"series {stack.id}: {stack.error}", path)
    geom = stack.geometry
    notes: list[str] = []
    if geom.irregular and not resample_irregular:
        raise InputError(
            f"series {stack.id}: slice spacing is not uniform (gaps {describe_gaps(geom.gaps)}; a missing slice?); "
            "rerun with --resample-irregular to interpolate onto an even grid",
            path,
        )
    cache = _PixelCache()
    f0 = stack.frames[0]
    n_vol, n_slices = geom.n_volumes, geom.n_slices
    first_pixels = cache.get(stack.frames[geom.order[0][0]])
    integral = all(
        f.slope == 1.0 and float(f.intercept).is_integer() and abs(f.intercept) < 2**31 for f in stack.frames
    )
    wide = np.int64 if first_pixels.dtype.itemsize >= 4 else np.int32
    work_dtype = wide if integral and first_pixels.dtype.kind in "iu" else np.float32
    data = np.empty((f0.cols, f0.rows, n_slices, n_vol), dtype=work_dtype)
    for v, volume_order in enumerate(geom.order):
        for k, index in enumerate(volume_order):
            frame = stack.frames[index]
            pixels = cache.get(frame)
            if pixels.shape != (f0.rows, f0.cols):
                raise InputError(f"frame {index} has shape {pixels.shape}, expected {(f0.rows, f0.cols)}", frame.path)
            if work_dtype is np.float32:
                scaled = pixels.T.astype(np.float64) * frame.slope + frame.intercept
                if scaled.size and not np.abs(scaled).max() <= _FLOAT32_MAX:
                    raise InputError(
                        f"RescaleSlope {frame.slope:g} and RescaleIntercept {frame.intercept:g} give values beyond "
                        "the float32 range; the rescale tags are corrupt",
                        frame.path,
                    )
                data[:, :, k, v] = scaled
            else:
                data[:, :, k, v] = pixels.T.astype(work_dtype) + int(frame.intercept)
    dtype = _output_dtype(stack.frames, first_pixels.dtype, float(data.min()), float(data.max()))
    if dtype != data.dtype:
        data = data.astype(dtype)
    orientation = stack.orientation
    normal = slice_normal(orientation)
    positions = geom.positions
    step = geom.step
    resampled = None
    if geom.irregular:
        along = positions @ normal
        data, new_spacing = regularize(data, along)
        step = step * (new_spacing / float(step @ normal))
        resampled = "irregular spacing"
        _warn(
            f"{path}: series {stack.id}: uneven slice gaps ({describe_gaps(geom.gaps)}) interpolated onto "
            f"{data.shape[2]} slices {new_spacing:.4g} mm apart",
            notes,
        )
    affine = lps_affine(orientation, f0.pixel_spacing, positions[0], step)
    if geom.tilted:
        if keep_tilt:
            _warn(f"{path}: series {stack.id}: gantry tilt {geom.tilt_deg:.2f} deg kept in a sheared affine", notes)
        else:
            fill = float(np.min(data))
            data, affine = untilt(data, affine, orientation, fill)
            resampled = "gantry tilt" if resampled is None else resampled + " + gantry tilt"
            _warn(
                f"{path}: series {stack.id}: gantry tilt {geom.tilt_deg:.2f} deg; resampled onto an orthogonal grid "
                f"({data.shape[0]}x{data.shape[1]} in-plane); use --keep-tilt to keep the sheared geometry",
                notes,
            )
    if resampled and dtype.kind in "iu":
        data = np.rint(data).astype(dtype)  # interpolated, back to the scanner's integer type
    if n_vol == 1:
        data = data[..., 0]
    meta = _volume_meta(stack, geom, resampled, notes)
    return Volume(np.ascontiguousarray(data), LPS_TO_RAS @ affine, meta)


def _volume_meta(stack: Stack, geom: StackGeometry, resampled: str | None, notes: list[str]) -> dict[str, Any]:
    info = stack.info
    frames = [stack.frames[i] for i in geom.order[0]]
    dicom = {
        "stack_id": stack.id,
        "series_instance_uid": info["SeriesInstanceUID"],
        "study_instance_uid": info["StudyInstanceUID"],
        "frame_of_reference_uid": info["FrameOfReferenceUID"],
        "series_number": info["SeriesNumber"],
        "series_description": info["SeriesDescription"],
        "sop_class_uid": info["SOPClassUID"],
        "manufacturer": info["Manufacturer"],
        "n_volumes": geom.n_volumes,
        "on_source_grid": resampled is None and not stack.info.get("mosaic"),
        "resampled": resampled,
        "tilt_deg": round(geom.tilt_deg, 4),
        "files": sorted({str(f.path) for f in stack.frames}),
        # the first volume's frames in slice order: what a DICOM SEG must reference
        "frames": [
            {
                "path": str(f.path),
                "frame": f.frame,
                "mosaic": f.mosaic,
                "sop_instance_uid": f.sop_instance_uid,
                "position": [float(x) for x in f.position],
                "orientation": [float(x) for x in f.orientation],
                "pixel_spacing": list(f.pixel_spacing),
                "rows": f.rows,
                "cols": f.cols,
            }
            for f in frames
        ],
    }
    return {
        "format": "dicom",
        "modality": info["Modality"],
        "dicom": dicom,
        "warnings": list(notes),
    }


def read_dicom(
    path: str | Path,
    series: str | None = None,
    resample_irregular: bool = False,
    keep_tilt: bool = False,
) -> Volume:
    """Read a DICOM folder (searched recursively) or the series one DICOM file belongs to.

    Args:
        path: a folder, or one file of a series (its folder's other files of the same stack are read).
        series: stack id, SeriesInstanceUID or SeriesNumber (see :func:`select_stack`).
        resample_irregular: interpolate stacks with missing slices or uneven gaps onto an even grid.
        keep_tilt: keep gantry tilt as a sheared affine instead of resampling onto an orthogonal grid.
    """
    path = Path(path)
    notes: list[str] = []
    if path.is_file():
        scan = scan_dicom(path.parent, recursive=False, first=path)
        own = [s for s in scan.stacks if any(f.path == path for f in s.frames)]
        if not own:
            kind = next((k for p, k in scan.non_images if p == path), None)
            if kind:
                raise InputError(f"is a DICOM {kind}, not an image volume", path)
            why = next((k for p, k in scan.skipped if p == path), "not DICOM")
            raise InputError(f"is not a readable DICOM image ({why})", path)
        if series is None and len(own) > 1:
            usable = [s for s in own if s.is_candidate]
            if len(usable) != 1:
                raise InputError(f"holds {len(own)} stacks; choose one with --series: {_listing(own)}", path)
            own = usable
        scan.stacks = own if series is None else scan.stacks
        scan.root = path
    else:
        scan = scan_dicom(path)
    stack = select_stack(scan, series, notes)
    volume = read_stack(stack, resample_irregular=resample_irregular, keep_tilt=keep_tilt, source=path)
    volume.meta["warnings"] = notes + volume.meta["warnings"]
    volume.meta["source"] = str(path)
    volume.meta["reader"] = "dicom"
    return volume


__all__ = [
    "DICOM_FILE_SUFFIXES", "DicomScan", "DicomWarning", "Frame", "Stack", "is_dicom_file", "is_dicom_input",
    "read_dicom", "read_stack", "scan_dicom", "select_stack",
]  # fmt: skip
