"""Find models by name or path and open them behind the model interface.

``open_model`` is the one door: a built-in model's name (``ct-anatomy``, weights-free), a shipped
model's name (``configs/models/<name>.yaml``), a ModelSpec YAML or a folder holding one as
``model.yaml`` (a ``medseg train`` run), a MONAI bundle folder, a
ModelSpec or an already opened :class:`~medseg.models.base.Model`. ``medseg models`` lists what
:func:`model_names` finds. Without a model, CT gets :data:`DEFAULT_MODEL`.
"""

from __future__ import annotations

from pathlib import Path

from medseg.errors import ModelError, OptionError
from medseg.models.base import Model
from medseg.models.bundle import is_bundle
from medseg.models.ct_anatomy.model import CtAnatomyModel
from medseg.models.monai import BundleModel, MonaiModel
from medseg.models.nnunet import NnUNetModel, is_nnunet_folder
from medseg.models.spec import ModelSpec, load_spec
from medseg.models.totalsegmentator import PREFIX as TOTALSEG_PREFIX
from medseg.models.totalsegmentator import TotalSegmentatorModel, available_tasks

#: models that need no file: name -> class (opened with the device)
BUILTIN_MODELS: dict[str, type[Model]] = {"ct-anatomy": CtAnatomyModel}
#: the ModelSpec inside a model folder (``medseg train`` writes RUN/model.yaml beside its weights)
SPEC_FILE = "model.yaml"
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


def nnunet_roots() -> list[Path]:
    """Where ``medseg models`` looks for nnU-Net v2 folders: ``sample_data/models`` and the folders in
    ``$MEDSEG_NNUNET_MODELS`` (``os.pathsep``-separated, e.g. an ``nnUNet_results`` folder)."""
    import os

    roots = [project_root() / "sample_data" / "models"]
    roots += [Path(p).expanduser() for p in os.environ.get("MEDSEG_NNUNET_MODELS", "").split(os.pathsep) if p]
    return roots


def nnunet_models() -> dict[str, Path]:
    """nnU-Net v2 folders by name: ``<folder>`` for a folder under a root holding one configuration
    (``sample_data/models/nnunet-phantom``), ``<Dataset>/<Trainer__Plans__conf>`` for the rest."""
    from medseg.models.nnunet.folder import configuration_folders, is_configuration_folder

    found: dict[str, Path] = {}
    for root in nnunet_roots():
        if not root.is_dir():
            continue
        for top in sorted(p for p in root.iterdir() if p.is_dir()):
            if is_configuration_folder(top):
                configs = [top]
            else:  # a dataset folder, or a folder of dataset folders (an nnUNet_results)
                configs = configuration_folders(top)
                configs += [c for d in sorted(top.iterdir()) if d.is_dir() for c in configuration_folders(d)]
            if len(configs) == 1:
                found.setdefault(top.name, configs[0])
            else:
                for c in configs:
                    found.setdefault(f"{c.parent.name}/{c.name}", c)
    return found


def model_names() -> list[str]:
    """Every model that opens by name: the built-in ones first, then the shipped ModelSpecs, then
    the nnU-Net v2 folders found (:func:`nnunet_models`), then the TotalSegmentator tasks whose
    weights are on this machine (``totalsegmentator:TASK``)."""
    names = [*BUILTIN_MODELS, *(n for n in available_models() if n not in BUILTIN_MODELS)]
    return names + [n for n in nnunet_models() if n not in names] + available_tasks()


#: the command-line flag of each of ``open_model``'s ``options``
OPTION_FLAGS = {
    "folds": "--folds",
    "tta": "--tta/--no-tta",
    "step_size": "--step-size",
    "roi_subset": "--roi-subset",
    "trust_checkpoint": "--trust-checkpoint",
    "precision": "--precision",
}
#: the options each family takes; a family without windows of MONAI's takes no ``--overlap``
FAMILY_OPTIONS: dict[str, frozenset[str]] = {
    "nnunet-v2": frozenset({"folds", "tta", "step_size", "trust_checkpoint", "precision"}),
    "totalsegmentator": frozenset({"roi_subset", "trust_checkpoint", "precision"}),
    "monai-spec": frozenset(),
    "monai-bundle": frozenset(),
    "classical": frozenset(),
}
_FOR = {
    "folds": "nnU-Net v2 folders",
    "tta": "nnU-Net v2 folders",
    "step_size": "nnU-Net v2 folders",
    "roi_subset": "TotalSegmentator tasks (--model totalsegmentator:TASK)",
    "trust_checkpoint": "nnU-Net v2 folders and TotalSegmentator tasks (MONAI checkpoints always load tensors only)",
    "precision": "nnU-Net v2 folders and TotalSegmentator tasks (a ModelSpec's precision is in its inference section)",
}


def given_options(options: dict | None) -> dict:
    """The options actually given: the CLI passes every option, unset ones as None (the flag
    ``trust_checkpoint`` as False; ``tta=False`` is ``--no-tta``, given)."""
    return {
        k: v
        for k, v in (options or {}).items()
        if v is not None and v != [] and not (k == "trust_checkpoint" and v is False)
    }


def check_model_options(model: Model, options: dict | None = None, overlap: float | None = None) -> None:
    """Refuse, by name, an option ``model``'s family does not take (:class:`~medseg.errors.OptionError`).

    ``overlap`` is MONAI's sliding-window overlap: an nnU-Net folder or TotalSegmentator task tiles by its step
    size (overlap = 1 - step), and a classical model has no windows.
    """
    takes = FAMILY_OPTIONS.get(model.family, frozenset(OPTION_FLAGS))
    for key in given_options(options):
        if key not in takes:
            flag = OPTION_FLAGS.get(key, key)
            raise OptionError(
                f"{flag} is for {_FOR.get(key, 'other models')}; {model.name} ({model.family}) takes no {flag}"
            )
    if overlap is not None and model.family not in ("monai-spec", "monai-bundle"):
        if model.family == "nnunet-v2":
            raise OptionError(
                f"--overlap is MONAI's window overlap; {model.name} (nnU-Net v2) tiles by --step-size "
                f"(overlap = 1 - step: --step-size {1 - overlap:g} for --overlap {overlap:g})"
            )
        raise OptionError(f"--overlap is MONAI's window overlap; {model.name} ({model.family}) takes no --overlap")


def open_model(
    model: str | Path | ModelSpec | Model | None = None,
    device: str = "cpu",
    trust_bundle: bool = False,
    options: dict | None = None,
) -> Model:
    """The :class:`Model` for ``model`` on ``device`` (weights not loaded yet: :meth:`Model.load`).

    ``trust_bundle`` evaluates a MONAI bundle's config with MONAI's ConfigParser (runs its expressions).
    ``options`` go to an nnU-Net v2 model (``folds``, ``tta``, ``step_size``, ``trust_checkpoint``) or a
    TotalSegmentator task (``totalsegmentator:TASK``; ``roi_subset``, ``trust_checkpoint``).
    """
    if isinstance(model, Model):
        check_model_options(model, options)
        return model
    opened = _open_model(model, device, trust_bundle, options)
    check_model_options(opened, options)
    return opened


def _open_model(model, device: str, trust_bundle: bool, options: dict | None) -> Model:
    if isinstance(model, ModelSpec):
        return MonaiModel(model, device)
    name = str(model or DEFAULT_MODEL)
    if name.startswith(TOTALSEG_PREFIX):
        return TotalSegmentatorModel(name, device, **(options or {}))
    if name in BUILTIN_MODELS:
        return BUILTIN_MODELS[name](device)
    known = available_models()
    if name in known:
        return MonaiModel(load_spec(known[name]), device)
    nnunet = nnunet_models() if not Path(name).expanduser().exists() else {}
    if name in nnunet:
        return NnUNetModel(nnunet[name], device, name=name, **(options or {}))
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / SPEC_FILE).is_file():  # a ModelSpec folder, e.g. what `medseg train` writes
            return MonaiModel(load_spec(path / SPEC_FILE), device)
        if is_bundle(path):
            return BundleModel(path, device, trust=trust_bundle)
        if is_nnunet_folder(path):
            return NnUNetModel(path, device, **(options or {}))
        raise ModelError(
            f"is a folder; give a ModelSpec .yaml file, a folder with a {SPEC_FILE} (a `medseg train` run), "
            "a MONAI bundle folder or an nnU-Net v2 results folder",
            path,
        )
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
