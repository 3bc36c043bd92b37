"""napari sample data: a synthetic torso CT (HU) made by :mod:`medseg.phantom`, with or without its ground truth.

Generated on the fly (under a second), so it works from any install, with no files to download.
"""

from __future__ import annotations

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
