"""The cohort dock widget behind ``medseg view DIR``: Previous / Next / Skip / Mark reviewed / Save & next.

Switching case replaces the case's layers (built by :func:`medseg.viewer.launch.open_viewer`, as for
one scan). Leaving a case whose labels were edited and not saved asks Save / Discard / Cancel; the
logic (cases, saving, the review ledger) is :class:`medseg.viewer.cohort.CohortSession`.
"""

from __future__ import annotations

import contextlib
from typing import Any

from napari.layers import Image, Labels
from qtpy import QtWidgets

from medseg.errors import MedsegError
from medseg.viewer.cohort import CohortSession, labels_digest

COHORT_WIDGET_NAME = "Cohort review"


class CohortWidget(QtWidgets.QWidget):
    """Steps through a cohort in ``napari_viewer``; ``ask_unsaved`` may be replaced (tests, scripts).

    Args:
        napari_viewer: the viewer the case layers go into.
        session: the cohort and where the reviewer is in it.
        window: CT window preset for every scan.
        model: label names/colours for label files without a sidecar, and for empty labels.
        read_options: DICOM read options for cases whose scan is DICOM.
    """

    def __init__(
        self,
        napari_viewer: Any,
        session: CohortSession,
        window: str = "auto",
        model: str | None = None,
        read_options: Any = None,
    ) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = session
        self.window = window
        self.model = model
        self.read_options = read_options
        self.image_layer: Image | None = None
        self.labels_layer: Labels | None = None
        self._baseline: list[Any] = list(napari_viewer.layers)
        self._digests: dict[int, str] = {}  # id(label layer) -> digest of its data as opened or last saved
        self.ask_unsaved = self._ask_unsaved_dialog

        layout = QtWidgets.QVBoxLayout(self)
        self.progress = QtWidgets.QLabel("")
        self.case_label = QtWidgets.QLabel("")
        self.case_label.setWordWrap(True)
        layout.addWidget(self.progress)
        layout.addWidget(self.case_label)
        row1, row2 = QtWidgets.QHBoxLayout(), QtWidgets.QHBoxLayout()
        self.previous_button = QtWidgets.QPushButton("< Previous")
        self.next_button = QtWidgets.QPushButton("Next >")
        self.skip_button = QtWidgets.QPushButton("Skip")
        self.skip_button.setToolTip("Record this case as skipped (e.g. an unusable scan) and go on")
        self.mark_button = QtWidgets.QPushButton("Mark reviewed")
        self.mark_button.setToolTip("Record this case as reviewed (unsaved edits are saved first)")
        self.save_next_button = QtWidgets.QPushButton("Save && next")
        self.save_next_button.setToolTip(
            "Save edits as <case>_seg_corrected.nii.gz, mark reviewed, go to the next case"
        )
        self.previous_button.clicked.connect(self.go_previous)
        self.next_button.clicked.connect(self.go_next)
        self.skip_button.clicked.connect(self.skip)
        self.mark_button.clicked.connect(self.mark_reviewed)
        self.save_next_button.clicked.connect(self.save_and_next)
        for b in (self.previous_button, self.next_button):
            row1.addWidget(b)
        for b in (self.skip_button, self.mark_button, self.save_next_button):
            row2.addWidget(b)
        layout.addLayout(row1)
        layout.addLayout(row2)
        self.status = QtWidgets.QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.open_current()

    # -- the case's layers --
    def open_current(self) -> bool:
        """Replace the previous case's layers (and any added while on it) with the current case's;
        False (with a message) when the case's scan or labels could not be read."""
        from medseg.viewer.actions import new_labels_layer
        from medseg.viewer.launch import open_viewer

        # one batch: napari cleans its scene graph (a full gc.collect) once per batch, not once per layer
        batched = getattr(self.viewer.layers, "batched_update", None)
        with batched() if batched is not None else contextlib.nullcontext():
            for layer in self.case_layers():
                self.viewer.layers.remove(layer)
        self._baseline = list(self.viewer.layers)
        case = self.session.current
        self.image_layer = self.labels_layer = None
        self._digests = {}
        labels = case.labels_to_open
        options = self.read_options if _is_dicom(case.image) else None
        try:
            open_viewer(
                case.image,
                [labels] if labels is not None else [],
                window=self.window,
                model=self.model,
                widget=False,
                viewer=self.viewer,
                read_options=options,
            )
            opened = True
        except (MedsegError, OSError, ValueError) as err:
            self._show(f"cannot open {case.case_id}: {err}")
            opened = False
        layers = self.case_layers()
        self.image_layer = next((x for x in layers if isinstance(x, Image)), None)
        self.labels_layer = next((x for x in layers if isinstance(x, Labels)), None)
        if self.labels_layer is None and self.image_layer is not None:
            data, kwargs, _ = new_labels_layer(self.image_layer.data, self.image_layer.metadata, self.model)
            kwargs["name"] = f"{case.case_id} labels"
            self.labels_layer = self.viewer.add_labels(data, **kwargs)
        if self.labels_layer is not None:
            self._digests[id(self.labels_layer)] = labels_digest(self.labels_layer.data)
            self.viewer.layers.selection.active = self.labels_layer
        if hasattr(self.viewer, "title"):
            self.viewer.title = f"medseg - {case.case_id}"
        self._refresh()
        return opened and self.image_layer is not None

    def case_layers(self) -> list:
        """The layers that belong to the current case: those added since it was opened (its scan and
        labels, and e.g. a label layer the Segment button made); they go when the case is left."""
        return [x for x in self.viewer.layers if not any(x is b for b in self._baseline)]

    def labels_to_save(self):
        """The selected label layer when it belongs to the case, else the one the case opened with."""
        active = self.viewer.layers.selection.active
        if isinstance(active, Labels) and any(active is x for x in self.case_layers()):
            return active
        return self.labels_layer if self.labels_layer in self.viewer.layers else None

    def has_unsaved_edits(self) -> bool:
        """The label layer to save differs from what was opened or last saved (or was never saved)."""
        layer = self.labels_to_save()
        if layer is None:
            return False
        return self._digests.get(id(layer)) != labels_digest(layer.data)

    # -- actions --
    def save(self) -> bool:
        """Save the case's labels (:meth:`labels_to_save`) as its ``_corrected`` file; False (with a
        message) when it cannot."""
        layer = self.labels_to_save()
        if layer is None:
            self._show("this case has no label layer to save")
            return False
        image = self.image_layer.metadata if self.image_layer is not None else None
        try:
            path = self.session.save_corrected(layer.data, layer._get_state(), image_metadata=image)
        except (MedsegError, OSError, ValueError) as err:
            self._show(f"not saved: {err}")
            return False
        self._digests[id(layer)] = labels_digest(layer.data)
        self._show(f"saved {path.name}")
        self._refresh()
        return True

    def _leave(self) -> bool:
        """True when the current case may be left: no unsaved edits, or they were saved or discarded."""
        if not self.has_unsaved_edits():
            return True
        choice = self.ask_unsaved()
        if choice == "save":
            return self.save()
        return choice == "discard"

    def _move(self, step) -> bool:
        index = self.session.index
        target = step()
        self.session.index = index  # moved only once the case may be left
        if target is None:
            self._show(self._end_message())
            return False
        if not self._leave():
            return False
        self.session.go_to(target.case_id)
        self.open_current()
        return True

    def go_next(self) -> bool:
        return self._move(self.session.next)

    def go_previous(self) -> bool:
        return self._move(self.session.previous)

    def mark_reviewed(self) -> bool:
        """Record the case reviewed, saving unsaved edits first so the record names what is on disk."""
        if self.image_layer is None:
            self._show(f"{self.session.current.case_id} did not open: Skip it, or fix its files and come back")
            return False
        if self.has_unsaved_edits() and not self.save():
            return False
        record = self._record("reviewed")
        if record is None:
            return False
        what = "corrected labels" if record.corrected else ("labels as they were" if record.labels else "no labels")
        self._refresh()
        self._show(f"{self.session.current.case_id} reviewed ({what})")
        return True

    def save_and_next(self) -> bool:
        """Mark reviewed (saving edits), then open the next case not yet reviewed or skipped."""
        if not self.mark_reviewed():
            return False
        return self._to_next_undecided()

    def skip(self) -> bool:
        """Record the case skipped (its edits, if any, are saved first) and go on."""
        if self.has_unsaved_edits() and not self.save():
            return False
        if self._record("skipped") is None:
            return False
        self._refresh()
        return self._to_next_undecided()

    def _record(self, status: str):
        try:
            return self.session.mark(status)
        except OSError as err:  # e.g. a read-only cohort folder: say so, keep the session going
            self._show(f"not recorded ({self.session.ledger.path}): {err}")
            return None

    def _to_next_undecided(self) -> bool:
        following = self.session.first_unreviewed(after=self.session.index)
        if following is None:
            self._show(self._end_message())
            return False
        done = self.status.text()
        self.session.index = following
        if self.open_current():
            self._show(done)
        return True

    def _end_message(self) -> str:
        first = self.session.first_unreviewed()
        if first is None:
            return f"all {len(self.session.cases)} cases are reviewed or skipped"
        return f"no further case this way; first not reviewed: {self.session.cases[first].case_id}"

    def _ask_unsaved_dialog(self) -> str:
        box = QtWidgets.QMessageBox(self)
        box.setWindowTitle("Unsaved edits")
        box.setText(f"{self.session.current.case_id}: the labels were edited and not saved.")
        box.setStandardButtons(
            QtWidgets.QMessageBox.Save | QtWidgets.QMessageBox.Discard | QtWidgets.QMessageBox.Cancel
        )
        box.setDefaultButton(QtWidgets.QMessageBox.Save)
        answer = box.exec_() if hasattr(box, "exec_") else box.exec()
        return {QtWidgets.QMessageBox.Save: "save", QtWidgets.QMessageBox.Discard: "discard"}.get(answer, "cancel")

    def _refresh(self) -> None:
        case = self.session.current
        self.progress.setText(self.session.progress_text())
        status = self.session.status()
        opened = case.labels_to_open.name if case.labels_to_open is not None else "empty labels"
        self.case_label.setText(f"{case.case_id}: {status} ({opened})")

    def _show(self, text: str) -> None:
        self.status.setText(text)


def _is_dicom(path) -> bool:
    from pathlib import Path

    from medseg.io.dicom import is_dicom_file

    path = Path(path)
    return path.is_dir() or (path.is_file() and is_dicom_file(path))


def open_cohort_viewer(
    session: CohortSession,
    window: str = "auto",
    model: str | None = None,
    widget: bool = True,
    show: bool = True,
    viewer: Any = None,
    read_options: Any = None,
) -> tuple[Any, CohortWidget]:
    """A napari viewer on the session's current case, with the cohort widget (and medseg's, unless
    ``widget`` is False) docked; returns (viewer, cohort widget)."""
    from medseg.viewer.launch import WIDGET_NAME, _process_events, ensure_plugin_registered, require_napari

    if viewer is None:
        napari = require_napari()
        ensure_plugin_registered()
        viewer = napari.Viewer(title="medseg - cohort", show=show)
    cohort = CohortWidget(viewer, session, window=window, model=model, read_options=read_options)
    viewer.window.add_dock_widget(cohort, name=f"{COHORT_WIDGET_NAME} (medseg)", area="right")
    if widget:
        from medseg.viewer._widget import MedsegWidget

        viewer.window.add_dock_widget(MedsegWidget(viewer), name=f"{WIDGET_NAME} (medseg)", area="right")
    _process_events()
    from medseg.viewer.launch import go_to_middle_slice

    go_to_middle_slice(viewer, cohort.image_layer)
    return viewer, cohort
