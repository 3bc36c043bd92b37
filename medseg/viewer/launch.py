"""Open scans and label maps in napari with exact geometry: the engine behind ``medseg view``.

Example:
    >>> viewer = open_viewer("scan.nii.gz", ["scan_seg.nii.gz"])  # doctest: +SKIP
    >>> import napari; napari.run()  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg.errors import MedsegError, install_extra

if TYPE_CHECKING:
    from medseg.io import ReadOptions

MANIFEST = Path(__file__).with_name("napari.yaml")
PLUGIN_NAME = "medseg"
WIDGET_NAME = "Segment and review"


def require_napari():
    """Import napari, or fail with the install command."""
    try:
        import napari
    except ImportError as err:
        what = "napari is not installed" if err.name == "napari" else f"napari cannot be imported ({err})"
        raise MedsegError(f"{what}; install the viewer extra: {install_extra('viewer')}") from None
    return napari


def ensure_plugin_registered() -> None:
    """Register medseg's npe2 manifest if no installed entry point did (e.g. running from a checkout)."""
    from npe2 import PluginManager, PluginManifest

    pm = PluginManager.instance()
    try:
        pm.get_manifest(PLUGIN_NAME)
    except KeyError:
        pm.register(PluginManifest.from_file(MANIFEST))


def add_layer_data(viewer: Any, layer_data: tuple) -> list:
    """Add one (data, kwargs, type) tuple as napari would from a reader; returns the layers added."""
    data, kwargs, kind = layer_data
    added = getattr(viewer, f"add_{kind}")(data, **kwargs)
    return list(added) if isinstance(added, list) else [added]


def open_viewer(
    image: str | Path | None,
    labels: Sequence[str | Path] = (),
    window: str = "auto",
    model: str | None = None,
    widget: bool = True,
    show: bool = True,
    viewer: Any = None,
    read_options: ReadOptions | None = None,
) -> Any:
    """A napari viewer with the scan at physical scale, labels named and coloured, on the middle axial slice.

    Args:
        image: a NIfTI/NRRD/MHA file or a DICOM folder (several series: one layer each); None for labels only.
        labels: label maps; names/colours come from each one's medseg JSON sidecar, else from ``model``.
        window: CT window preset (``soft-tissue``, ``lung``, ``bone``, ``brain``), ``percentile``, or ``auto``.
        model: a model name or ModelSpec path whose label names/colours to use when there is no sidecar.
        widget: dock medseg's segmentation widget.
        show: show the window (False for tests and scripted screenshots).
        viewer: add to this viewer (or ``napari.components.ViewerModel``) instead of making one.
        read_options: how to read ``image`` (DICOM series, irregular spacing, tilt); labels are read as they are.
    """
    from medseg.viewer._reader import read_volumes, volume_layer
    from medseg.viewer.geometry import AXIS_LABELS
    from medseg.viewer.layers import info_from_model, info_from_sidecar, labels_layer_data

    images = [] if image is None else read_volumes(Path(image), read_options)
    label_volumes = [(Path(p), v) for p in labels for v in read_volumes(Path(p))]
    if viewer is None:
        napari = require_napari()
        ensure_plugin_registered()
        title = f"medseg - {Path(image).name if image is not None else 'labels'}"
        viewer = napari.Viewer(title=title, show=show)
    model_info = info_from_model(model) if model else None
    image_layers = []
    for volume in images:
        image_layers += add_layer_data(viewer, volume_layer(volume, window=window, as_labels=False))
    for path, volume in label_volumes:
        if images and not _same_grid(images[0], volume):
            warnings.warn(
                f"{path.name}: its voxel grid differs from the image's; shown in world space, saved on its own grid",
                UserWarning,
                stacklevel=2,
            )
        info = info_from_sidecar(path) or model_info
        add_layer_data(viewer, labels_layer_data(volume, info=info))
    viewer.dims.axis_labels = AXIS_LABELS[-viewer.dims.ndim :] if viewer.dims.ndim <= 3 else viewer.dims.axis_labels
    _show_scale_bar(viewer)
    if widget and hasattr(viewer, "window"):
        from medseg.viewer._widget import MedsegWidget

        viewer.window.add_dock_widget(MedsegWidget(viewer), name=f"{WIDGET_NAME} (medseg)", area="right")
        _process_events()  # the dock narrows the canvas: fit the view after it is laid out
    go_to_middle_slice(viewer, image_layers[0] if image_layers else None)
    return viewer


def _show_scale_bar(viewer: Any) -> None:
    """A scale bar in mm (units come from the layers); napari >= 0.9 keeps it among the canvas overlays."""
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
    bar = getattr(overlays, "scale_bar", None) if overlays is not None else None
    if bar is None:
        bar = viewer.scale_bar
    bar.visible = True


def fit_window(viewer: Any, size: tuple[int, int] = (1200, 760)) -> None:
    """Resize the window and fit the scan to the new canvas (for scripted screenshots)."""
    viewer.window.resize(*size)
    _process_events()
    viewer.reset_view()


def go_to_middle_slice(viewer: Any, layer: Any = None) -> None:
    """Axial view on the middle slice of ``layer`` (or of everything shown)."""
    viewer.dims.ndisplay = 2
    viewer.reset_view()
    if layer is not None:
        extent = np.asarray(layer.extent.world)  # (2, ndim): min and max corners in world mm
        centre = extent.mean(axis=0)
        axis = viewer.dims.ndim - 3
        if axis >= 0:
            viewer.dims.set_point(axis, float(centre[-3]))


def _same_grid(a, b) -> bool:
    return tuple(a.shape) == tuple(b.shape) and np.allclose(a.affine, b.affine, atol=1e-4)


def save_screenshot(viewer: Any, path: str | Path, canvas_only: bool = False, size: tuple[int, int] | None = None):
    """Write a PNG of the viewer (the window, or only the canvas) atomically; returns the RGBA array."""
    from PIL import Image

    from medseg.io.atomic import atomic_path

    _process_events()
    shot = viewer.screenshot(canvas_only=canvas_only, flash=False, size=size)
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(shot)).save(tmp, format="PNG", optimize=True)
    return shot


def _process_events() -> None:
    """Let Qt lay out and paint pending changes (window resize, docked widgets) before a screenshot."""
    try:
        from qtpy.QtWidgets import QApplication
    except ImportError:  # pragma: no cover
        return
    app = QApplication.instance()
    if app is not None:
        for _ in range(3):
            app.processEvents()
