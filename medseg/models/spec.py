"""Typed model specifications (``configs/models/*.yaml``), validated on load.

A ModelSpec says which MONAI network to build, what its output channels mean, how to prepare a
scan for it, how to tile inference, and where its weights are (with their sha256).

Example:
    >>> spec = load_spec("configs/models/phantom-unet3d.yaml")  # doctest: +SKIP
    >>> spec.labels[3].name  # doctest: +SKIP
    'liver'
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medseg.errors import ModelError

_AXES = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NetworkSpec(_Strict):
    """A MONAI network: ``monai.networks.nets.<cls>(spatial_dims, in_channels, out_channels, **kwargs)``."""

    cls: str = Field(alias="class")
    spatial_dims: Literal[2, 3] = 3
    in_channels: int = Field(1, ge=1)
    out_channels: int = Field(ge=1)
    kwargs: dict[str, Any] = Field(default_factory=dict)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class LabelSpec(_Strict):
    name: str
    color: tuple[int, int, int] = (255, 0, 0)

    @field_validator("color")
    @classmethod
    def _rgb(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(not 0 <= c <= 255 for c in v):
            raise ValueError("colour components must be 0..255")
        return v


class IntensitySpec(_Strict):
    """``ct_window``: clip HU to [a_min, a_max] and scale to [b_min, b_max]; ``zscore``: per scan.

    ``rescale`` ``[min, max]``, applied after ``kind``: the whole resampled scan's range mapped
    linearly onto ``[min, max]`` (MONAI's ``ScaleIntensity(minv, maxv)``, per channel with
    ``rescale_channel_wise``).
    """

    kind: Literal["ct_window", "zscore", "none"] = "ct_window"
    a_min: float = -1000.0
    a_max: float = 1000.0
    b_min: float = 0.0
    b_max: float = 1.0
    clip: bool = True
    nonzero: bool = False
    rescale: tuple[float, float] | None = None
    rescale_channel_wise: bool = False

    @model_validator(mode="after")
    def _window(self) -> IntensitySpec:
        if self.kind == "ct_window" and self.a_max <= self.a_min:
            raise ValueError("a_max must be greater than a_min")
        if self.rescale is not None and not all(map(math.isfinite, self.rescale)):
            raise ValueError("rescale bounds must be finite")
        return self


class PreprocessSpec(_Strict):
    orientation: str = "RAS"
    #: target voxel size in mm per axis (after reorientation); null keeps the scan's own spacing
    spacing: tuple[float | None, float | None, float | None] = (None, None, None)
    intensity: IntensitySpec = IntensitySpec()
    #: how many model voxels the resampled grid has: ``medseg`` round(n * s / t) (the extent the
    #: source voxels cover), ``monai`` round((n - 1) * s / t) + 1 (MONAI ``Spacing``: the span of the
    #: voxel centres, what a bundle's ``Spacingd`` gives). Voxel 0 stays put either way.
    grid: Literal["medseg", "monai"] = "medseg"

    @field_validator("orientation")
    @classmethod
    def _axcodes(cls, v: str) -> str:
        v = v.upper()
        if len(v) != 3 or any(c not in _AXES for c in v) or len({frozenset((c, _AXES[c])) for c in v}) != 3:
            raise ValueError(f"orientation must be three axis codes like RAS or LPS, got {v!r}")
        return v

    @field_validator("spacing")
    @classmethod
    def _positive(cls, v):
        if any(s is not None and s <= 0 for s in v):
            raise ValueError("spacing must be positive")
        return v


class InferenceSpec(_Strict):
    roi_size: tuple[int, ...]
    overlap: float = Field(0.25, ge=0.0, lt=1.0)
    blend: Literal["gaussian", "constant"] = "gaussian"
    sw_batch_size: int = Field(1, ge=1)
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    #: what is interpolated back onto the source grid before the argmax: ``logits`` (medseg's own
    #: models), ``probabilities`` (softmax first: a bundle's ``Activationsd`` -> ``Invertd`` ->
    #: ``AsDiscreted``) or ``labels`` (argmax on the model grid, then nearest: ``AsDiscreted`` ->
    #: ``Invertd(nearest_interp=True)``)
    invert: Literal["logits", "probabilities", "labels"] = "logits"
    #: how a scan smaller than a window is padded (MONAI's ``padding_mode``)
    padding_mode: Literal["constant", "replicate"] = "constant"


class WeightsSpec(_Strict):
    path: str
    sha256: str | None = None
    format: Literal["auto", "state_dict", "torchscript"] = "auto"


class ModelSpec(_Strict):
    name: str
    version: str = ""
    description: str = ""
    #: the modality the model was trained on: CT, MR, or any
    modality: Literal["CT", "MR", "any"] = "any"
    network: NetworkSpec
    labels: dict[int, LabelSpec]
    preprocessing: PreprocessSpec = PreprocessSpec()
    inference: InferenceSpec
    weights: WeightsSpec | None = None
    #: where the weights came from (``medseg train`` writes the parent model, its sha256, the data
    #: folder, steps and validation Dice); informational, never used to run the model
    provenance: dict[str, Any] = Field(default_factory=dict)
    #: folder the spec was loaded from; relative weight paths resolve against it
    base_dir: str = "."

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        n = self.network.out_channels
        bad = [k for k in self.labels if not 0 <= k < max(n, 2)]
        if bad:
            raise ValueError(f"label indices {bad} are outside 0..{n - 1} (network.out_channels={n})")
        if len(self.inference.roi_size) != self.network.spatial_dims:
            raise ValueError(
                f"inference.roi_size has {len(self.inference.roi_size)} values but the network is "
                f"{self.network.spatial_dims}D"
            )
        return self

    @property
    def foreground(self) -> dict[int, LabelSpec]:
        return {k: v for k, v in sorted(self.labels.items()) if k != 0}

    def label_names(self) -> dict[int, str]:
        return {k: v.name for k, v in sorted(self.labels.items())}

    def weights_path(self) -> Path | None:
        if self.weights is None:
            return None
        p = Path(self.weights.path).expanduser()
        return p if p.is_absolute() else (Path(self.base_dir) / p).resolve()


def spec_from_dict(data: dict[str, Any], source: str | Path = "<dict>", base_dir: str | Path = ".") -> ModelSpec:
    try:
        return ModelSpec.model_validate({**data, "base_dir": str(base_dir)})
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "spec"
        more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
        raise ModelError(f"invalid model spec at '{where}': {first['msg']}{more}", source) from None


def spec_to_dict(spec: ModelSpec) -> dict[str, Any]:
    """The YAML-ready mapping of ``spec`` (plain lists and ints; ``base_dir`` left out)."""
    data = spec.model_dump(mode="json", by_alias=True, exclude={"base_dir"})
    data["labels"] = {int(k): v for k, v in data["labels"].items()}
    if not data.get("provenance"):
        data.pop("provenance", None)
    return data


def write_spec(spec: ModelSpec, path: str | Path) -> Path:
    """Write ``spec`` as YAML (atomically); relative weight paths resolve against ``path``'s folder."""
    from medseg.io.atomic import write_text_atomic

    return write_text_atomic(Path(path), yaml.safe_dump(spec_to_dict(spec), sort_keys=False))


def load_spec(path: str | Path) -> ModelSpec:
    """Load and validate a ModelSpec YAML; errors name the file and the offending field."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ModelError("model spec not found", path) from None
    except yaml.YAMLError as err:
        raise ModelError(f"not valid YAML ({str(err).splitlines()[0]})", path) from None
    if not isinstance(data, dict):
        raise ModelError("a model spec must be a YAML mapping", path)
    return spec_from_dict(data, path, path.parent.resolve())
