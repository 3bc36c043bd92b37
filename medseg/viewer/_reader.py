"""napari reader: NIfTI files and DICOM folders through medseg's io, geometry kept in layer metadata.

A file is opened as a Labels layer when it says it is one (NIfTI intent ``NIFTI_INTENT_LABEL``, as
medseg writes) or has a medseg JSON sidecar; then the sidecar's names and colours are used.
Everything else opens as an Image layer with a CT window (CT) or percentile contrast (MR, others).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from medseg.io import ReadOptions, read_volume
from medseg.io.nifti import NIFTI_SUFFIXES
from medseg.volume import Volume

_INTENT_LABEL = 1002
_DICOM_PEEK = 64  # files looked at to decide whether a folder holds DICOM


def napari_get_reader(path: str | Sequence[str]) -> Callable | None:
    """npe2 reader hook: a function that reads ``path`` (one path or a list), or None if we cannot."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths or not all(can_read(p) for p in paths):
        return None
    return read_layers


def can_read(path: str | os.PathLike) -> bool:
    p = Path(path)
    if p.is_file():
        return p.name.lower().endswith(NIFTI_SUFFIXES)
    return p.is_dir() and _holds_dicom(p)


def _holds_dicom(folder: Path) -> bool:
    from medseg.io.dicom import is_dicom_file

    seen = 0
    for root, _dirs, files in os.walk(folder):
        for name in sorted(files):
            if is_dicom_file(Path(root) / name):
                return True
            seen += 1
            if seen >= _DICOM_PEEK:
                return False
    return False


def read_layers(path: str | Sequence[str], window: str = "auto") -> list[tuple]:
    """Layer data tuples for every path (a DICOM folder with several series gives one layer each)."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    layers: list[tuple] = []
    for p in paths:
        for volume in read_volumes(Path(p)):
            layers.append(volume_layer(volume, window=window))
    return layers


def read_volumes(path: Path, options: ReadOptions | None = None) -> list[Volume]:
    """The volumes at ``path``: one for a file or a single-series folder, one per readable stack otherwise.

    ``options`` go to :func:`~medseg.io.read_volume`; with ``options.series`` a folder gives that one stack.
    """
    options = options or ReadOptions()
    if path.is_dir() and options.series is None:
        from medseg.io.dicom import scan_dicom

        candidates = scan_dicom(path).candidates
        if len(candidates) > 1:
            volumes = []
            for stack in candidates:
                volume = read_volume(path, replace(options, series=stack.id))
                desc = stack.info.get("SeriesDescription") or stack.info.get("SeriesNumber") or stack.id[-8:]
                volume.meta["layer_name"] = f"{path.name} {desc}"
                volumes.append(volume)
            return volumes
    return [read_volume(path, options)]


def is_label_file(volume: Volume) -> bool:
    from medseg.viewer.layers import sidecar_path

    header = volume.meta.get("nifti_header")
    if header is not None and int(header.get("intent_code", 0)) == _INTENT_LABEL:
        return True
    source = volume.meta.get("source")
    if source and Path(source).is_file() and sidecar_path(source).is_file():
        return volume.array.ndim == 3 and volume.array.dtype.kind in "iu"
    return False


def volume_layer(volume: Volume, window: str = "auto", as_labels: bool | None = None) -> tuple:
    """One layer tuple; warnings from reading (DICOM tilt, oblique display) go to napari's notifications."""
    from medseg.viewer.layers import image_layer_data, info_from_sidecar, labels_layer_data

    for note in volume.meta.get("warnings", []) or []:
        warnings.warn(f"{volume.source}: {note}", UserWarning, stacklevel=2)
    name = volume.meta.get("layer_name")
    if as_labels if as_labels is not None else is_label_file(volume):
        return labels_layer_data(volume, name=name, info=info_from_sidecar(volume.source))
    return image_layer_data(volume, name=name, window=window)
