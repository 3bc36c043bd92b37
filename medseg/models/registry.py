"""Find models by name or path and open them behind the model interface.

``open_model`` is the one door: a built-in model's name (``ct-anatomy``, weights-free), a shipped
model's name (``configs/models/<name>.yaml``), a ModelSpec YAML, a MONAI bundle folder, a
ModelSpec or an already opened :class:`~medseg.models.base.Model`. ``medseg models`` lists what
:func:`model_names` finds. Without a model, CT gets :data:`DEFAULT_MODEL`.
"""

from __future__ import annotations

from pathlib import Path

from medseg.errors import ModelError
from medseg.models.base import Model
from medseg.models.bundle import is_bundle
from medseg.models.ct_anatomy.model import CtAnatomyModel
from medseg.models.monai import BundleModel, MonaiModel
from medseg.models.spec import ModelSpec, load_spec

#: models that need no file: name -> class (opened with the device)
BUILTIN_MODELS: dict[str, type[Model]] = {"ct-anatomy": CtAnatomyModel}
#: what ``medseg infer`` runs without ``--model``: the weights-free CT model (it refuses non-CT scans)
DEFAULT_MODEL = "ct-anatomy"


def project_root() -> Path:
    return Path(__file__).resolve().parents[2]


def models_dir() -> Path:
    return project_root() / "configs" / "models"


def available_models() -> dict[str, Path]:
    """Shipped ModelSpec models by name (``configs/models/<name>.yaml``)."""
    folder = models_dir()
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))} if folder.is_dir() else {}


def model_names() -> list[str]:
    """Every model that opens by name: the built-in ones first, then the shipped ModelSpecs."""
    return [*BUILTIN_MODELS, *(n for n in available_models() if n not in BUILTIN_MODELS)]


def open_model(
    model: str | Path | ModelSpec | Model | None = None, device: str = "cpu", trust_bundle: bool = False
) -> Model:
    """The :class:`Model` for ``model`` on ``device`` (weights not loaded yet: :meth:`Model.load`).

    ``trust_bundle`` evaluates a MONAI bundle's config with MONAI's ConfigParser (runs its expressions).
    """
    if isinstance(model, Model):
        return model
    if isinstance(model, ModelSpec):
        return MonaiModel(model, device)
    name = str(model or DEFAULT_MODEL)
    if name in BUILTIN_MODELS:
        return BUILTIN_MODELS[name](device)
    known = available_models()
    if name in known:
        return MonaiModel(load_spec(known[name]), device)
    path = Path(name).expanduser()
    if path.is_dir():
        if is_bundle(path):
            return BundleModel(path, device, trust=trust_bundle)
        raise ModelError("is a folder; give a ModelSpec .yaml file or a MONAI bundle folder", path)
    if path.suffix.lower() in (".yaml", ".yml") or path.exists():
        return MonaiModel(load_spec(path), device)
    names = ", ".join(model_names())
    raise ModelError(f"unknown model (available: {names}; or give a path to a ModelSpec .yaml)", name)


def resolve_spec(model: str | Path | ModelSpec | None, trust_bundle: bool = False) -> ModelSpec:
    """The ModelSpec of a MONAI model (training and evaluation work on specs)."""
    opened = open_model(model, "cpu", trust_bundle)
    if not isinstance(opened, MonaiModel):
        raise ModelError(f"is a {opened.family} model; this command needs a MONAI ModelSpec", opened.name)
    return opened.spec
