"""MONAI models behind the model interface: a ModelSpec YAML, and a MONAI Model Zoo bundle.

Both run a MONAI network over MONAI's sliding windows (Gaussian or constant blending) after
medseg's exact reorientation, resampling and intensity normalisation (:mod:`medseg.inference.preprocess`),
and come back to the source grid (:mod:`medseg.inference.invert`). A ModelSpec interpolates
logits; a bundle does what its own ``postprocessing`` does (softmax probabilities through
``Invertd`` then argmax, or argmax then ``Invertd`` with nearest), on MONAI ``Spacingd``'s grid;
the sidecar's ``model.semantics`` says which ran.

Example:
    >>> model = MonaiModel(load_spec("configs/models/phantom-unet3d.yaml")).load()  # doctest: +SKIP
    >>> model.windows.roi_size  # doctest: +SKIP
    (96, 96, 96)
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.devices import resolve_device
from medseg.errors import ModelError
from medseg.inference.invert import SourceGridFinaliser
from medseg.inference.preprocess import GridRecord, plan_grid, preprocess_image
from medseg.inference.speed import fold_batchnorm, tune_windows
from medseg.inference.tracing import NetworkMemory
from medseg.io.atomic import sha256_of
from medseg.models.base import Accepts, Label, Model, WindowGrid
from medseg.models.bundle import bundle_metadata, spec_from_bundle
from medseg.models.checkpoints import load_network
from medseg.models.networks import build_network
from medseg.models.spec import IntensitySpec, ModelSpec, NetworkSpec
from medseg.volume import Volume


def roi_divisor(net: NetworkSpec) -> int:
    """The factor every roi side must be a multiple of for the network to take it."""
    kw = net.kwargs
    if net.cls in ("UNet", "AttentionUnet"):
        return int(np.prod(kw.get("strides", [2, 2, 2, 2])))
    if net.cls == "SegResNet":
        return 2 ** (len(kw.get("blocks_down", (1, 2, 2, 4))) - 1)
    if net.cls == "DynUNet":
        strides = kw.get("strides", [1, 2, 2, 2])
        return int(np.prod([s if isinstance(s, int) else max(s) for s in strides]))
    if net.cls == "SwinUNETR":
        return 32
    return 16  # BasicUNet, UNETR and the rest


def describe_intensity(intensity: IntensitySpec) -> str:
    """The intensity convention in words (``medseg models``, the sidecar)."""
    if intensity.kind == "ct_window":
        clip = ", clipped" if intensity.clip else ""
        return f"window [{intensity.a_min:g}, {intensity.a_max:g}] -> [{intensity.b_min:g}, {intensity.b_max:g}]{clip}"
    if intensity.kind == "zscore":
        return "z-score per scan" + (" (non-zero voxels)" if intensity.nonzero else "")
    return "as stored"


class MonaiModel(Model):
    """A :class:`~medseg.models.spec.ModelSpec`: a MONAI network class, its weights and settings."""

    family = "monai-spec"

    def __init__(self, spec: ModelSpec, device: str = "cpu") -> None:
        super().__init__()
        self.spec = spec
        self.name = spec.name
        self.version = spec.version
        self.description = spec.description
        self.labels = {k: Label(v.name, tuple(v.color)) for k, v in sorted(spec.labels.items())}
        self.accepts = Accepts(
            spec.modality, spec.network.in_channels, describe_intensity(spec.preprocessing.intensity)
        )
        inf = spec.inference
        self.windows = WindowGrid(
            roi_size=tuple(inf.roi_size),
            overlap=inf.overlap,
            blend=inf.blend,
            sw_batch_size=inf.sw_batch_size,
            precision=inf.precision,
            roi_divisor=roi_divisor(spec.network),
            padding_mode=inf.padding_mode,
        )
        self.device = resolve_device(device)
        self.network: torch.nn.Module | None = None
        self.folded_batchnorms = 0
        self._channels_last = False
        self._memory: NetworkMemory | None = None

    @property
    def out_channels(self) -> int:
        return max(2, self.spec.network.out_channels)

    def weights_digest(self) -> str:
        path = self.spec.weights_path()
        if path is None or not path.is_file():
            raise ModelError("weights file not found", path or self.name)
        return (self.spec.weights.sha256 if self.spec.weights.sha256 else None) or sha256_of(path)

    def weights_status(self) -> str:
        path = self.spec.weights_path()
        return "weights ok" if path is not None and path.is_file() else "weights missing"

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "network": self.spec.network.cls,
            "spatial_dims": self.spec.network.spatial_dims,
            "weights": str(self.spec.weights_path()),
            "preprocessing": self.spec.preprocessing.model_dump(),
            "semantics": self.semantics,
        }

    def _load(self) -> None:
        self.network, self.weights_sha256 = load_network(self.spec, self.device)
        #: batch norms folded into the convolutions before them (same maths, one pass less)
        self.folded_batchnorms = fold_batchnorm(self.network)

    # --- model space
    def model_grid(self, volume: Volume) -> GridRecord:
        return plan_grid(volume, self.spec.preprocessing)

    def prepare(self, volume: Volume) -> tuple[torch.Tensor, GridRecord]:
        return preprocess_image(volume, self.spec.preprocessing)

    def finaliser(self, record: GridRecord) -> SourceGridFinaliser:
        return SourceGridFinaliser(record, self.out_channels, invert=self.spec.inference.invert)

    @property
    def semantics(self) -> dict[str, str]:
        """Which conventions ran (the sidecar's ``model.semantics``): the model grid's size rule and
        what is interpolated back to the source grid."""
        grid, invert = self.spec.preprocessing.grid, self.spec.inference.invert
        how = {
            "logits": "logits interpolated (linear) to the source grid, then argmax",
            "probabilities": "softmax, probabilities interpolated (linear) to the source grid, then argmax",
            "labels": "argmax on the model grid, labels resampled (nearest) to the source grid",
        }[invert]
        rule = "MONAI Spacing: round((n - 1) * s / t) + 1" if grid == "monai" else "medseg: round(n * s / t)"
        return {"grid": grid, "grid_rule": rule, "invert": invert, "description": how}

    # --- forward step
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.network(batch)

    # --- memory and speed
    def memory_terms(self) -> NetworkMemory:
        """Built from the loaded network, or on the meta device before loading and for TorchScript
        weights (which cannot be traced): the same architecture either way."""
        if self._memory is None:
            net = self.network
            if not isinstance(net, torch.nn.Module) or isinstance(net, torch.jit.ScriptModule):
                with torch.device("meta"):
                    net = build_network(self.spec)
            self._memory = NetworkMemory(net)
        return self._memory

    def tune_windows(self, roi: tuple[int, ...], max_batch: int) -> tuple[int, bool]:
        """Timed on a copy of the network: tuning switches memory layouts, and the pipelined batch plans the
        next case while the current one runs on the network itself (whose layout :meth:`use_layout` keeps)."""
        network = self.load().network
        if isinstance(network, torch.nn.Module) and not isinstance(network, torch.jit.ScriptModule):
            network = copy.deepcopy(network).to(memory_format=torch.contiguous_format)
        return tune_windows(network, self.accepts.channels, tuple(roi), max_batch)

    def use_layout(self, channels_last: bool) -> None:
        want = bool(channels_last)
        if want != self._channels_last and isinstance(self.network, torch.nn.Module):
            fmt = torch.channels_last_3d if want else torch.contiguous_format
            self.network.to(memory_format=fmt)
            self._channels_last = want


class BundleModel(MonaiModel):
    """A MONAI Model Zoo bundle folder, its config mapped onto a ModelSpec without executing its
    ``$`` expressions (``trust=True``: evaluated by MONAI's ConfigParser), its name, version and
    label names from ``configs/metadata.json``."""

    family = "monai-bundle"

    def __init__(self, folder: str | Path, device: str = "cpu", trust: bool = False) -> None:
        super().__init__(spec_from_bundle(folder, trust=trust), device)
        self.folder = Path(folder).expanduser().resolve()
        meta = bundle_metadata(self.folder)
        self.version = str(meta.get("version") or self.version)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "bundle": str(self.folder)}
