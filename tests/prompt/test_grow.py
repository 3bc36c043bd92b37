"""The weights-free prompt segmenter on phantoms with exact references and on synthetic shapes.

Bars: measured on the development VM (liver 0.953, spleen 0.991, kidney 0.992, aorta 0.986 on the
LPS 3x3x4 mm phantom; kidney 0.995 on an oblique PSR 2.5x2.5x4 mm one), less a margin of ~0.05.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from medseg.prompt import PromptError, Prompts, PromptSegmenter, segment_from_prompts
from medseg.volume import Volume


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def _target(labels: Volume, index: int, spacing) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The largest part of a structure and its centre (the voxel farthest from its edge, in mm)."""
    lab, _ = ndi.label(labels.array == index)
    ref = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    depth = ndi.distance_transform_edt(ref, sampling=spacing)
    return ref, tuple(int(v) for v in np.unravel_index(np.argmax(depth), ref.shape))


@pytest.mark.parametrize("index, name, bar", [(3, "liver", 0.90), (4, "spleen", 0.93), (5, "kidney", 0.93)])
def test_one_click_dice_on_phantom(phantom_pair, index, name, bar):
    image, labels = phantom_pair
    ref, centre = _target(labels, index, image.spacing)
    mask = segment_from_prompts(image, [centre])
    assert mask.shape == image.shape and mask.dtype == bool
    assert dice(mask, ref) >= bar, name


@pytest.fixture(scope="module")
def oblique_phantom():
    from medseg.phantom import make_phantom

    return make_phantom(5, axcodes="PSR", spacing=(2.5, 2.5, 4.0), oblique=True)


def test_oblique_anisotropic_phantom(oblique_phantom):
    image, labels = oblique_phantom
    assert image.meta["phantom_geometry"]["oblique_deg"] > 0
    ref, centre = _target(labels, 5, image.spacing)
    assert dice(segment_from_prompts(image, [centre]), ref) >= 0.93


def _dumbbell(spacing=(1.0, 1.0, 2.0)) -> Volume:
    """Two same-intensity blocks joined by a neck, in a darker background, with noise."""
    rng = np.random.default_rng(0)
    array = np.full((60, 40, 20), 0.0, np.float32)
    array[5:28, 8:32, 4:16] = 100.0
    array[32:55, 8:32, 4:16] = 100.0
    array[28:32, 14:26, 6:14] = 100.0
    array += rng.normal(0, 5, array.shape).astype(np.float32)
    return Volume(array, np.diag([*spacing, 1.0]), {"modality": "MR"})


def test_negative_prompt_keeps_the_touching_part_out():
    volume = _dumbbell()
    left, right = (15, 20, 10), (45, 20, 10)
    both = segment_from_prompts(volume, [left])
    assert both[right]  # same intensity, touching: one region without a negative click
    mask = segment_from_prompts(volume, [left], negative=[right])
    assert mask[left] and not mask[right]
    assert not mask[34:, :, :].any()
    assert mask[5:28, 8:32, 4:16].mean() > 0.95


def test_box_limits_the_mask():
    volume = _dumbbell()
    mask = segment_from_prompts(volume, [(15, 20, 10)], box=(0, 0, 0, 40, 39, 19))
    assert mask[15, 20, 10] and mask[38, 20, 10] and not mask[41:].any()


def test_segmenter_reuses_its_work_region(phantom_pair):
    image, labels = phantom_pair
    _, centre = _target(labels, 4, image.spacing)
    seg = PromptSegmenter(image)
    first = seg.segment(Prompts.of([centre]))
    cached = len(seg._work)
    again = seg.segment(Prompts.of([centre]))
    assert np.array_equal(first, again) and len(seg._work) == cached


def test_click_in_air_outside_the_body_is_refused(phantom_pair):
    image, _ = phantom_pair
    with pytest.raises(PromptError, match="air outside the body"):
        segment_from_prompts(image, [(1, 1, 1)])


def test_click_in_lung_is_not_air(phantom_pair):
    image, labels = phantom_pair
    ref, centre = _target(labels, 2, image.spacing)
    assert dice(segment_from_prompts(image, [centre]), ref) >= 0.95


def test_from_labels_takes_the_component_under_the_click(phantom_pair):
    image, labels = phantom_pair
    ref, centre = _target(labels, 5, image.spacing)
    mask = segment_from_prompts(image, [centre], labels=labels.array)
    assert np.array_equal(mask, ref)
    with pytest.raises(PromptError, match="no label under"):
        segment_from_prompts(image, [(1, 1, 1)], labels=labels.array)
