"""Find model specs by name and build their MONAI networks."""

from __future__ import annotations

import inspect
from pathlib import Path

from medseg.errors import ModelError
from medseg.models.spec import ModelSpec, load_spec

#: networks a spec may name; all take (spatial_dims, in_channels, out_channels, ...)
NETWORKS = ("UNet", "BasicUNet", "SegResNet", "DynUNet", "AttentionUnet", "UNETR", "SwinUNETR", "FlexibleUNet")
DEFAULT_MODEL = "phantom-unet3d"


def project_root() -> Path:
    return Path(__file__).resolve().parents[2]


def models_dir() -> Path:
    return project_root() / "configs" / "models"


def available_models() -> dict[str, Path]:
    """Shipped model specs by name (``configs/models/<name>.yaml``)."""
    folder = models_dir()
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))} if folder.is_dir() else {}


def resolve_spec(model: str | Path | ModelSpec | None, trust_bundle: bool = False) -> ModelSpec:
    """A ModelSpec from a name in ``configs/models``, a YAML path, a MONAI bundle folder, or a spec object.

    ``trust_bundle`` evaluates a bundle's config with MONAI's ConfigParser (runs its expressions).
    """
    if isinstance(model, ModelSpec):
        return model
    model = str(model or DEFAULT_MODEL)
    known = available_models()
    if model in known:
        return load_spec(known[model])
    path = Path(model).expanduser()
    if path.suffix.lower() in (".yaml", ".yml") or path.exists():
        if path.is_dir():
            from medseg.models.bundle import is_bundle, spec_from_bundle

            if is_bundle(path):
                return spec_from_bundle(path, trust=trust_bundle)
            raise ModelError("is a folder; give a ModelSpec .yaml file or a MONAI bundle folder", path)
        return load_spec(path)
    names = ", ".join(known) or "none installed"
    raise ModelError(f"unknown model (available: {names}; or give a path to a ModelSpec .yaml)", model)


def build_network(spec: ModelSpec):
    """Instantiate the spec's MONAI network (random weights)."""
    from monai.networks import nets

    net_spec = spec.network
    if net_spec.cls not in NETWORKS:
        raise ModelError(
            f"network class {net_spec.cls!r} is not supported (choose from {', '.join(NETWORKS)})", spec.name
        )
    factory = getattr(nets, net_spec.cls)
    kwargs = dict(net_spec.kwargs)
    params = inspect.signature(factory).parameters
    if "spatial_dims" in params:
        kwargs["spatial_dims"] = net_spec.spatial_dims
    kwargs["in_channels"] = net_spec.in_channels
    kwargs["out_channels"] = net_spec.out_channels
    try:
        return factory(**kwargs)
    except (TypeError, ValueError, AssertionError) as err:
        raise ModelError(f"cannot build {net_spec.cls}: {err}", spec.name) from None
