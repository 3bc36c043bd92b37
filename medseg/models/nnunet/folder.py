"""nnU-Net v2 results folders: find the configuration folder, its folds, and load checkpoints safely.

An nnU-Net v2 model is a ``Trainer__Plans__configuration`` folder holding ``plans.json``,
``dataset.json`` and ``fold_*/checkpoint_final.pth`` (``nnUNet_results/DatasetXXX_Name/...``;
TotalSegmentator keeps the same folders under ``~/.totalsegmentator/nnunet/results``).
:func:`resolve_folder` accepts that folder or a ``DatasetXXX_Name`` folder holding one such
configuration. :func:`load_checkpoint` opens a checkpoint with ``torch.load(weights_only=True)`` and
an allowlist of exactly the types nnU-Net writes (numpy scalars and dtypes, ``torch.device``);
anything else is refused unless the user trusts the file.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from medseg.errors import ModelError

CHECKPOINT = "checkpoint_final.pth"
_CONFIG_DIR = re.compile(r"^(?P<trainer>[^_].*?)__(?P<plans>.+?)__(?P<configuration>.+)$")


def is_configuration_folder(path: Path) -> bool:
    """``Trainer__Plans__configuration`` with plans.json and dataset.json."""
    return path.is_dir() and (path / "plans.json").is_file() and (path / "dataset.json").is_file()


def configuration_folders(path: Path) -> list[Path]:
    """The configuration folders directly inside a ``DatasetXXX_Name`` folder."""
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if _CONFIG_DIR.match(p.name) and is_configuration_folder(p))


def is_nnunet_folder(path: str | Path) -> bool:
    """An nnU-Net configuration folder, or a dataset folder holding at least one."""
    path = Path(path).expanduser()
    return is_configuration_folder(path) or bool(configuration_folders(path))


def resolve_folder(path: str | Path) -> Path:
    """The configuration folder for ``path``: itself, the single one in a dataset folder, or the single
    one in the dataset folders below ``path``."""
    path = Path(path).expanduser()
    if is_configuration_folder(path):
        return path
    found = configuration_folders(path)
    if not found and path.is_dir():  # a folder of dataset folders (an nnUNet_results, or a model's wrapper)
        found = [c for d in sorted(path.iterdir()) if d.is_dir() for c in configuration_folders(d)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise ModelError(
            "is not an nnU-Net v2 results folder (no plans.json and dataset.json, and no "
            "Trainer__Plans__configuration folder holding them)",
            path,
        )
    names = ", ".join(p.name for p in found)
    raise ModelError(f"holds several nnU-Net configurations ({names}); give one of them with --model", path)


def parse_name(folder: Path) -> dict[str, str]:
    """``{"trainer", "plans", "configuration"}`` from a ``Trainer__Plans__configuration`` folder name."""
    m = _CONFIG_DIR.match(folder.name)
    if not m:
        return {"trainer": "", "plans": "", "configuration": ""}
    return m.groupdict()


def available_folds(folder: Path, checkpoint: str = CHECKPOINT) -> list[int | str]:
    """Folds with a checkpoint, as nnU-Net numbers them (``all`` for a model trained on all cases)."""
    folds: list[int | str] = []
    for sub in sorted(folder.glob("fold_*")):
        if (sub / checkpoint).is_file():
            tail = sub.name[len("fold_") :]
            folds.append(int(tail) if tail.isdigit() else tail)
    return sorted(folds, key=lambda f: (isinstance(f, str), f))


def parse_folds(text: str | None) -> list[int | str] | None:
    """``"0,1"`` / ``"0 1"`` / ``"all"`` -> folds; None or empty -> None (every fold present)."""
    if text is None or not str(text).strip():
        return None
    out: list[int | str] = []
    for part in re.split(r"[,\s]+", str(text).strip()):
        if part:
            out.append(int(part) if part.isdigit() else part)
    return out


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _allowed_globals() -> list[Any]:
    """Exactly what nnU-Net's trainer pickles besides tensors and builtins: numpy scalars (epoch
    logs, EMA of the Dice), their dtypes, and the ``torch.device`` in ``init_args``."""
    import numpy as np
    import torch

    allowed: list[Any] = [np.dtype, torch.device]
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    allowed.append(scalar)
    for name in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "BoolDType"):
        dtype_class = getattr(np.dtypes, name, None)
        if dtype_class is not None:
            allowed.append(dtype_class)
    return allowed


def load_checkpoint(path: Path, trust: bool = False) -> dict[str, Any]:
    """An nnU-Net checkpoint's dict, loaded with ``weights_only=True`` and nnU-Net's allowlist.

    ``trust`` unpickles it fully (``weights_only=False``: code in the file runs), for checkpoints
    written by trainers that store other objects.
    """
    import pickle

    import torch

    if not path.is_file():
        raise ModelError("checkpoint not found", path)
    try:
        if trust:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(_allowed_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(
            f"checkpoint holds objects beyond nnU-Net's own (tensors, numpy scalars, torch.device) and was "
            f"not unpickled ({first[:160]}); pass --trust-checkpoint if you trust this file (it may run code)",
            path,
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise ModelError(f"is not a readable PyTorch checkpoint ({str(err).splitlines()[0][:160]})", path) from err
