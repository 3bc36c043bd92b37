"""The label set of a training folder: which label value means which structure.

Looked up in this order (the first that exists wins):

1. ``--labels``: names in index order (``body,lungs,liver``: 1 = body, 2 = lungs, ...; 0 is
   background), or a JSON file in one of the forms below;
2. ``DIR/labels.json``: ``{"1": "liver"}``, ``{"1": {"name": "liver", "color": [r, g, b]}}`` or a
   medseg sidecar (``{"labels": {...}}``);
3. ``DIR/dataset.json`` (nnU-Net v2: ``{"labels": {"background": 0, "liver": 1}}``);
4. the JSON sidecars medseg writes beside label files (``labels/<case>.json``, by ``medseg infer`` and
   the napari plugin's "Save labels"); every case that has one must agree.

Without any of them the data is taken to use the labels of the model it starts from.
"""

from __future__ import annotations

import json
from pathlib import Path

from medseg.errors import InputError
from medseg.io.registry import sidecar_path as sidecar_of

#: index -> (name, colour or None)
LabelSet = dict[int, tuple[str, tuple[int, int, int] | None]]


def _color(value) -> tuple[int, int, int] | None:
    if isinstance(value, (list, tuple)) and len(value) >= 3:
        return tuple(int(c) for c in value[:3])  # type: ignore[return-value]
    return None


def _from_mapping(data: object, source: Path) -> LabelSet:
    """``{"1": "liver"}``, ``{"1": {"name": ...}}``, a sidecar ``{"labels": ...}`` or nnU-Net's ``{"liver": 1}``."""
    if isinstance(data, dict) and "labels" in data and isinstance(data["labels"], dict):
        data = data["labels"]
    if not isinstance(data, dict) or not data:
        raise InputError("holds no label names (expected a mapping of label values to names)", source)
    out: LabelSet = {}
    for key, value in data.items():
        if str(key).strip().lstrip("-").isdigit():  # value -> name
            name = value.get("name") if isinstance(value, dict) else value
            color = _color(value.get("color")) if isinstance(value, dict) else None
            index = int(key)
        elif isinstance(value, int) and not isinstance(value, bool):  # nnU-Net: name -> value
            name, color, index = key, None, value
        else:
            raise InputError(
                f"label {key!r}: {value!r} is neither a value->name nor a name->value entry"
                + (" (nnU-Net regions cannot be trained here)" if isinstance(value, list) else ""),
                source,
            )
        if index < 0 or not isinstance(name, str) or not name.strip():
            raise InputError(f"label {key!r} needs a non-negative value and a name", source)
        out[index] = (name.strip(), color)
    out.setdefault(0, ("background", (0, 0, 0)))
    return dict(sorted(out.items()))


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"not readable JSON ({str(err).splitlines()[0][:120]})", path) from None


def parse_labels_option(value: str) -> LabelSet:
    """``--labels``: a JSON file, or comma-separated names in index order from 1."""
    path = Path(value).expanduser()
    if value.lower().endswith(".json") or path.is_file():
        return _from_mapping(_read_json(path), path)
    names = [n.strip() for n in value.split(",")]
    if not names or any(not n for n in names):
        raise InputError("--labels needs names separated by commas, e.g. body,lungs,liver", value)
    if len(set(names)) != len(names):
        raise InputError("--labels names must be unique", value)
    return {0: ("background", (0, 0, 0)), **{i + 1: (n, None) for i, n in enumerate(names)}}


def find_label_set(data_dir: str | Path, label_files: list[Path], option: str | None = None) -> LabelSet | None:
    """The label set of a training folder (module docstring), or None when nothing names the labels."""
    if option:
        return parse_labels_option(option)
    data_dir = Path(data_dir)
    for name in ("labels.json", "dataset.json"):
        if (data_dir / name).is_file():
            return _from_mapping(_read_json(data_dir / name), data_dir / name)
    merged: LabelSet = {}
    first_of: dict[int, Path] = {}
    for label_path in label_files:
        sidecar = sidecar_of(label_path)
        if not sidecar.is_file():
            continue
        for index, (name, color) in _from_mapping(_read_json(sidecar), sidecar).items():
            if index in merged and merged[index][0] != name:
                raise InputError(
                    f"label {index} is '{name}' here but '{merged[index][0]}' in {first_of[index].name}; "
                    "relabel the cases consistently or give --labels",
                    sidecar,
                )
            merged.setdefault(index, (name, color))
            first_of.setdefault(index, sidecar)
    names = [n for n, _ in merged.values()]
    if len(set(names)) != len(names):
        raise InputError("the label sidecars give one name to two label values; give --labels", data_dir)
    return dict(sorted(merged.items())) or None
