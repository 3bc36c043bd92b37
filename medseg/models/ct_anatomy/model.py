"""``ct-anatomy``: the weights-free CT model behind the model interface.

No network and no weights: :meth:`CtAnatomyModel.run_algorithm` runs the classical method of
:mod:`medseg.models.ct_anatomy.method` (thresholds in HU, morphology and connected components) on
the scan's own grid, so the pipeline's planner, writers, batch and viewer treat it like any model.
Its notes (structures the field of view does not hold) go into the sidecar.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from medseg.devices import resolve_device
from medseg.errors import ModelError
from medseg.models.base import Accepts, AlgorithmOutput, Label, Model
from medseg.models.ct_anatomy import labels as L

if TYPE_CHECKING:
    from medseg.progress import Progress
    from medseg.volume import Volume

NAME = "ct-anatomy"
VERSION = "1.0"


def _sct(value: str, meaning: str, category: str = "tissue") -> dict[str, str]:
    return {"scheme": "SCT", "value": value, "meaning": meaning, "category": category}


#: colours and SNOMED CT concepts (DICOM SEG) of each label
LABELS: dict[int, Label] = {
    L.BACKGROUND: Label(L.NAMES[L.BACKGROUND], (0, 0, 0)),
    L.BODY: Label(L.NAMES[L.BODY], (177, 122, 101), _sct("85756007", "Tissue")),
    L.LUNG_LEFT: Label(L.NAMES[L.LUNG_LEFT], (80, 170, 230), _sct("44029006", "Left lung", "anatomical")),
    L.LUNG_RIGHT: Label(L.NAMES[L.LUNG_RIGHT], (40, 110, 200), _sct("3341006", "Right lung", "anatomical")),
    L.AIRWAY: Label(L.NAMES[L.AIRWAY], (120, 240, 240), _sct("110726009", "Trachea and bronchus", "anatomical")),
    L.BONE: Label(L.NAMES[L.BONE], (241, 214, 145), _sct("272673000", "Bone structure", "anatomical")),
    L.SUBCUTANEOUS_FAT: Label(
        L.NAMES[L.SUBCUTANEOUS_FAT], (250, 230, 90), _sct("727176007", "Entire subcutaneous fatty tissue")
    ),
    L.TORSO_FAT: Label(L.NAMES[L.TORSO_FAT], (230, 170, 40), _sct("55603005", "Fat")),
    L.SKELETAL_MUSCLE: Label(L.NAMES[L.SKELETAL_MUSCLE], (200, 60, 60), _sct("127954009", "Skeletal muscle")),
}


class CtAnatomyModel(Model):
    """Body, lungs (left/right), airway, bone, subcutaneous and torso fat, skeletal muscle on CT in HU."""

    family = "classical"

    def __init__(self, device: str = "cpu") -> None:
        super().__init__()
        self.name, self.version = NAME, VERSION
        self.description = (
            "weights-free CT anatomy: body, lungs L/R, airway, bone, subcutaneous/torso fat, skeletal muscle"
        )
        self.labels = dict(LABELS)
        self.accepts = Accepts("CT", 1, "HU (thresholds in Hounsfield units)")
        self.windows = None
        # numpy/scipy: runs on the host whatever the device; a GPU asked for must still exist
        self.device = "cpu" if device in ("auto", "", None) else resolve_device(device)

    def model_grid(self, volume: Volume):
        raise ModelError("has no model space; it runs on the scan's own grid", self.name)

    def prepare(self, volume: Volume):
        raise ModelError("has no model space; it runs on the scan's own grid", self.name)

    def run_algorithm(self, volume: Volume, progress: Progress, host_budget: int | None = None) -> AlgorithmOutput:
        from medseg.models.ct_anatomy.method import segment_ct

        result = segment_ct(np.asarray(volume.array), volume.affine, lambda f, _msg="": progress.update(f))
        return AlgorithmOutput(
            result.labels, list(result.notes), {f"ct_anatomy.{k}": v for k, v in result.timings.items()}
        )

    def algorithm_bytes(self, volume: Volume, host_budget: int | None = None) -> int:
        from medseg.models.ct_anatomy.method import peak_bytes

        return int(peak_bytes(volume.shape))

    def weights_status(self) -> str:
        return "no weights needed"
