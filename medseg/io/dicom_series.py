"""DICOM series: every image of a folder (a classic file, each frame of an enhanced object, each tile of a
Siemens mosaic) becomes a :class:`Frame`; frames are grouped by SeriesInstanceUID and split into :class:`Stack` s
wherever series number, matrix, spacing, orientation, image type or echo differ; :func:`select_stack` picks the
one a command reads (or lists the candidates)."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError
from medseg.io.dicom_files import (
    _DICOMDIR_SOP,
    _LOCALIZER_TYPES,
    _NON_IMAGE_MODALITIES,
    _NON_IMAGE_SOP_PREFIXES,
    _NOT_DICOM_SUFFIXES,
    _open,
    _quiet_pydicom,
    _read_header,
    _warn,
)
from medseg.io.dicom_geometry import (
    StackGeometry,
    analyze_stack,
    describe_gaps,
    lps_affine,
    slice_normal,
)
from medseg.io.validate import MAX_AFFINE_MM
from medseg.volume import LPS_TO_RAS

# ----------------------------------------------------------------------------------------------
# Frames and stacks


@dataclass
class Frame:
    """One 2D image: a single-frame file, one frame of a multi-frame file, or one mosaic tile."""

    path: Path
    frame: int | None
    mosaic: int | None
    sop_instance_uid: str
    rows: int
    cols: int
    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: tuple[float, float] | None
    slope: float
    intercept: float
    volume_key: tuple


@dataclass
class Stack:
    """Frames that can form one (3D or 4D) volume: one series, or one part of a series.

    ``id`` is the SeriesInstanceUID, with ``#N`` appended when the series splits into several stacks.
    """

    id: str
    info: dict[str, Any]
    frames: list[Frame]
    split: dict[str, Any]
    problem: str | None = None

    @property
    def series_uid(self) -> str:
        return self.info["SeriesInstanceUID"]

    @property
    def orientation(self) -> np.ndarray | None:
        return self.frames[0].orientation

    @property
    def is_localizer(self) -> bool:
        return bool(_LOCALIZER_TYPES & set(self.split.get("image_type") or ()))

    @cached_property
    def geometry(self) -> StackGeometry:
        if self.problem:
            return StackGeometry(problem=self.problem)
        positions = np.array([f.position for f in self.frames])
        return analyze_stack(positions, self.orientation, [f.volume_key for f in self.frames])

    @property
    def error(self) -> str | None:
        """Why this stack cannot be read as a volume (irregular spacing counts: it needs a flag)."""
        return self.problem or self.geometry.problem

    @property
    def is_candidate(self) -> bool:
        """Could be the scan the user means: a readable volume, not a localizer."""
        return self.error is None and not self.is_localizer

    def describe(self) -> str:
        desc = self.info.get("SeriesDescription") or "no description"
        return f"{self.id} ({self.info.get('Modality') or '?'}, {desc}, {len(self.frames)} images)"

    def summary(self, show_patient: bool = False) -> dict[str, Any]:
        """What ``medseg series`` prints for this stack."""
        g = self.geometry
        row = {
            "series": self.id,
            "series_number": self.info.get("SeriesNumber"),
            "modality": self.info.get("Modality") or "",
            "description": self.info.get("SeriesDescription") or "",
            "images": len(self.frames),
            "slices": g.n_slices or None,
            "volumes": g.n_volumes or None,
            "matrix": [self.frames[0].cols, self.frames[0].rows] + ([g.n_slices] if g.n_slices else []),
            "spacing_mm": None,
            "orientation": None,
            "transfer_syntax": self.info.get("TransferSyntax"),
            "sop_class": self.info.get("SOPClassName"),
            "problem": self.error,
            "notes": [],
            "folder": self.info.get("folder"),
        }
        f0 = self.frames[0]
        if f0.pixel_spacing is not None and f0.orientation is not None:
            spacing = [float(f0.pixel_spacing[1]), float(f0.pixel_spacing[0])]
            if g.n_slices > 1:
                spacing.append(round(g.slice_spacing, 4))
            row["spacing_mm"] = [round(s, 4) for s in spacing]
            row["orientation"] = _orientation_label(f0.orientation)
        if g.n_volumes > 1 and not g.problem:
            row["notes"].append(f"{g.n_volumes} volumes (4D)")
        if g.irregular:
            row["notes"].append(f"uneven slice gaps ({describe_gaps(g.gaps)}): needs --resample-irregular")
        if g.tilted:
            row["notes"].append(f"gantry tilt {g.tilt_deg:.2f} deg (resampled on read)")
        if self.is_localizer:
            row["notes"].append("localizer")
        if self.info.get("mosaic"):
            row["notes"].append("Siemens mosaic")
        if show_patient:
            row["patient_name"] = self.info.get("PatientName", "")
            row["patient_id"] = self.info.get("PatientID", "")
        return row


def _orientation_label(orientation: np.ndarray) -> str:
    import nibabel as nib

    affine = LPS_TO_RAS @ lps_affine(orientation, (1.0, 1.0), np.zeros(3), slice_normal(orientation))
    codes = "".join(nib.aff2axcodes(affine))
    cosines = np.abs(affine[:3, :3])
    oblique = float(np.degrees(np.arccos(np.clip(cosines.max(axis=0).min(), -1, 1))))
    return codes if oblique < 0.5 else f"{codes} (oblique {oblique:.1f} deg)"


@dataclass
class DicomScan:
    """Everything found under a path: the stacks, non-image objects and skipped files."""

    root: Path
    stacks: list[Stack] = field(default_factory=list)
    non_images: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    n_files: int = 0

    @property
    def candidates(self) -> list[Stack]:
        return [s for s in self.stacks if s.is_candidate]


def _as_float_list(value, n: int) -> np.ndarray | None:
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.all(np.isfinite(arr)) else None


def _num(value, default=None):
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if math.isfinite(out) else default


def _int(value, default=None):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _first(seq_owner, keyword: str):
    seq = getattr(seq_owner, keyword, None) if seq_owner is not None else None
    return seq[0] if seq else None


def _series_info(ds, path: Path) -> dict[str, Any]:
    from pydicom.uid import UID

    sop = str(ds.get("SOPClassUID", ""))
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    info = {
        "SeriesInstanceUID": str(ds.get("SeriesInstanceUID", "") or ""),
        "StudyInstanceUID": str(ds.get("StudyInstanceUID", "") or ""),
        "FrameOfReferenceUID": str(ds.get("FrameOfReferenceUID", "") or ""),
        "SeriesNumber": _int(ds.get("SeriesNumber")),
        "SeriesDescription": str(ds.get("SeriesDescription", "") or ""),
        "Modality": str(ds.get("Modality", "") or ""),
        "Manufacturer": str(ds.get("Manufacturer", "") or ""),
        "SOPClassUID": sop,
        "SOPClassName": UID(sop).name if sop else "",
        "TransferSyntax": UID(str(ts)).name if ts else "",
        "PatientName": str(ds.get("PatientName", "") or ""),
        "PatientID": str(ds.get("PatientID", "") or ""),
        "folder": str(path.parent),
    }
    if not info["SeriesInstanceUID"]:
        # no UID: files of one folder with the same series number and description belong together
        # (and study: series numbers restart in every study, and one folder may hold two studies' series)
        info["SeriesInstanceUID"] = (
            f"no-uid:{path.parent}:{info['StudyInstanceUID']}:{info['SeriesNumber']}:{info['SeriesDescription']}"
        )
    return info


#: ImageType values that do not change what an image is, so they never split a stack: GE marks some
#: slices of a series ``ADD`` (``ORIGINAL\\PRIMARY\\AXIAL\\ADD`` beside ``ORIGINAL\\PRIMARY\\AXIAL``,
#: same series, geometry and matrix); dcm2niix reads such a series as one volume. Everything else
#: (localizer, magnitude/phase, derived/secondary, ...) still splits.
_IMAGE_TYPE_IGNORED = frozenset({"ADD", ""})


def _image_type(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.split("\\")
    return tuple(t for t in (str(v).strip().upper() for v in value) if t not in _IMAGE_TYPE_IGNORED)


def _file_digest(path: Path) -> str:
    import hashlib

    digest = hashlib.sha1()
    with _open(path) as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _frames_of(ds, path: Path) -> tuple[list[Frame], list[dict], str | None]:
    """Frames of one file, their split keys, and a problem that makes the whole file unusable."""
    rows, cols = _int(ds.get("Rows")), _int(ds.get("Columns"))
    problem = None
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        problem = f"is a colour image ({ds.get('PhotometricInterpretation', 'RGB')}); medseg segments greyscale volumes"
    instance = _int(ds.get("InstanceNumber"), 0)
    sop_uid = str(ds.get("SOPInstanceUID", "") or "")  # empty when an anonymiser blanked it
    n_frames = _int(ds.get("NumberOfFrames"), 1) or 1
    if "PerFrameFunctionalGroupsSequence" in ds:
        frames, keys, rescale_problem = _enhanced_frames(ds, path, rows, cols, sop_uid, instance)
        return frames, keys, problem or rescale_problem
    if n_frames > 1:
        problem = problem or f"multi-frame object with {n_frames} frames but no per-frame geometry"
    position = _as_float_list(ds.get("ImagePositionPatient"), 3)
    orientation = _as_float_list(ds.get("ImageOrientationPatient"), 6)
    spacing = _as_float_list(ds.get("PixelSpacing"), 2)
    problem = problem or _geometry_problem(position, orientation, spacing)
    key_common = {
        "image_type": _image_type(ds.get("ImageType")),
        "echo": _num(ds.get("EchoNumbers")),
    }
    slope, intercept, rescale_problem = _rescale(ds)
    problem = problem or rescale_problem
    volume_key = (
        _int(ds.get("TemporalPositionIdentifier"), 0),
        _int(ds.get("AcquisitionNumber"), 0),
        instance,
        str(path),
    )
    if "MOSAIC" in key_common["image_type"] and problem is None:
        return _mosaic_frames(ds, path, sop_uid, spacing, slope, intercept, volume_key, key_common)
    frame = Frame(
        path, None, None, sop_uid, rows, cols, position, orientation, _spacing(spacing), slope, intercept, volume_key
    )
    return [frame], [key_common], problem


#: how far ImageOrientationPatient's two vectors may be from unit length and from orthogonal (a few
#: scanners write 5-6 significant digits, far inside this)
ORIENTATION_TOLERANCE = 1e-2


def _geometry_problem(
    position: np.ndarray | None, orientation: np.ndarray | None, spacing: np.ndarray | None
) -> str | None:
    """Why an image's position, orientation or pixel spacing cannot place it in space (None when they can).

    Direction cosines that are not two orthogonal unit vectors, or a spacing that is not positive,
    would give a volume on a scaled, sheared or mirrored grid, not the scanner's; a position or
    spacing beyond a kilometre is a corrupt header (and overflows the geometry)."""
    for name, values in (("ImagePositionPatient", position), ("PixelSpacing", spacing)):
        if values is not None and np.abs(values).max() > MAX_AFFINE_MM:
            return f"{name} ({_dicom_values(values)}) is beyond any scanner's field of view"
    if orientation is not None:
        row, col = orientation[:3], orientation[3:]
        norms = (float(np.linalg.norm(row)), float(np.linalg.norm(col)))
        if max(abs(n - 1.0) for n in norms) > ORIENTATION_TOLERANCE or abs(float(row @ col)) > ORIENTATION_TOLERANCE:
            return f"ImageOrientationPatient ({_dicom_values(orientation)}) is not two orthogonal unit vectors"
    if spacing is not None and not np.all(spacing > 0):
        return f"PixelSpacing ({_dicom_values(spacing)}) is not positive"
    return None


def _rescale(item) -> tuple[float, float, str | None]:
    """``(RescaleSlope, RescaleIntercept, problem)`` of a dataset or functional-group item (1 and 0
    when absent). A value that is present but not a finite number, or a zero slope, is a problem:
    taking 1 or 0 instead would segment intensities the scanner did not write."""
    values = []
    for name, default in (("RescaleSlope", 1.0), ("RescaleIntercept", 0.0)):
        raw = item.get(name) if item is not None else None
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            values.append(default)
            continue
        value = _num(raw)
        if value is None:
            return 1.0, 0.0, f"{name} ({str(raw)[:40]!r}) is not a finite number"
        values.append(value)
    if values[0] == 0:
        return 1.0, 0.0, "RescaleSlope is 0 (every voxel would be the intercept)"
    return values[0], values[1], None


def _dicom_values(values) -> str:
    """A multi-valued element as DICOM writes it: ``1\\0\\0``."""
    return "\\".join(f"{float(v):g}" for v in values)


def _spacing(arr) -> tuple[float, float] | None:
    return None if arr is None else (float(arr[0]), float(arr[1]))


def _enhanced_frames(ds, path, rows, cols, sop_uid, instance):
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    frames, keys = [], []
    problem: str | None = None
    for index, item in enumerate(ds.PerFrameFunctionalGroupsSequence):

        def group(name, item=item):
            return _first(item, name) or _first(shared, name)

        pos = group("PlanePositionSequence")
        ori = group("PlaneOrientationSequence")
        meas = group("PixelMeasuresSequence")
        pvt = group("PixelValueTransformationSequence")
        content = _first(item, "FrameContentSequence")
        ftype = group("MRImageFrameTypeSequence") or group("CTImageFrameTypeSequence") or group("FrameTypeSequence")
        echo = group("MREchoSequence")
        dims = tuple(int(v) for v in (content.get("DimensionIndexValues") or [])) if content is not None else ()
        if isinstance(content.get("DimensionIndexValues") if content is not None else None, int):
            dims = (int(content.DimensionIndexValues),)
        # images at one position become volumes in file order (instance, then frame), as dcm2niix does
        volume_key = (instance, index, dims)
        slope, intercept, rescale_problem = _rescale(pvt)
        problem = problem or (f"frame {index + 1}: {rescale_problem}" if rescale_problem else None)
        frames.append(
            Frame(
                path,
                index,
                None,
                sop_uid,
                rows,
                cols,
                _as_float_list(pos.get("ImagePositionPatient"), 3) if pos is not None else None,
                _as_float_list(ori.get("ImageOrientationPatient"), 6) if ori is not None else None,
                _spacing(_as_float_list(meas.get("PixelSpacing"), 2) if meas is not None else None),
                slope,
                intercept,
                volume_key,
            )
        )
        keys.append(
            {
                "image_type": _image_type(ftype.get("FrameType"))
                if ftype is not None
                else _image_type(ds.get("ImageType")),
                "echo": _num(echo.get("EffectiveEchoTime")) if echo is not None else None,
                "stack": str(content.get("StackID", "")) if content is not None else "",
            }
        )
    return frames, keys, problem


def _mosaic_frames(ds, path, sop_uid, spacing, slope, intercept, volume_key, key_common):
    """Siemens mosaic: one tile per slice, positioned with the CSA header (via nibabel)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nibabel.nicom import dicomwrappers

        try:
            wrapper = dicomwrappers.MosaicWrapper(ds)
            n_tiles = int(wrapper.n_mosaic)
            first = np.asarray(wrapper.image_position, float)
            normal = np.asarray(wrapper.slice_normal, float)
            tile_rows, tile_cols = wrapper.image_shape[:2]
        except Exception as err:  # noqa: BLE001 - a broken CSA header
            frame = Frame(path, None, None, sop_uid, 0, 0, None, None, None, slope, intercept, volume_key)
            return [frame], [key_common], f"is a Siemens mosaic whose CSA header cannot be read ({err})"
    dz = _num(ds.get("SpacingBetweenSlices")) or _num(ds.get("SliceThickness"))
    orientation = _as_float_list(ds.get("ImageOrientationPatient"), 6)
    if dz is None or orientation is None:
        frame = Frame(path, None, None, sop_uid, 0, 0, None, None, None, slope, intercept, volume_key)
        return [frame], [key_common], "is a Siemens mosaic without slice spacing or orientation"
    frames = [
        Frame(
            path,
            None,
            k,
            sop_uid,
            int(tile_rows),
            int(tile_cols),
            first + k * dz * normal,
            orientation,
            _spacing(spacing),
            slope,
            intercept,
            volume_key,
        )
        for k in range(n_tiles)
    ]
    return frames, [dict(key_common, mosaic=True)] * n_tiles, None


def _walk(root: Path, recursive: bool, first: Path | None = None) -> Iterable[Path]:
    if root.is_file():
        yield root
        return
    if not recursive:
        # the named file first, so that it wins over copies of the same image (other transfer syntaxes)
        files = sorted(p for p in root.iterdir() if p.is_file())
        yield from sorted(files, key=lambda p: p != first)
        return
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(folder) / name


def scan_dicom(path: str | Path, recursive: bool = True, first: Path | None = None) -> DicomScan:
    """Find every DICOM image under ``path`` and group the images into stacks.

    Nothing but headers is read. Files that are not DICOM are listed in ``skipped``;
    SEG/RTSTRUCT/SR and other non-image objects in ``non_images``.
    """
    root = Path(path)
    scan = DicomScan(root)
    by_key: dict[tuple, list[tuple[Frame, dict, dict, str | None]]] = {}
    with _quiet_pydicom():
        _scan_files(scan, root, recursive, first, by_key)
    scan.stacks = _build_stacks(by_key)
    return scan


def _scan_files(scan: DicomScan, root: Path, recursive: bool, first: Path | None, by_key: dict) -> None:
    seen_sops: set[tuple[str, int | None]] = set()
    for file in _walk(root, recursive, first):
        scan.n_files += 1
        if file.name.lower().endswith(_NOT_DICOM_SUFFIXES) or file.name.upper() == "DICOMDIR":
            scan.skipped.append((file, "not DICOM"))
            continue
        ds = _read_header(file)
        if ds is None:
            scan.skipped.append((file, "not DICOM"))
            continue
        sop_class = str(ds.get("SOPClassUID", ""))
        media = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
        if _DICOMDIR_SOP in (sop_class, media):
            scan.skipped.append((file, "DICOMDIR"))
            continue
        # without a SOPClassUID (anonymised), the file meta's copy of it, the modality or a SEG's segments tell
        sop_class = sop_class or media
        kind = next((v for k, v in _NON_IMAGE_SOP_PREFIXES.items() if sop_class.startswith(k)), None)
        kind = kind or _NON_IMAGE_MODALITIES.get(str(ds.get("Modality", "") or "").strip().upper())
        if kind is None and "SegmentSequence" in ds:
            kind = _NON_IMAGE_SOP_PREFIXES["1.2.840.10008.5.1.4.1.1.66"]
        if kind or "Rows" not in ds or "Columns" not in ds:
            scan.non_images.append((file, kind or "no image data"))
            continue
        info = _series_info(ds, file)
        try:
            frames, keys, problem = _frames_of(ds, file)
        except Exception as err:  # noqa: BLE001 - a malformed header
            scan.skipped.append((file, f"unreadable header ({type(err).__name__}: {str(err)[:80]})"))
            continue
        content = None
        for frame, key in zip(frames, keys):
            if frame.sop_instance_uid:
                dedupe = (frame.sop_instance_uid, frame.frame, frame.mosaic)
            else:  # an anonymiser blanked the UID: the same image saved twice has the same bytes
                content = content or _file_digest(file)
                dedupe = ("content:" + content, frame.frame, frame.mosaic)
            if dedupe in seen_sops:
                continue  # the same image saved twice
            seen_sops.add(dedupe)
            split = {
                "series_number": info["SeriesNumber"],
                "matrix": (frame.rows, frame.cols),
                "pixel_spacing": None
                if frame.pixel_spacing is None
                else tuple(round(s, 4) for s in frame.pixel_spacing),
                **{k: v for k, v in key.items() if k != "mosaic"},
            }
            group_key = (info["SeriesInstanceUID"], tuple(sorted((k, repr(v)) for k, v in split.items())))
            by_key.setdefault(group_key, []).append(
                (frame, split, info if key.get("mosaic") is None else dict(info, mosaic=True), problem)
            )


def _cluster_orientations(items):
    """Split frames whose orientations differ by more than 1e-3 (direction cosines)."""
    clusters: list[tuple[np.ndarray | None, list]] = []
    for item in items:
        ori = item[0].orientation
        for ref, members in clusters:
            if (ref is None and ori is None) or (
                ref is not None and ori is not None and np.abs(ref - ori).max() < 1e-3
            ):
                members.append(item)
                break
        else:
            clusters.append((ori, [item]))
    return [members for _, members in clusters]


def _build_stacks(by_key) -> list[Stack]:
    per_series: dict[str, list[Stack]] = {}
    for (series_uid, _), items in by_key.items():
        for members in _cluster_orientations(items):
            frames = [m[0] for m in members]
            problems = [m[3] for m in members if m[3]]
            split = dict(members[0][1])
            info = members[0][2]
            problem = problems[0] if problems else None
            if problem is None and any(f.position is None or f.orientation is None for f in frames):
                problem = "images lack ImagePositionPatient/ImageOrientationPatient (not a volume)"
            if problem is None and any(f.pixel_spacing is None for f in frames):
                problem = "images lack PixelSpacing"
            per_series.setdefault(series_uid, []).append(Stack(series_uid, info, frames, split, problem))
    stacks = []
    for series_uid, group in per_series.items():
        group.sort(key=lambda s: -len(s.frames))  # stable: ties keep first-seen order
        if len(group) > 1:
            for i, stack in enumerate(group, start=1):
                stack.id = f"{series_uid}#{i}"
        stacks.extend(group)
    stacks.sort(key=lambda s: (s.info["folder"], s.info.get("SeriesNumber") or 0, s.id))
    return stacks


# ----------------------------------------------------------------------------------------------
# Choosing a stack


def _listing(stacks: list[Stack], limit: int = 6) -> str:
    shown = "; ".join(s.describe() for s in stacks[:limit])
    return shown + (f"; and {len(stacks) - limit} more" if len(stacks) > limit else "")


def select_stack(scan: DicomScan, series: str | None = None, notes: list[str] | None = None) -> Stack:
    """The stack to read: the one named by ``series``, or the primary one.

    ``series`` may be a stack id (``UID`` or ``UID#N`` as ``medseg series`` prints), a
    SeriesInstanceUID, or a SeriesNumber. Without it, the rule is: the only stack that can be read
    as a volume (localizers, single images, non-image objects and broken stacks are set aside).
    When several could be the scan, nothing is guessed: the error lists them.
    """
    path = scan.root
    if not scan.stacks:
        if scan.non_images:
            kinds = sorted({k for _, k in scan.non_images})
            raise InputError(f"holds no DICOM images, only non-image objects ({', '.join(kinds)})", path)
        if scan.skipped or scan.n_files:
            names = ", ".join(p.name for p, _ in scan.skipped[:3])
            raise InputError(
                f"holds no readable image: none of its {scan.n_files} file(s) is DICOM ({names}"
                f"{'...' if len(scan.skipped) > 3 else ''}); give a DICOM folder or a NIfTI file",
                path,
            )
        raise InputError("holds no readable image (the folder is empty)", path)
    if series is not None:
        chosen = [s for s in scan.stacks if s.id == series]
        if not chosen:
            chosen = [s for s in scan.stacks if s.series_uid == series]
        if not chosen and str(series).isdigit():
            chosen = [s for s in scan.stacks if s.info.get("SeriesNumber") == int(series)]
        if not chosen:
            raise InputError(
                f"no series '{series}' here; available: {_listing(scan.stacks)} (see `medseg series`)", path
            )
        if len(chosen) > 1:
            usable = [s for s in chosen if s.is_candidate]
            if len(usable) != 1:
                raise InputError(
                    f"'{series}' matches {len(chosen)} stacks; name one with --series: {_listing(chosen)}", path
                )
            chosen = usable
        return chosen[0]
    if len(scan.stacks) == 1:
        return scan.stacks[0]
    candidates = scan.candidates
    if len(candidates) == 1:
        others = len(scan.stacks) - 1
        message = (
            f"{path}: using series {candidates[0].describe()}; {others} other stack(s) set aside "
            "(localizers, single images or unreadable); see `medseg series`"
        )
        _warn(message, notes)
        return candidates[0]
    if not candidates:
        biggest = max(scan.stacks, key=lambda s: len(s.frames))
        raise InputError(
            f"none of the {len(scan.stacks)} stacks here is a readable volume; the largest, "
            f"{biggest.describe()}, {biggest.error or 'is a localizer'}",
            path,
        )
    raise InputError(
        f"holds {len(candidates)} series that could be the scan; choose one with --series "
        f"(or give one file of it): {_listing(candidates)}",
        path,
    )
