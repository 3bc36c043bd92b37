"""The label table of ``ct-anatomy``: indices, names, colours and SNOMED CT concepts.

Labels are exclusive and their union is the body (patient) mask. ``body`` holds the body tissue no
other label claims (organs, vessels, skin, ...).
"""

from __future__ import annotations

BACKGROUND = 0
BODY = 1
LUNG_LEFT = 2
LUNG_RIGHT = 3
AIRWAY = 4
BONE = 5
SUBCUTANEOUS_FAT = 6
TORSO_FAT = 7
SKELETAL_MUSCLE = 8

NAMES: dict[int, str] = {
    BACKGROUND: "background",
    BODY: "body",
    LUNG_LEFT: "lung_left",
    LUNG_RIGHT: "lung_right",
    AIRWAY: "airway",
    BONE: "bone",
    SUBCUTANEOUS_FAT: "subcutaneous_fat",
    TORSO_FAT: "torso_fat",
    SKELETAL_MUSCLE: "skeletal_muscle",
}
