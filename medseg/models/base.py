"""The one model interface: what the planner, engine, batch, viewer and writers know of a model.

A :class:`Model` says what it is (name, version, family, labels), what it accepts (modality,
intensity, channels), how a :class:`~medseg.volume.Volume` goes into its space and back
(:meth:`Model.prepare` and the :class:`~medseg.inference.preprocess.GridRecord` it returns), the
window grid and blending its reference implementation uses (:class:`WindowGrid`), its forward step
(a network, :meth:`Model.forward`, or an algorithm without one, :meth:`Model.run_algorithm`), how
its scores become labels on the source grid (:meth:`Model.finaliser`) and its memory terms for the
planner (:meth:`Model.memory_terms`). Families implement it: MONAI ModelSpecs and bundles
(:mod:`medseg.models.monai`) run their windows through the engine; nnU-Net v2 folders, TotalSegmentator
tasks and the classical ``ct-anatomy`` run as an algorithm (:meth:`Model.run_algorithm`: nnU-Net's own
tiling inside the family, not yet the engine's).

Example:
    >>> model = open_model("phantom-unet3d")  # doctest: +SKIP  (medseg.models.registry)
    >>> model.labels[3].name, model.windows.roi_size  # doctest: +SKIP
    ('liver', (96, 96, 96))
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg.errors import InputError, ModelError
from medseg.inference.invert import Finaliser, SourceGridFinaliser
from medseg.io.validate import channels_of
from medseg.volume import Volume

if TYPE_CHECKING:  # for the annotations only
    import torch

    from medseg.inference.preprocess import GridRecord
    from medseg.inference.tracing import NetworkMemory
    from medseg.progress import Progress


@dataclass(frozen=True)
class Label:
    """One output label: its name, display colour and, where known, a coded concept
    (``{"scheme": "SCT", "value": "10200004", "meaning": "Liver"}``, optionally with ``"category"``:
    ``anatomical`` (the default) or ``tissue``) for DICOM SEG."""

    name: str
    color: tuple[int, int, int] = (255, 0, 0)
    code: dict[str, str] | None = None


@dataclass
class AlgorithmOutput:
    """What a model without a network returns: labels on the scan's grid, plain-English notes for
    the sidecar (e.g. "no lungs in the field of view") and its own step timings in seconds."""

    labels: np.ndarray
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Accepts:
    """What input a model accepts: ``modality`` (``CT``, ``MR`` or ``any``), the number of
    channels, and its intensity convention in words (e.g. ``CT in HU, window [-1000, 1000]``)."""

    modality: str = "any"
    channels: int = 1
    intensity: str = ""


@dataclass(frozen=True)
class WindowGrid:
    """The sliding-window grid and blending of a model's reference implementation.

    ``roi_size`` has ``spatial_dims`` values (2: slices along the last axis); ``overlap`` is
    MONAI's fraction of a window; ``blend`` ``gaussian`` (MONAI's importance map with
    ``sigma_scale``) or ``constant``; ``sw_batch_size`` the windows run at once by default;
    ``precision`` on a GPU (``fp32``, ``fp16``, ``bf16``); ``roi_divisor`` the factor every roi
    side must be a multiple of for the network to take it (the planner's smaller rois);
    ``padding_mode`` how a volume smaller than a window is padded (``constant`` zeros, ``replicate``).
    """

    roi_size: tuple[int, ...]
    overlap: float = 0.25
    blend: str = "gaussian"
    sw_batch_size: int = 1
    precision: str = "fp32"
    sigma_scale: float = 0.125
    roi_divisor: int = 16
    padding_mode: str = "constant"

    @property
    def spatial_dims(self) -> int:
        return len(self.roi_size)


class Model(ABC):
    """A segmentation model behind medseg's pipeline. Subclasses fill in the attributes in
    ``__init__`` (without loading weights: listing models must stay cheap) and load in :meth:`_load`.

    Attributes:
        family: which implementation (``monai-spec``, ``monai-bundle``, ...).
        name, version, description: what the model is.
        labels: ``{index: Label}``, index 0 the background.
        accepts: the input it takes.
        windows: its window grid, or None for a model without a network.
        device: where it runs (``cpu``, ``cuda``, ``cuda:N``).
        weights_sha256: sha256 of its weights once loaded (None without weights).
        load_seconds: time :meth:`load` took.
    """

    family: str = "model"

    def __init__(self) -> None:
        self.name = ""
        self.version = ""
        self.description = ""
        self.labels: dict[int, Label] = {}
        self.accepts = Accepts()
        self.windows: WindowGrid | None = None
        self.device = "cpu"
        self.weights_sha256: str | None = None
        self.load_seconds = 0.0
        self._loaded = False

    # --- what it is --------------------------------------------------------------------------
    @property
    def has_network(self) -> bool:
        return self.windows is not None

    @property
    def kind(self) -> str:
        """A word or two for listings: ``3D``, ``2D`` (network), ``no network``."""
        return f"{self.spatial_dims}D" if self.has_network else "no network"

    @property
    def out_channels(self) -> int:
        """Scores per voxel the forward step produces (classes, at least 2)."""
        return max(2, max(self.labels, default=0) + 1)

    @property
    def spatial_dims(self) -> int:
        return self.windows.spatial_dims if self.windows is not None else 3

    def label_names(self) -> dict[int, str]:
        return {k: v.name for k, v in sorted(self.labels.items())}

    def foreground(self) -> dict[int, Label]:
        return {k: v for k, v in sorted(self.labels.items()) if k != 0}

    def weights_digest(self) -> str | None:
        """sha256 of the weights, without loading them (None for a model without weights)."""
        return None

    def weights_status(self) -> str:
        """One word for ``medseg models``: ``weights ok``, ``weights missing`` or ``no weights``."""
        return "no weights"

    def describe(self) -> dict[str, Any]:
        """The sidecar's ``model`` record."""
        return {
            "name": self.name,
            "version": self.version,
            "family": self.family,
            "weights_sha256": self.weights_sha256,
            "accepts": {"modality": self.accepts.modality, "channels": self.accepts.channels},
        }

    # --- loading -------------------------------------------------------------------------------
    def load(self) -> Model:
        """Load weights (once); returns the model."""
        if not self._loaded:
            t = time.perf_counter()
            self._load()
            self.load_seconds = time.perf_counter() - t
            self._loaded = True
        return self

    def _load(self) -> None:  # a model without weights has nothing to load
        return None

    # --- input -------------------------------------------------------------------------------
    def check_input(self, volume: Volume) -> None:
        """Refuse a volume this model cannot take (channel count), before any work is done."""
        have, want = channels_of(volume), self.accepts.channels
        if have == want:
            return
        if have > 1 and want == 1:
            raise InputError(
                f"is a 4D image with {have} volumes; model '{self.name}' segments a single 3D volume "
                "(extract one volume first)",
                volume.source,
            )
        raise InputError(f"has {have} channel(s) but model '{self.name}' expects in_channels={want}", volume.source)

    # --- model space and back --------------------------------------------------------------
    @abstractmethod
    def model_grid(self, volume: Volume) -> GridRecord:
        """The model-space grid of ``volume`` (shapes and affines only, no voxel data)."""

    @abstractmethod
    def prepare(self, volume: Volume) -> tuple[torch.Tensor, GridRecord]:
        """``volume`` -> ``(C, X, Y, Z)`` float32 input in model space, and the record to invert it."""

    def finaliser(self, record: GridRecord) -> Finaliser:
        """Receives the blended scores plane by plane and returns labels on the source grid."""
        return SourceGridFinaliser(record, self.out_channels)

    # --- the forward step ----------------------------------------------------------------------
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Scores ``(B, classes, *roi)`` for a batch of windows (models with a network)."""
        raise ModelError("has no network; it segments with its own algorithm", self.name)

    def run_algorithm(
        self, volume: Volume, progress: Progress, host_budget: int | None = None
    ) -> np.ndarray | AlgorithmOutput:
        """Labels on ``volume``'s grid (or an :class:`AlgorithmOutput` with notes), for a model
        without a network (``windows`` is None), within ``host_budget`` bytes (the plan's; None: what is
        free)."""
        raise ModelError("has a network; run it through the engine", self.name)

    # --- memory and speed (the planner's terms) -----------------------------------------------
    def memory_terms(self) -> NetworkMemory | None:
        """Weights and traced activation peaks of the network (None without a network)."""
        return None

    def algorithm_bytes(self, volume: Volume, host_budget: int | None = None) -> int:
        """Predicted peak host bytes of :meth:`run_algorithm` on ``volume`` within ``host_budget`` (models
        without a network; a model that streams its buffers decides how from the budget)."""
        return 0

    def tune_windows(self, roi: tuple[int, ...], max_batch: int) -> tuple[int, bool]:
        """The fastest ``(window batch, channels_last)`` on this CPU up to ``max_batch``."""
        return max_batch, False

    def use_layout(self, channels_last: bool) -> None:  # noqa: B027 - nothing to do without a network
        """Put the weights in the memory layout a plan asks for."""
