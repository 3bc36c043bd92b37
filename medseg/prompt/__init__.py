"""Click-to-segment without weights: prompts (points, boxes) -> a mask on the image's exact grid.

    >>> from medseg.prompt import segment_from_prompts  # doctest: +SKIP
    >>> mask = segment_from_prompts(volume, positive=[(120, 140, 60)], negative=[(150, 140, 60)])  # doctest: +SKIP

:mod:`medseg.prompt.prompts` parses and checks prompts (RAS mm -> voxel through the affine),
:mod:`medseg.prompt.grow` is the method, :mod:`medseg.prompt.labelfile` writes the mask as a new or
added named label.
"""

from medseg.prompt.grow import PromptResult, PromptSegmenter, segment_from_prompts
from medseg.prompt.prompts import Box, PromptError, Prompts, parse_box, parse_voxel, world_to_voxel

__all__ = [
    "Box",
    "PromptError",
    "PromptResult",
    "PromptSegmenter",
    "Prompts",
    "parse_box",
    "parse_voxel",
    "segment_from_prompts",
    "world_to_voxel",
]
