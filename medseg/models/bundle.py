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
from monai.bundle import ConfigParser

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


def _short(target: str) -> str:
    return str(target).rsplit(".", 1)[-1]


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
    parser = ConfigParser()
    parser.read_config(str(config_path))
    parser["bundle_root"] = str(bundle)
    out = {}
    for key in ("network_def", "preprocessing", "inferer"):
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
    inference = _map_inferer(plain, config.get("inferer"), spatial_dims, config_path)
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
        else:
            raise ModelError(
                f"preprocessing transform {name} (#{i}) has no medseg equivalent; medseg maps Orientationd, "
                "Spacingd, one ScaleIntensityRanged or NormalizeIntensityd (write a ModelSpec YAML instead)",
                source,
            )
    return out


def _map_inferer(plain: _Plain, node, spatial_dims: int, source: Path) -> dict:
    if node is None:
        raise ModelError("bundle config has no 'inferer'", source)
    node = plain.value(node, "inferer")
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
    return {
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
