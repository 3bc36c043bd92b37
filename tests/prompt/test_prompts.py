"""Prompt parsing, RAS mm -> voxel conversion on LPS/oblique grids, and the checks that refuse bad prompts."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.prompt.prompts import (
    Box,
    PromptError,
    Prompts,
    check_prompts,
    parse_box,
    parse_numbers,
    parse_voxel,
    voxel_to_world,
    world_to_voxel,
)
from medseg.volume import Volume


def _volume(affine: np.ndarray, shape=(20, 30, 10)) -> Volume:
    return Volume(np.zeros(shape, np.int16), affine)


def _oblique_lps() -> np.ndarray:
    angle = np.deg2rad(20)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ rot @ np.diag([0.8, 0.8, 3.0])
    affine[:3, 3] = [50.0, -20.0, 100.0]
    return affine


def test_parse_voxel_and_box():
    assert parse_voxel("1,2,3") == (1, 2, 3)
    assert parse_voxel(" 4 5 6 ") == (4, 5, 6)
    assert parse_box("5,6,7,1,2,3") == Box((1, 2, 3), (5, 6, 7))
    assert parse_numbers("-1.5,2,3e1", 3, "point") == (-1.5, 2.0, 30.0)


@pytest.mark.parametrize("text", ["1,2", "1,2,3,4", "a,b,c", "1,2,nan", "1.5,2,3"])
def test_bad_voxel_text(text):
    with pytest.raises(PromptError, match="voxel"):
        parse_voxel(text)


def test_bad_box_text():
    with pytest.raises(PromptError, match="box"):
        parse_box("1,2,3,4,5")


@pytest.mark.parametrize("affine", [np.diag([-2.0, -2.0, 3.0, 1.0]), np.diag([1.0, 1.5, 4.0, 1.0]), _oblique_lps()])
def test_world_to_voxel_round_trip(affine):
    volume = _volume(affine)
    for ijk in [(0, 0, 0), (3, 17, 9), (19, 29, 0)]:
        assert world_to_voxel(volume, voxel_to_world(volume, ijk)) == ijk


def test_world_to_voxel_on_lps_grid():
    # LPS: i grows to the patient's left (RAS x decreases); the origin voxel sits at x=+10
    volume = _volume(np.array([[-2.0, 0, 0, 10.0], [0, -2.0, 0, 20.0], [0, 0, 3.0, -30.0], [0, 0, 0, 1]]))
    assert world_to_voxel(volume, (10.0, 20.0, -30.0)) == (0, 0, 0)
    assert world_to_voxel(volume, (4.0, 14.0, -21.0)) == (3, 3, 3)
    assert world_to_voxel(volume, (4.9, 14.0, -21.0)) == (3, 3, 3)  # nearest voxel centre


def test_world_to_voxel_oblique_matches_affine_inverse():
    affine = _oblique_lps()
    volume = _volume(affine)
    xyz = (affine @ np.array([7.2, 11.8, 4.4, 1.0]))[:3]
    assert world_to_voxel(volume, xyz) == (7, 12, 4)


def test_check_prompts_errors():
    volume = _volume(np.diag([-2.0, -2.0, 3.0, 1.0]))
    check_prompts(volume, Prompts.of([(1, 2, 3)], [(4, 5, 6)], (0, 0, 0, 10, 10, 5)))
    with pytest.raises(PromptError, match="outside the image"):
        check_prompts(volume, Prompts.of([(20, 2, 3)]))
    with pytest.raises(PromptError, match="negative prompt .* outside the image"):
        check_prompts(volume, Prompts.of([(1, 2, 3)], [(-1, 0, 0)]))
    with pytest.raises(PromptError, match="zero size along axis 2"):
        check_prompts(volume, Prompts.of([(1, 2, 3)], box=(0, 0, 3, 10, 10, 3)))
    with pytest.raises(PromptError, match="outside the box"):
        check_prompts(volume, Prompts.of([(15, 2, 3)], box=(0, 0, 0, 10, 10, 5)))
    with pytest.raises(PromptError, match="on a positive prompt"):
        check_prompts(volume, Prompts.of([(1, 2, 3)], [(1, 2, 3)]))
    with pytest.raises(PromptError, match="no positive prompt"):
        check_prompts(volume, Prompts.of([]))


def test_error_is_one_line_naming_the_place():
    volume = _volume(np.diag([-2.0, -2.0, 3.0, 1.0]))
    with pytest.raises(PromptError) as info:
        check_prompts(volume, Prompts.of([(25, 2, 3)]))
    assert "\n" not in str(info.value) and "25,2,3" in str(info.value) and "RAS" in str(info.value)
