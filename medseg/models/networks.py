"""The MONAI network classes a ModelSpec may name, built from the spec (random weights)."""

from __future__ import annotations

import inspect

from medseg.errors import ModelError
from medseg.models.spec import ModelSpec

#: networks a spec may name; all take (spatial_dims, in_channels, out_channels, ...)
NETWORKS = ("UNet", "BasicUNet", "SegResNet", "DynUNet", "AttentionUnet", "UNETR", "SwinUNETR", "FlexibleUNet")


def build_network(spec: ModelSpec):
    """Instantiate the spec's MONAI network (random weights)."""
    net_spec = spec.network
    if net_spec.cls not in NETWORKS:
        raise ModelError(
            f"network class {net_spec.cls!r} is not supported (choose from {', '.join(NETWORKS)})", spec.name
        )
    from monai.networks import nets  # on use: listing models and nnU-Net runs never load MONAI

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
