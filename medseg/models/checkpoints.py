"""Loading weights safely: hash check first, ``weights_only=True`` for pickles, TorchScript supported.

A checkpoint that needs arbitrary code to unpickle is refused with a clear error, never executed.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from medseg.errors import ModelError
from medseg.io.atomic import sha256_of as sha256_of  # re-exported for existing importers
from medseg.models.networks import build_network
from medseg.models.spec import ModelSpec


def is_torchscript(path: Path) -> bool:
    """TorchScript archives carry a ``code/`` folder and ``constants.pkl``; state dicts do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return any("/code/" in n or n.startswith("code/") for n in names) and any(
        n.endswith("constants.pkl") for n in names
    )


def extract_state_dict(obj: object) -> dict:
    """Accept a bare state dict or the usual wrappers (``state_dict``, ``model``, ``network``)."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "network", "model_state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(k, str) for k in inner):
                return extract_state_dict(inner)
        if obj and all(isinstance(k, str) for k in obj):
            if all(isinstance(v, torch.Tensor) for v in obj.values()):
                prefix = "module."
                if all(k.startswith(prefix) for k in obj):
                    return {k[len(prefix) :]: v for k, v in obj.items()}
                return dict(obj)
    raise ModelError("checkpoint holds no state dict (expected a mapping of parameter names to tensors)")


def load_state_dict_file(path: Path) -> dict:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = str(err).split("\n")[0][:200]
        raise ModelError(
            f"checkpoint needs code execution to unpickle and was refused (weights_only=True): {detail}. "
            "Re-save it as a plain state_dict",
            path,
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise ModelError(f"not a readable PyTorch checkpoint ({str(err).splitlines()[0][:160]})", path) from None
    try:
        return extract_state_dict(obj)
    except ModelError as err:
        raise ModelError(err.problem, path) from None


def verify_sha256(path: Path, expected: str | None) -> str:
    actual = sha256_of(path)
    if expected and actual.lower() != expected.lower():
        raise ModelError(f"weights sha256 mismatch: expected {expected[:12]}..., file has {actual[:12]}...", path)
    return actual


def load_network(spec: ModelSpec, device: str = "cpu"):
    """Build the spec's network and load its weights (verified). Returns ``(module, sha256)``."""
    path = spec.weights_path()
    if path is None:
        raise ModelError("model spec has no weights", spec.name)
    if not path.is_file():
        raise ModelError("weights file not found", path)
    digest = verify_sha256(path, spec.weights.sha256 if spec.weights else None)
    fmt = spec.weights.format if spec.weights else "auto"
    if fmt == "torchscript" or (fmt == "auto" and is_torchscript(path)):
        try:
            net = torch.jit.load(str(path), map_location=device)
        except RuntimeError as err:
            raise ModelError(f"not a loadable TorchScript file ({str(err).splitlines()[0][:160]})", path) from None
        return net.eval(), digest
    net = build_network(spec)
    problem = f"checkpoint does not fit network {spec.network.cls} of spec '{spec.name}'"
    load_state_strictly(net, load_state_dict_file(path), problem, path)
    return net.to(device).eval(), digest


def load_state_strictly(net: torch.nn.Module, state: dict, problem: str, where) -> None:
    """``net.load_state_dict(state, strict=True)``; a mismatch is a :class:`ModelError` saying
    ``problem`` and the first two lines of torch's list of missing/unexpected/misshapen keys."""
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        detail = "; ".join(lines[1:3]) if len(lines) > 1 else lines[0]
        raise ModelError(f"{problem}: {detail[:300]}", where) from None
