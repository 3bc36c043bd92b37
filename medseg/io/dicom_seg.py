"""DICOM Segmentation (SEG) out and back in, with highdicom.

The writer puts a label map back onto the source series' own frames (the DICOM identifiers and
frame geometry :mod:`medseg.io.dicom` keeps in ``volume.meta['dicom']``), so every SEG frame
references the source image it segments. One segment per label, named, with a SNOMED CT concept
where the name is a known structure; BINARY, uncompressed (what OHIF and other viewers display).

Example:
    >>> write_dicom_seg(labels, volume, "scan_seg.dcm", {1: ("liver", (220, 90, 50))})  # doctest: +SKIP
    >>> back, names = read_dicom_seg("scan_seg.dcm", like=volume)  # doctest: +SKIP
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from medseg import __version__
from medseg.errors import InputError, MedsegError, install_extra
from medseg.io.atomic import atomic_path
from medseg.volume import LPS_TO_RAS, Volume

# names whose SNOMED CT concept is not found by the generic lookup (``codes.SCT.<CamelCase>``)
_ALIASES = {
    "body": "EntireBody",
    "spine": "Spine",
    "vertebrae": "Vertebra",
    "spinal column": "Spine",
    "bladder": "Bladder",
    "urinary bladder": "Bladder",
    "gallbladder": "Gallbladder",
    "tumour": "Neoplasm",
    "tumor": "Neoplasm",
    "lesion": "Lesion",
}
_ABNORMAL = {"Neoplasm", "Lesion", "Mass"}
# type 2 patient/study attributes the SEG copies from its source (in memory only)
_TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "AccessionNumber",
)


def require_highdicom():
    try:
        import highdicom
    except ImportError:
        raise MedsegError(f"DICOM SEG needs highdicom: {install_extra('dicom-seg')}") from None
    return highdicom


def missing_references(dicom: dict) -> str | None:
    """Why a DICOM SEG cannot reference this source series (an anonymiser blanked or removed the UIDs it
    must name: series, SOP instances and classes, frame of reference), or None. medseg does not invent
    them: a SEG pointing at made-up UIDs would be matched to nothing by a PACS or viewer."""
    names = []
    series = str(dicom.get("series_instance_uid") or "")
    if not series or series.startswith("no-uid:"):
        names.append("SeriesInstanceUID")
    if any(not f.get("sop_instance_uid") for f in dicom.get("frames", [])):
        names.append("SOPInstanceUID")
    if not dicom.get("sop_class_uid"):
        names.append("SOPClassUID")
    if not dicom.get("frame_of_reference_uid"):
        names.append("FrameOfReferenceUID")
    if not names:
        return None
    return (
        f"the source series has no {', '.join(names)} (anonymised data?), so a DICOM SEG could not reference or "
        "be aligned with it; write NIfTI labels instead"
    )


def segment_concept(name: str):
    """``(category, type)`` codes for a label name; a SNOMED CT structure where one is known.

    ``liver`` -> Anatomical Structure / Liver; ``kidneys`` -> Kidney; ``tumour`` -> Morphologically
    Abnormal Structure / Neoplasm; an unknown name -> Tissue / Tissue (its name stays the label).
    """
    from pydicom.sr.codedict import codes

    words = re.sub(r"[^a-z0-9 ]+", " ", name.lower().replace("_", " ")).split()
    text = " ".join(words)
    candidates = [_ALIASES[text]] if text in _ALIASES else []
    for variant in (words, [w[:-1] if w.endswith("s") and len(w) > 3 else w for w in words]):
        candidates.append("".join(w.capitalize() for w in variant))
    for keyword in candidates:
        try:
            code = getattr(codes.SCT, keyword)
        except AttributeError:
            continue
        category = (
            codes.cid7150.MorphologicallyAbnormalStructure
            if keyword in _ABNORMAL
            else codes.cid7150.AnatomicalStructure
        )
        return category, code
    return codes.cid7150.Tissue, codes.SCT.Tissue


def _anatomical():
    from pydicom.sr.codedict import codes

    return codes.cid7150.AnatomicalStructure


def _tissue():
    from pydicom.sr.codedict import codes

    return codes.cid7150.Tissue


def _cielab(rgb) -> Any:
    import highdicom as hd

    try:
        return hd.color.CIELabColor.from_rgb(*[int(c) for c in rgb[:3]])  # highdicom >= 0.23
    except AttributeError:
        return None


def labels_on_source_frames(labels: np.ndarray, volume: Volume) -> np.ndarray:
    """The label map sampled on every source frame: ``(frames, rows, cols)``, nearest neighbour.

    Exact (a transpose) when the volume is the source grid; otherwise each source pixel centre is
    mapped through the volume's affine (tilt-corrected or regularised stacks go back onto the
    tilted / uneven source slices).
    """
    dicom = volume.meta["dicom"]
    frames = dicom["frames"]
    if dicom.get("on_source_grid") and labels.shape[2] == len(frames):
        return np.ascontiguousarray(np.transpose(labels, (2, 1, 0)))
    inverse = np.linalg.inv(volume.affine)
    out = np.zeros((len(frames), frames[0]["rows"], frames[0]["cols"]), dtype=labels.dtype)
    for n, frame in enumerate(frames):
        rows, cols = frame["rows"], frame["cols"]
        ori = np.asarray(frame["orientation"])
        ps = frame["pixel_spacing"]
        c, r = np.meshgrid(np.arange(cols), np.arange(rows))  # (rows, cols)
        lps = (
            np.asarray(frame["position"])[:, None]
            + np.outer(ori[:3] * ps[1], c.ravel())
            + np.outer(ori[3:] * ps[0], r.ravel())
        )
        ras = LPS_TO_RAS[:3, :3] @ lps
        ijk = np.rint(inverse[:3, :3] @ ras + inverse[:3, 3:4]).astype(np.int64)
        inside = np.all((ijk >= 0) & (ijk < np.array(labels.shape[:3])[:, None]), axis=0)
        values = np.zeros(ijk.shape[1], dtype=labels.dtype)
        values[inside] = labels[ijk[0, inside], ijk[1, inside], ijk[2, inside]]
        out[n] = values.reshape(rows, cols)
    return out


def _source_datasets(dicom: dict, slice_spacing: float):
    import pydicom

    from medseg.io.dicom import _open

    datasets, seen = [], set()
    for frame in dicom["frames"]:
        if frame["path"] in seen:
            continue
        seen.add(frame["path"])
        try:
            with _open(Path(frame["path"])) as fh:
                ds = pydicom.dcmread(fh, stop_before_pixels=True)
        except (OSError, EOFError) as err:
            raise InputError(f"source image needed for the DICOM SEG cannot be read ({err})", frame["path"]) from None
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet  # an empty value (seen in anonymised data) is invalid for highdicom
        for keyword in _TYPE2_COPIED:
            if keyword not in ds:
                setattr(ds, keyword, "")  # type 2: present, may be empty; anonymisers often drop them
        _share_per_frame_groups(ds)
        if "PerFrameFunctionalGroupsSequence" not in ds and not ds.get("SliceThickness"):
            ds.SliceThickness = round(slice_spacing, 6)
        datasets.append(ds)
    return datasets


def _share_per_frame_groups(ds) -> None:
    """Copy pixel measures / orientation that every frame repeats into the shared groups (in memory).

    Philips stores them per frame; highdicom looks for them in the shared groups. Only done when all
    frames agree, so the header says the same thing either way.
    """
    if "PerFrameFunctionalGroupsSequence" not in ds or "SharedFunctionalGroupsSequence" not in ds:
        return
    shared = ds.SharedFunctionalGroupsSequence[0]
    per_frame = ds.PerFrameFunctionalGroupsSequence
    for keyword in ("PixelMeasuresSequence", "PlaneOrientationSequence"):
        if keyword in shared or keyword not in per_frame[0]:
            continue
        first = per_frame[0][keyword].value
        if all(keyword in item and item[keyword].value == first for item in per_frame):
            setattr(shared, keyword, first)


def build_dicom_seg(
    labels: np.ndarray,
    volume: Volume,
    label_info: dict[int, tuple],
    model_name: str = "medseg",
    series_description: str | None = None,
):
    """A highdicom Segmentation of ``labels`` (on ``volume``'s grid) referencing the source series.

    Args:
        labels: integer label map with ``volume``'s shape.
        volume: a volume read from DICOM (its ``meta['dicom']`` names the source frames).
        label_info: ``{label value: (name, rgb colour or None[, code])}`` for the foreground labels,
            ``code`` a model's own concept ``{"scheme", "value", "meaning"}`` (an anatomical
            structure); without one, a SNOMED CT concept is looked up by name. Segment numbers are
            1..N in the order of the label values (the values themselves when they are 1..N; a
            subset such as TotalSegmentator's ``--roi-subset`` is renumbered, the segment labels
            keep the names).
    """
    hd = require_highdicom()
    dicom = volume.meta.get("dicom")
    if not dicom:
        raise MedsegError("DICOM SEG output needs a DICOM input series (this scan was not read from DICOM)")
    if dicom.get("n_volumes", 1) > 1:
        raise MedsegError("DICOM SEG output for a multi-volume (4D) series is not supported")
    if any(f.get("mosaic") is not None for f in dicom["frames"]):
        raise MedsegError("DICOM SEG output for a Siemens mosaic (EPI) series is not supported")
    if tuple(labels.shape) != volume.shape:
        raise ValueError(f"labels shape {labels.shape} != image shape {volume.shape}")
    values = sorted(int(k) for k in label_info if int(k) != 0)
    present = set(np.unique(labels).tolist()) - {0}
    if present - set(values):
        raise MedsegError(f"label values {sorted(present - set(values))} have no name")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"medseg {model_name}"[:64],
        version=__version__,
        family=hd.sr.CodedConcept("123110", "DCM", "Artificial Intelligence"),
    )
    descriptions = []
    for number, value in enumerate(values, start=1):
        name, color, *coded = label_info[value]
        code = coded[0] if coded else None
        if code:  # the model's own concept for this label
            concept = hd.sr.CodedConcept(str(code["value"]), str(code["scheme"]), str(code["meaning"]))
            category = _tissue() if code.get("category") == "tissue" else _anatomical()
        else:
            category, concept = segment_concept(name)
        kwargs = {}
        if color is not None:
            lab = _cielab(color)
            if lab is not None:
                kwargs["display_color"] = lab
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=str(name)[:64],
                segmented_property_category=category,
                segmented_property_type=concept,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_uid=hd.UID(),
                tracking_id=str(name)[:64],
                **kwargs,
            )
        )
    frames = dicom["frames"]
    pixel_array = labels_on_source_frames(labels, volume)
    if values != list(range(1, len(values) + 1)):  # segment numbers must be 1..N
        lut = np.zeros(max(values) + 1, dtype=np.uint16 if len(values) > 255 else np.uint8)
        lut[values] = np.arange(1, len(values) + 1)
        pixel_array = lut[pixel_array]
    if pixel_array.dtype.itemsize > 2 or pixel_array.dtype.kind not in "u":
        pixel_array = pixel_array.astype(np.uint16 if len(values) > 255 else np.uint8)
    problem = missing_references(dicom)
    if problem:
        raise MedsegError(problem)
    sources = _source_datasets(dicom, float(volume.spacing[2]))
    if not sources[0].get("FrameOfReferenceUID"):
        raise MedsegError(
            "the source series has no FrameOfReferenceUID, so a DICOM SEG could not be aligned with it "
            "(anonymised data?); write NIfTI labels instead"
        )
    ori = frames[0]["orientation"]
    geometry = {
        "plane_orientation": hd.PlaneOrientationSequence(coordinate_system="PATIENT", image_orientation=ori),
        "pixel_measures": hd.PixelMeasuresSequence(
            pixel_spacing=frames[0]["pixel_spacing"], slice_thickness=_slice_thickness(sources[0], volume)
        ),
        "plane_positions": [
            hd.PlanePositionSequence(coordinate_system="PATIENT", image_position=f["position"]) for f in frames
        ],
    }
    src = sources[0]
    with warnings.catch_warnings():
        # highdicom lints the source's patient attributes (e.g. one-component names); they are copied as-is
        warnings.simplefilter("ignore", UserWarning)
        return _segmentation(hd, sources, pixel_array, descriptions, src, model_name, series_description, geometry)


def _segmentation(hd, sources, pixel_array, descriptions, src, model_name, series_description, geometry):
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=_series_number(src),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medseg",
        manufacturer_model_name=str(model_name)[:64],
        software_versions=__version__,
        device_serial_number="none",
        series_description=(series_description or f"medseg {model_name}")[:64],
        content_label="MEDSEG",
        content_description=f"medseg {model_name} segmentation"[:64],
        omit_empty_frames=True,
        **geometry,
    )


def _series_number(source) -> int:
    number = source.get("SeriesNumber")
    try:
        return int(number) + 1000 if number is not None and int(number) < 2**31 - 1001 else 1000
    except (TypeError, ValueError):
        return 1000


def _slice_thickness(source, volume: Volume) -> float:
    """The source's own SliceThickness, so highdicom sees the same pixel measures and keeps references."""
    if "SharedFunctionalGroupsSequence" in source:
        measures = source.SharedFunctionalGroupsSequence[0].get("PixelMeasuresSequence")
        if measures and measures[0].get("SliceThickness"):
            return float(measures[0].SliceThickness)
    if source.get("SliceThickness"):
        return float(source.SliceThickness)
    return float(volume.spacing[2])


def write_dicom_seg(
    labels: np.ndarray,
    volume: Volume,
    path: str | Path,
    label_info: dict[int, tuple],
    model_name: str = "medseg",
) -> Path:
    """Write ``labels`` as a DICOM SEG file atomically (nothing is left behind on failure)."""
    seg = build_dicom_seg(labels, volume, label_info, model_name)
    path = Path(path)
    with atomic_path(path) as tmp:
        seg.save_as(str(tmp), enforce_file_format=True)
    return path


def _segread(path: Path):
    hd = require_highdicom()
    try:
        return hd.seg.segread(str(path))
    except Exception as err:  # noqa: BLE001 - pydicom/highdicom raise many types
        raise InputError(f"not a readable DICOM SEG ({type(err).__name__}: {str(err)[:120]})", path) from None


def seg_on_source_frames(path: str | Path, volume: Volume) -> np.ndarray:
    """A SEG's labels on the source frames of ``volume`` (``(frames, rows, cols)``), matched by position.

    Works for any source geometry (tilted, uneven), since no volume is formed.
    """
    path = Path(path)
    seg = _segread(path)
    frames = volume.meta["dicom"]["frames"]
    positions = np.array([f["position"] for f in frames])
    out = np.zeros((len(frames), frames[0]["rows"], frames[0]["cols"]), dtype=np.uint16)
    pixels = seg.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[None]
    for n, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        position = np.array([float(x) for x in item.PlanePositionSequence[0].ImagePositionPatient])
        distance = np.linalg.norm(positions - position, axis=1)
        k = int(np.argmin(distance))
        if distance[k] > 1e-3:
            raise InputError(f"SEG frame {n + 1} lies on no source frame (off by {distance[k]:.3g} mm)", path)
        out[k][pixels[n] > 0] = number
    return out


def read_dicom_seg(path: str | Path, like: Volume | None = None) -> tuple[Volume, dict[int, str]]:
    """Read a DICOM SEG back into a label-map :class:`Volume` and ``{segment number: label}``.

    With ``like``, the labels are resampled (nearest neighbour, in world space) onto ``like``'s grid,
    which for a SEG written by medseg from ``like``'s series is the exact label map. A SEG on a
    tilted source (frames that form no regular volume) needs ``like``.
    """
    path = Path(path)
    seg = _segread(path)
    names = {int(d.SegmentNumber): str(d.SegmentLabel) for d in seg.SegmentSequence}
    dtype = np.uint8 if max(names, default=0) <= 255 else np.uint16
    try:
        hvol = seg.get_volume(combine_segments=True, relabel=False, dtype=np.uint16)
    except RuntimeError as err:
        if like is None or not like.meta.get("dicom"):
            raise InputError(
                f"SEG frames form no regular volume ({err}); read it against its source series", path
            ) from None
        return _from_source_frames(path, like, dtype), names
    arr = np.transpose(np.asarray(hvol.array), (2, 1, 0))  # (slice, row, col) -> (col, row, slice)
    affine = np.asarray(hvol.affine, dtype=np.float64)[:, [2, 1, 0, 3]]
    volume = Volume(np.ascontiguousarray(arr), LPS_TO_RAS @ affine, {"source": str(path), "format": "dicom-seg"})
    if like is not None:
        volume = volume.with_array(_resample_nearest(volume, like), like.affine)
    volume.array = volume.array.astype(dtype)
    return volume, names


def _from_source_frames(path: Path, like: Volume, dtype) -> Volume:
    """Labels on the (tilted) source frames, resampled onto ``like``'s grid through the sheared source affine."""
    frames = like.meta["dicom"]["frames"]
    on_frames = seg_on_source_frames(path, like)
    positions = np.array([f["position"] for f in frames])
    ori, ps = np.asarray(frames[0]["orientation"]), frames[0]["pixel_spacing"]
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = ori[:3] * ps[1], ori[3:] * ps[0]
    lps[:3, 2] = (positions[-1] - positions[0]) / max(len(positions) - 1, 1)
    lps[:3, 3] = positions[0]
    source = Volume(np.transpose(on_frames, (2, 1, 0)), LPS_TO_RAS @ lps)
    return Volume(_resample_nearest(source, like).astype(dtype), like.affine, {"source": str(path)})


def _resample_nearest(src: Volume, like: Volume) -> np.ndarray:
    mapping = np.linalg.inv(src.affine) @ like.affine
    out = np.zeros(like.shape, dtype=src.array.dtype)
    i, j = np.meshgrid(np.arange(like.shape[0]), np.arange(like.shape[1]), indexing="ij")
    for k in range(like.shape[2]):
        pts = np.stack([i.ravel(), j.ravel(), np.full(i.size, k), np.ones(i.size)])
        idx = np.rint(mapping @ pts)[:3].astype(np.int64)
        inside = np.all((idx >= 0) & (idx < np.array(src.array.shape[:3])[:, None]), axis=0)
        values = np.zeros(i.size, dtype=src.array.dtype)
        values[inside] = src.array[idx[0, inside], idx[1, inside], idx[2, inside]]
        out[:, :, k] = values.reshape(i.shape)
    return out
