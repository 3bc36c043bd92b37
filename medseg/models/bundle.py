"""MONAI Model Zoo bundles as ModelSpecs, without executing their ``$`` expressions.

A bundle folder holds ``configs/inference.json`` (or ``.yaml``), ``configs/metadata.json`` and
``models/model.pt``. Only plain values are read: ``network_def`` (``_target_`` + arguments),
the ``preprocessing`` transforms that medseg implements (Orientationd, Spacingd,
ScaleIntensityRanged, NormalizeIntensityd; loading/typing transforms are no-ops here), the
``inferer`` (SlidingWindowInferer / SliceInferer settings) and the label names in metadata's
``channel_def``. ``@name`` references to plain top-level values are followed; a value that is a
``$`` expression, a ``%`` macro or a transform medseg cannot reproduce is an error naming it.
``trust=True`` (``--trust-bundle``) instead evaluates the config with MONAI's ``ConfigParser``
(running its expressions) and maps the evaluated values the same way.

Example:
    >>> spec = spec_from_bundle("models/spleen_ct_segmentation")  # doctest: +SKIP
    >>> spec.network.cls, spec.inference.roi_size  # doctest: +SKIP
    ('UNet', (96, 96, 96))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from medseg.errors import ModelError
from medseg.models.spec import ModelSpec, spec_from_dict

_IGNORED_TRANSFORMS = {
    "LoadImaged",
    "LoadImage",
    "EnsureChannelFirstd",
    "EnsureChannelFirst",
    "EnsureTyped",
    "EnsureType",
    "ToTensord",
    "CastToTyped",
    "Compose",
}
_PALETTE = [(255, 0, 0), (0, 200, 0), (0, 0, 255), (255, 200, 0), (200, 0, 255), (0, 200, 200), (255, 120, 0)]


def is_bundle(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "configs" / "metadata.json").is_file() and _config_path(p) is not None


def _config_path(folder: Path) -> Path | None:
    for name in ("inference.json", "inference.yaml", "inference.yml"):
        if (folder / "configs" / name).is_file():
            return folder / "configs" / name
    return None


def _load(path: Path) -> dict:
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise ModelError(f"cannot read bundle config ({str(err).splitlines()[0][:160]})", path) from None
    if not isinstance(data, dict):
        raise ModelError("bundle config must be a mapping", path)
    return data


def _short(target) -> str:
    """A transform or class name without its module path (``monai.transforms.Spacingd`` -> ``Spacingd``)."""
    return str(target or "").rsplit(".", 1)[-1]


class _Plain:
    """Reads plain values from a bundle config, following ``@name`` references, refusing code."""

    def __init__(self, config: dict, source: Path) -> None:
        self.config, self.source = config, source

    def value(self, v: Any, where: str) -> Any:
        if isinstance(v, str):
            if v.startswith("$"):
                raise ModelError(
                    f"'{where}' is a Python expression ({v[:60]!r}); medseg does not execute bundle code "
                    "(pass --trust-bundle to evaluate it with MONAI's ConfigParser)",
                    self.source,
                )
            if v.startswith("%"):
                raise ModelError(
                    f"'{where}' is a macro ({v[:60]!r}) into another file, which medseg does not follow", self.source
                )
            if v.startswith("@"):
                key = v[1:]
                node: Any = self.config
                for part in key.replace("::", "#").split("#"):
                    if isinstance(node, dict) and part in node:
                        node = node[part]
                    elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                        node = node[int(part)]
                    else:
                        raise ModelError(f"'{where}' refers to '{key}', which the config does not define", self.source)
                return self.value(node, key)
            return v
        if isinstance(v, list):
            return [self.value(x, f"{where}[{i}]") for i, x in enumerate(v)]
        if isinstance(v, dict):
            return {k: self.value(x, f"{where}.{k}") for k, x in v.items()}
        return v


def _evaluated(config_path: Path, bundle: Path) -> dict:
    """``--trust-bundle``: the config's values evaluated by MONAI's ConfigParser (runs its code)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(config_path))
    parser["bundle_root"] = str(bundle)
    out = {}
    for key in ("network_def", "preprocessing", "inferer", "postprocessing"):
        if key in parser.config:
            out[key] = _config_of(parser, key)
    return out


def _config_of(parser, key: str):
    """Evaluate the arguments (not the objects) of ``key``: references and expressions resolved."""
    raw = parser.get(key)
    if isinstance(raw, dict):
        return {k: (v if k == "_target_" else _config_of(parser, f"{key}#{k}")) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_config_of(parser, f"{key}#{i}") for i in range(len(raw))]
    return parser.get_parsed_content(key, instantiate=False)


def bundle_metadata(folder: str | Path) -> dict:
    """The bundle's ``configs/metadata.json`` (name, version, label definitions, ...)."""
    return _load(Path(folder).expanduser().resolve() / "configs" / "metadata.json")


def spec_from_bundle(folder: str | Path, trust: bool = False) -> ModelSpec:
    """Map a MONAI bundle folder onto a ModelSpec (see module docstring)."""
    bundle = Path(folder).expanduser().resolve()
    config_path = _config_path(bundle)
    if config_path is None or not (bundle / "configs" / "metadata.json").is_file():
        raise ModelError("not a MONAI bundle (expected configs/inference.json and configs/metadata.json)", bundle)
    config = _load(config_path)
    metadata = _load(bundle / "configs" / "metadata.json")
    if trust:
        config = {**config, **_evaluated(config_path, bundle)}
    plain = _Plain(config, config_path)

    if "network_def" not in config:
        raise ModelError("bundle config has no 'network_def'", config_path)
    net = plain.value(config["network_def"], "network_def")
    if not isinstance(net, dict) or "_target_" not in net:
        raise ModelError("'network_def' must be a mapping with a _target_", config_path)
    cls = _short(net["_target_"])
    kwargs = {k: v for k, v in net.items() if k not in ("_target_", "_requires_", "_disabled_", "_desc_")}
    spatial_dims = int(kwargs.pop("spatial_dims", kwargs.pop("dimensions", 3)))
    in_channels = int(kwargs.pop("in_channels", 1))
    out_channels = kwargs.pop("out_channels", None)
    if out_channels is None:
        raise ModelError("'network_def' does not give out_channels", config_path)

    preprocessing = _map_preprocessing(plain, config.get("preprocessing"), config_path)
    preprocessing["grid"] = "monai"  # Spacingd's output size, so the windows fall where the bundle's do
    inference = _map_inferer(plain, config.get("inferer"), spatial_dims, config_path)
    inference["invert"] = _map_postprocessing(plain, config.get("postprocessing"), config_path)
    labels = _map_labels(metadata, int(out_channels))
    weights = bundle / "models" / "model.pt"
    if not weights.is_file():
        ts = bundle / "models" / "model.ts"
        if not ts.is_file():
            raise ModelError("bundle has no models/model.pt (or model.ts)", bundle)
        weights = ts
    data = {
        "name": str(metadata.get("name") or bundle.name).replace(" ", "_"),
        "version": str(metadata.get("version", "")),
        "description": str(metadata.get("description", ""))[:300],
        "network": {
            "class": cls,
            "spatial_dims": spatial_dims,
            "in_channels": in_channels,
            "out_channels": int(out_channels),
            "kwargs": kwargs,
        },
        "labels": labels,
        "preprocessing": preprocessing,
        "inference": inference,
        "weights": {"path": str(weights), "format": "torchscript" if weights.suffix == ".ts" else "auto"},
    }
    return spec_from_dict(data, config_path, bundle)


def _map_preprocessing(plain: _Plain, node, source: Path) -> dict:
    out: dict[str, Any] = {"orientation": "RAS", "spacing": [None, None, None], "intensity": {"kind": "none"}}
    if node is None:
        return out
    node = plain.value(node, "preprocessing")
    transforms = node.get("transforms", []) if isinstance(node, dict) else node
    if not isinstance(transforms, list):
        raise ModelError("'preprocessing' must be a Compose with a list of transforms", source)
    intensity_set = False
    for i, t in enumerate(transforms):
        if not isinstance(t, dict) or "_target_" not in t:
            raise ModelError(f"preprocessing transform {i} is not a _target_ mapping", source)
        name = _short(t["_target_"])
        keys = t.get("keys", "image")
        keys = [keys] if isinstance(keys, str) else list(keys)
        if "image" not in keys or name in _IGNORED_TRANSFORMS:
            continue
        if name == "Orientationd":
            out["orientation"] = str(t.get("axcodes", "RAS"))
        elif name == "Spacingd":
            pixdim = t.get("pixdim")
            pixdim = [pixdim] * 3 if isinstance(pixdim, (int, float)) else list(pixdim)
            out["spacing"] = [None if (p is None or p <= 0) else float(p) for p in pixdim]
        elif name == "ScaleIntensityRanged" and not intensity_set:
            out["intensity"] = {
                "kind": "ct_window",
                "a_min": float(t["a_min"]),
                "a_max": float(t["a_max"]),
                "b_min": float(t.get("b_min", 0.0)),
                "b_max": float(t.get("b_max", 1.0)),
                "clip": bool(t.get("clip", False)),
            }
            intensity_set = True
        elif name == "NormalizeIntensityd" and not intensity_set:
            out["intensity"] = {"kind": "zscore", "nonzero": bool(t.get("nonzero", False))}
            intensity_set = True
        elif name == "ScaleIntensityd" and "rescale" not in out["intensity"]:
            out["intensity"]["rescale"] = _scale_intensity(t, i, source)
            out["intensity"]["rescale_channel_wise"] = bool(t.get("channel_wise", False))
            intensity_set = True
        else:
            raise ModelError(
                f"preprocessing transform {name} (#{i}) has no medseg equivalent; medseg maps Orientationd, "
                "Spacingd, one ScaleIntensityRanged or NormalizeIntensityd (write a ModelSpec YAML instead)",
                source,
            )
    if out["intensity"]["kind"] == "none" and "rescale" in out["intensity"]:
        out["intensity"]["clip"] = False
    return out


def _scale_intensity(t: dict, i: int, source: Path) -> list[float]:
    """``ScaleIntensityd(minv, maxv)``: the scan's range onto ``[minv, maxv]`` (``[0, 1]`` when one
    bound is None, as MONAI's ``rescale_array``). A ``factor`` scales values by ``1 + factor``,
    which no bundle in the zoo uses and medseg does not map."""
    if t.get("factor") is not None:
        raise ModelError(
            f"preprocessing transform ScaleIntensityd (#{i}) with a factor has no medseg equivalent "
            "(medseg maps ScaleIntensityd(minv, maxv), the range rescaling)",
            source,
        )
    minv, maxv = t.get("minv", 0.0), t.get("maxv", 1.0)
    if minv is None or maxv is None:
        return [0.0, 1.0]
    return [float(minv), float(maxv)]


#: post-processing steps that write files
_WRITERS = {"SaveImaged", "SaveImage"}
#: post-processing steps that do not change which label a voxel gets
_IGNORED_POST = (
    _IGNORED_TRANSFORMS
    | _WRITERS
    | {
        "ToDeviced",
        "ToNumpyd",
        "CopyItemsd",
        "DeleteItemsd",
        "SqueezeDimd",
    }
)


def _map_postprocessing(plain: _Plain, node, source: Path) -> str:
    """What the bundle interpolates back onto the source grid (``InferenceSpec.invert``), read from
    the order of ``Activationsd``, ``Invertd`` and ``AsDiscreted`` in its ``postprocessing``.

    * softmax, then ``Invertd`` (linear), then argmax (the spleen bundle): ``probabilities``;
    * argmax before ``Invertd``, or ``Invertd(nearest_interp=True)`` (its default): ``labels``;
    * ``Invertd`` (linear) before any activation: ``logits``.
    Without ``Invertd`` a bundle leaves its prediction on the model grid; medseg always returns
    labels on the source grid and interpolates logits there, as for its own models.
    """
    if node is None:
        return "logits"
    if isinstance(node, str):  # a reference to the Compose; its steps are read one value at a time
        node = plain.value(node, "postprocessing")
    transforms = node.get("transforms", []) if isinstance(node, dict) else node
    if isinstance(transforms, str):
        transforms = plain.value(transforms, "postprocessing.transforms")
    if not isinstance(transforms, list):
        raise ModelError("'postprocessing' must be a Compose with a list of transforms", source)
    softmax = argmax = False
    invert: str | None = None
    for i, raw in enumerate(transforms):
        raw = plain.value(raw, f"postprocessing[{i}]") if isinstance(raw, str) else raw
        if not isinstance(raw, dict) or "_target_" not in raw:
            raise ModelError(f"postprocessing transform {i} is not a _target_ mapping", source)
        name = _short(raw["_target_"])
        read = ("keys", "softmax", "sigmoid", "other", "argmax", "threshold", "nearest_interp")
        # only the arguments that decide the labels are read: a SaveImaged's output_dir may be code
        t = {k: plain.value(raw[k], f"postprocessing[{i}].{k}") for k in read if k in raw}
        keys = t.get("keys", "pred")
        keys = [keys] if isinstance(keys, str) else list(keys)
        if name in _IGNORED_POST or "pred" not in keys:
            continue
        if name == "Activationsd":
            if t.get("sigmoid") or t.get("other") is not None:
                raise ModelError(
                    f"postprocessing Activationsd (#{i}) uses sigmoid or a custom function; medseg maps "
                    "softmax + argmax label maps only",
                    source,
                )
            softmax = softmax or bool(t.get("softmax", False))
        elif name == "AsDiscreted":
            if not t.get("argmax", False) or t.get("threshold") is not None:
                raise ModelError(f"postprocessing AsDiscreted (#{i}) without argmax has no medseg equivalent", source)
            argmax = True
        elif name == "Invertd":
            if invert is not None:
                raise ModelError(f"postprocessing has a second Invertd (#{i})", source)
            nearest = bool(t.get("nearest_interp", True))
            if argmax and not nearest:
                raise ModelError(
                    f"postprocessing Invertd (#{i}) interpolates label indices linearly; medseg does not "
                    "reproduce that (set nearest_interp true)",
                    source,
                )
            invert = "labels" if (argmax or nearest) else ("probabilities" if softmax else "logits")
        else:
            raise ModelError(
                f"postprocessing transform {name} (#{i}) has no medseg equivalent; medseg maps Activationsd "
                "(softmax), Invertd and AsDiscreted (argmax)",
                source,
            )
    return invert or "logits"


def _map_inferer(plain: _Plain, node, spatial_dims: int, source: Path) -> dict:
    if node is None:
        raise ModelError("bundle config has no 'inferer'", source)
    if isinstance(node, str):
        node = plain.value(node, "inferer")
    if not isinstance(node, dict):
        raise ModelError("'inferer' must be a mapping with a _target_", source)
    read = ("_target_", "roi_size", "mode", "overlap", "sw_batch_size", "padding_mode", "sigma_scale")
    # only what decides the windows is read: its device argument, for one, is often code
    node = {k: plain.value(node[k], f"inferer.{k}") for k in read if k in node}
    name = _short(node.get("_target_", ""))
    if name not in ("SlidingWindowInferer", "SliceInferer", "SlidingWindowInfererAdapt"):
        raise ModelError(f"inferer {name or '?'} has no medseg equivalent (SlidingWindowInferer, SliceInferer)", source)
    roi = node.get("roi_size")
    if roi is None:
        raise ModelError("inferer has no roi_size", source)
    roi = [int(roi)] * spatial_dims if isinstance(roi, int) else [int(r) for r in roi]
    mode = str(node.get("mode", "constant"))  # MONAI's default blending is constant
    if mode not in ("constant", "gaussian"):
        raise ModelError(f"inferer blending mode {mode!r} has no medseg equivalent", source)
    overlap = node.get("overlap", 0.25)
    if isinstance(overlap, (list, tuple)):
        if len(set(overlap)) != 1:
            raise ModelError("per-axis inferer overlap has no medseg equivalent", source)
        overlap = overlap[0]
    padding = str(node.get("padding_mode", "constant"))
    if padding not in ("constant", "replicate"):
        raise ModelError(f"inferer padding_mode {padding!r} has no medseg equivalent (constant, replicate)", source)
    if float(node.get("sigma_scale", 0.125)) != 0.125:
        raise ModelError("inferer sigma_scale other than 0.125 has no medseg equivalent", source)
    return {
        "padding_mode": padding,
        "roi_size": roi,
        "overlap": float(overlap),
        "blend": mode,
        "sw_batch_size": int(node.get("sw_batch_size", 1)),
    }


def _map_labels(metadata: dict, n: int) -> dict:
    fmt = metadata.get("network_data_format", {})
    outputs = fmt.get("outputs", {}) if isinstance(fmt, dict) else {}
    pred = next(iter(outputs.values()), {}) if isinstance(outputs, dict) and outputs else {}
    channel_def = pred.get("channel_def", {}) if isinstance(pred, dict) else {}
    names = {int(k): str(v) for k, v in channel_def.items() if str(k).isdigit() and int(k) < max(n, 2)}
    labels = {}
    for i in range(max(n, 2) if n > 1 else 2):
        color = (0, 0, 0) if i == 0 else _PALETTE[(i - 1) % len(_PALETTE)]
        labels[i] = {"name": names.get(i, "background" if i == 0 else f"label_{i}"), "color": list(color)}
    return labels
