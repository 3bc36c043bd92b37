"""The medseg dock widget: segment the selected image, review, save, and see per-label volumes.

Inference runs in a worker thread with a progress bar and a Cancel button; the logic lives in
:mod:`medseg.viewer.actions` as plain functions.
"""

from __future__ import annotations

import threading
from pathlib import Path

from napari.layers import Image, Labels
from qtpy import QtCore, QtWidgets

from medseg.devices import available_devices
from medseg.errors import MedsegError
from medseg.viewer.actions import (
    SegmentationCancelled,
    WidgetProgress,
    apply_window,
    label_volume_rows,
    layer_names,
    new_labels_layer,
    save_labels_layer,
    segment_layer,
)
from medseg.viewer.layers import CT_WINDOWS, geometry_of
from medseg.viewer.prompting import (
    BOX_LAYER,
    NEGATIVE_LAYER,
    POSITIVE_LAYER,
    PREVIEW_LAYER,
    PromptSession,
    accept_mask,
)


class _Signals(QtCore.QObject):
    progress = QtCore.Signal(str, float)  # emitted from the worker thread, delivered in the GUI thread


class MedsegWidget(QtWidgets.QWidget):
    """Model, device, Segment/Cancel with a progress bar, CT window, New/Save labels, volume table."""

    def __init__(self, napari_viewer):
        super().__init__()
        from medseg.models.registry import DEFAULT_MODEL, model_names

        self.viewer = napari_viewer
        self.worker = None
        self.cancel_event = threading.Event()
        self.signals = _Signals()
        self.signals.progress.connect(self._on_progress)
        layout = QtWidgets.QVBoxLayout(self)
        form = QtWidgets.QFormLayout()
        layout.addLayout(form)

        self.image_combo = QtWidgets.QComboBox()
        form.addRow("Image", self.image_combo)
        self.window_combo = QtWidgets.QComboBox()
        self.window_combo.addItems(["auto", *CT_WINDOWS, "percentile"])
        self.window_combo.currentTextChanged.connect(self._on_window)
        form.addRow("Window", self.window_combo)
        self.model_combo = QtWidgets.QComboBox()
        self.model_combo.setEditable(True)  # a ModelSpec .yaml path may be typed or browsed
        self.model_combo.addItems(model_names())
        self.model_combo.setCurrentText(DEFAULT_MODEL)
        browse = QtWidgets.QPushButton("...")
        browse.setToolTip("Choose a ModelSpec .yaml")
        browse.clicked.connect(self._browse_model)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(self.model_combo, 1)
        row.addWidget(browse)
        form.addRow("Model", row)
        self.device_combo = QtWidgets.QComboBox()
        self.device_combo.addItems(list(available_devices()))  # a GPU only where one is usable
        form.addRow("Device", self.device_combo)

        buttons = QtWidgets.QHBoxLayout()
        self.run_button = QtWidgets.QPushButton("Segment")
        self.run_button.clicked.connect(self.start_segmentation)
        self.cancel_button = QtWidgets.QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout.addLayout(buttons)
        self.progress_bar = QtWidgets.QProgressBar()
        self.progress_bar.setRange(0, 100)
        self.status = QtWidgets.QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)

        form2 = QtWidgets.QFormLayout()
        self.labels_combo = QtWidgets.QComboBox()
        form2.addRow("Labels", self.labels_combo)
        layout.addLayout(form2)
        buttons2 = QtWidgets.QHBoxLayout()
        self.new_button = QtWidgets.QPushButton("New labels")
        self.new_button.setToolTip("An empty label layer on the image's exact grid, to paint and save")
        self.new_button.clicked.connect(self.add_new_labels)
        self.save_button = QtWidgets.QPushButton("Save labels...")
        self.save_button.clicked.connect(self._save_dialog)
        self.volumes_button = QtWidgets.QPushButton("Volumes")
        self.volumes_button.setToolTip("Recompute per-label volumes (after edits too)")
        self.volumes_button.clicked.connect(self.refresh_volumes)
        for b in (self.new_button, self.save_button, self.volumes_button):
            buttons2.addWidget(b)
        layout.addLayout(buttons2)
        prompt_row = QtWidgets.QHBoxLayout()
        self.prompt_button = QtWidgets.QPushButton("Prompt")
        self.prompt_button.setToolTip(
            "Click to segment (no model): add points to 'prompt +' inside the structure and 'prompt -' on "
            "what must stay out, optionally a rectangle in 'prompt box'; the preview follows every change"
        )
        self.prompt_button.clicked.connect(self.start_prompts)
        self.prompt_name = QtWidgets.QLineEdit("structure")
        self.prompt_name.setToolTip("The label the accepted mask becomes (an existing name keeps its value)")
        self.accept_button = QtWidgets.QPushButton("Accept")
        self.accept_button.clicked.connect(self.accept_prompt)
        self.clear_button = QtWidgets.QPushButton("Clear")
        self.clear_button.clicked.connect(self.clear_prompts)
        for w in (self.prompt_button, self.prompt_name, self.accept_button, self.clear_button):
            prompt_row.addWidget(w)
        layout.addLayout(prompt_row)
        self.prompt_session = None
        self.prompt_mask = None
        self.table = QtWidgets.QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["label", "voxels", "volume ml", "mean"])
        self.table.verticalHeader().setVisible(False)
        layout.addWidget(self.table)
        layout.addStretch(1)

        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self._refresh_layer_lists)
        napari_viewer.layers.selection.events.active.connect(self._refresh_layer_lists)
        self._refresh_layer_lists()
        self.labels_combo.currentTextChanged.connect(lambda _: self.refresh_volumes())
        self.refresh_volumes()

    # -- layer lists --
    def _layers(self, kind):
        return [layer for layer in self.viewer.layers if isinstance(layer, kind)]

    def _refresh_layer_lists(self, *_):
        for combo, kind in ((self.image_combo, Image), (self.labels_combo, Labels)):
            current = combo.currentText()
            names = [layer.name for layer in self._layers(kind) if layer.name != PREVIEW_LAYER]
            active = self.viewer.layers.selection.active
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(names)
            if isinstance(active, kind):
                combo.setCurrentText(active.name)
            elif current in names:
                combo.setCurrentText(current)
            combo.blockSignals(False)

    def image_layer(self):
        name = self.image_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def labels_layer(self):
        name = self.labels_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    # -- actions --
    def _browse_model(self):
        path, _ = QtWidgets.QFileDialog.getOpenFileName(self, "ModelSpec", "", "ModelSpec (*.yaml *.yml)")
        if path:
            self.model_combo.setCurrentText(path)

    def _on_window(self, preset):
        layer = self.image_layer()
        if layer is not None:
            apply_window(layer, preset)

    def start_segmentation(self):
        from napari.qt.threading import create_worker

        layer = self.image_layer()
        if layer is None:
            self._show("open an image first (File > Open, or File > Open Sample > medseg)")
            return None
        if geometry_of(layer.metadata) is None:
            self._show(f"'{layer.name}' was not opened by medseg; open the file with the medseg reader")
            return None
        self.cancel_event = threading.Event()
        progress = WidgetProgress(self.signals.progress.emit, self.cancel_event)
        self.worker = create_worker(
            segment_layer,
            layer.data,
            dict(layer.metadata),
            self.model_combo.currentText().strip() or None,
            self.device_combo.currentText(),
            progress,
            layer.name,
            _start_thread=False,
            # connecting `errored` here stops superqt from re-raising errors into the Qt event loop
            _connect={"returned": self._on_result, "errored": self._on_error, "finished": self._on_finished},
        )
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress_bar.setValue(0)
        self._show("loading model...")
        self.worker.start()
        return self.worker

    def cancel(self):
        self.cancel_event.set()
        self._show("cancelling...")

    def _on_progress(self, stage, fraction):
        self.progress_bar.setValue(int(round(100 * fraction)))
        self._show(stage)

    def _on_result(self, layer_data):
        data, kwargs, _ = layer_data
        layer = self.viewer.add_labels(data, **kwargs)
        self.labels_combo.setCurrentText(layer.name)
        self.refresh_volumes()
        secs = sum(kwargs["metadata"].get("timings_s", {}).values())
        self._show(f"{kwargs['metadata'].get('model')}: done in {secs:.1f}s on {kwargs['metadata'].get('device')}")

    def _on_error(self, err):
        if isinstance(err, SegmentationCancelled):
            return  # _on_finished says "cancelled"
        self._show(str(err) if isinstance(err, MedsegError) else f"{type(err).__name__}: {err}")

    def _on_finished(self):
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if self.cancel_event.is_set():
            self.progress_bar.setValue(0)
            self._show("cancelled")

    def add_new_labels(self):
        layer = self.image_layer()
        if layer is None or geometry_of(layer.metadata) is None:
            self._show("select an image opened by medseg first")
            return None
        data, kwargs, _ = new_labels_layer(layer.data, layer.metadata, self.model_combo.currentText() or None)
        new = self.viewer.add_labels(data, **kwargs)
        self.labels_combo.setCurrentText(new.name)
        return new

    def _save_dialog(self):
        layer = self.labels_layer()
        if layer is None:
            self._show("no label layer to save")
            return
        start = str(Path(str(layer.metadata.get("source", "labels"))).with_name(f"{layer.name}.nii.gz"))
        path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Save labels", start, "NIfTI (*.nii.gz *.nii)")
        if path:
            self.save(path)

    def save(self, path):
        layer = self.labels_layer()
        try:
            written = save_labels_layer(layer, path)
        except MedsegError as err:
            self._show(str(err))
            return []
        self._show(f"saved {Path(written[0]).name}")
        return written

    def refresh_volumes(self):
        labels, image = self.labels_layer(), self.image_layer()
        if labels is None or geometry_of(labels.metadata) is None:
            self.table.setRowCount(0)
            return []
        rows = label_volume_rows(
            labels.data,
            labels.metadata,
            layer_names(labels),
            image.data if image is not None else None,
            image.metadata if image is not None else None,
        )
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            mean = "" if row["mean_intensity"] is None else f"{row['mean_intensity']:.1f}"
            values = (f"{row['label']} {row['name']}", str(row["voxels"]), f"{row['volume_ml']:.1f}", mean)
            for c, text in enumerate(values):
                self.table.setItem(r, c, QtWidgets.QTableWidgetItem(text))
        self.table.resizeColumnsToContents()
        return rows

    # -- prompt mode (logic in medseg.viewer.prompting) --
    def start_prompts(self):
        """Add the prompt layers on the selected image; every change to them re-segments."""
        import numpy as np

        layer = self.image_layer()
        if layer is None or geometry_of(layer.metadata) is None:
            self._show("select an image opened by medseg first")
            return None
        try:
            self.prompt_session = PromptSession(layer.data, layer.metadata)
        except MedsegError as err:
            self._show(str(err))
            return None
        for name in (POSITIVE_LAYER, NEGATIVE_LAYER, BOX_LAYER, PREVIEW_LAYER):
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
        place = {"scale": tuple(layer.scale), "translate": tuple(layer.translate), "units": tuple(layer.units)}
        self.viewer.add_labels(np.zeros(layer.data.shape, np.uint8), name=PREVIEW_LAYER, opacity=0.5, **place)
        box = self.viewer.add_shapes(
            name=BOX_LAYER, ndim=3, edge_color="yellow", face_color="transparent", edge_width=1, **place
        )
        box.events.data.connect(self._resegment)
        negative = self.viewer.add_points(np.zeros((0, 3)), name=NEGATIVE_LAYER, face_color="red", **place)
        negative.events.data.connect(self._resegment)
        positive = self.viewer.add_points(np.zeros((0, 3)), name=POSITIVE_LAYER, face_color="lime", **place)
        positive.events.data.connect(self._resegment)
        self.viewer.layers.selection.active = positive
        positive.mode = "add"
        self._show("click inside the structure (prompt +); prompt - keeps parts out")
        return positive

    def _resegment(self, *_):
        import numpy as np

        layers = self.viewer.layers
        if self.prompt_session is None or PREVIEW_LAYER not in layers or POSITIVE_LAYER not in layers:
            return None
        negative = layers[NEGATIVE_LAYER].data if NEGATIVE_LAYER in layers else None
        boxes = list(layers[BOX_LAYER].data) if BOX_LAYER in layers else None
        try:
            mask = self.prompt_session.segment(layers[POSITIVE_LAYER].data, negative, boxes)
        except MedsegError as err:
            self._show(str(err))
            return None
        preview = layers[PREVIEW_LAYER]
        preview.data = np.zeros(preview.data.shape, np.uint8) if mask is None else mask.astype(np.uint8)
        self.prompt_mask = mask
        if mask is not None:
            ml = float(mask.sum()) * self.prompt_session.volume.voxel_volume_ml
            self._show(f"prompt: {int(mask.sum())} voxels ({ml:.1f} ml); Accept to keep it")
        return mask

    def accept_prompt(self):
        """Paint the previewed mask into the selected label layer (a new one if none) as the named label."""
        labels = self.labels_layer() or self.add_new_labels()
        if labels is None:
            return None
        try:
            value = accept_mask(labels, self.prompt_mask, name=self.prompt_name.text().strip() or None)
        except MedsegError as err:
            self._show(str(err))
            return None
        self.clear_prompts()
        self.refresh_volumes()
        self._show(f"added label {value} '{self.prompt_name.text().strip()}' to {labels.name}")
        return value

    def clear_prompts(self):
        import numpy as np

        for name in (POSITIVE_LAYER, NEGATIVE_LAYER):
            if name in self.viewer.layers:
                self.viewer.layers[name].data = np.zeros((0, 3))
        if BOX_LAYER in self.viewer.layers:
            self.viewer.layers[BOX_LAYER].data = []
        self._resegment()

    def _show(self, text):
        self.status.setText(text)
