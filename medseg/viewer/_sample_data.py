"""napari sample data: the shipped real chest CT, and a synthetic torso CT (HU) made by :mod:`medseg.phantom`
with or without its ground truth.

The phantom is generated on the fly (under a second), so it works from any install, with no files to
download; the chest CT is ``sample_data/chest_ct.nii.gz`` of the medseg checkout (licence beside it).
"""

from __future__ import annotations

from pathlib import Path

CHEST_CT = Path(__file__).resolve().parents[2] / "sample_data" / "chest_ct.nii.gz"

SAMPLE_SEED = 7
SAMPLE_GRID = {"axcodes": "LPS", "spacing": (2.5, 2.5, 4.0), "oblique": False}


def _phantom():
    from medseg.phantom import make_phantom

    image, labels = make_phantom(SAMPLE_SEED, **SAMPLE_GRID)
    for volume in (image, labels):
        volume.meta["source"] = f"phantom seed {SAMPLE_SEED}"
    return image, labels


def phantom_ct() -> list[tuple]:
    """The phantom CT alone, ready for the medseg widget's Segment button."""
    from medseg.viewer.layers import image_layer_data

    image, _ = _phantom()
    return [image_layer_data(image, name="phantom CT")]


def phantom_ct_with_labels() -> list[tuple]:
    """The phantom CT and its exact ground-truth labels, named and coloured like medseg's models."""
    from medseg.phantom import LABELS
    from medseg.viewer.layers import image_layer_data, labels_layer_data

    image, labels = _phantom()
    info = {0: ("background", (0, 0, 0)), **{k: (name, rgb) for k, (name, rgb) in LABELS.items()}}
    return [
        image_layer_data(image, name="phantom CT"),
        labels_layer_data(labels, name="phantom ground truth", info=info),
    ]


def chest_ct() -> list[tuple]:
    """The shipped real chest CT (ChestImagingPlatform TestInput, 64 x 64 x 50, HU), for ``ct-anatomy``."""
    from medseg.errors import InputError
    from medseg.io.registry import read_volume
    from medseg.viewer.layers import image_layer_data

    if not CHEST_CT.exists():
        raise InputError("the sample chest CT ships with the medseg source tree, not in this install", CHEST_CT)
    return [image_layer_data(read_volume(CHEST_CT), name="chest CT")]
