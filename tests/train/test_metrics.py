import math

import numpy as np

from medseg.train.metrics import hd95, label_metrics


def test_dice_iou_known_values():
    gt = np.zeros((10, 10, 10), np.uint8)
    pred = np.zeros_like(gt)
    gt[2:6, 2:6, 2:6] = 1  # 64 voxels
    pred[2:6, 2:6, 4:8] = 1  # 64 voxels, 32 overlap
    row = label_metrics(pred, gt, {1: "cube"}, (1.0, 1.0, 1.0))[0]
    assert math.isclose(row["dice"], 0.5)
    assert math.isclose(row["iou"], 32 / 96)


def test_hd95_shift_in_mm():
    gt = np.zeros((20, 20, 20), bool)
    gt[5:15, 5:15, 5:15] = True
    pred = np.roll(gt, 2, axis=0)
    assert math.isclose(hd95(pred, gt, (1.5, 1.0, 1.0)), 3.0)
    assert math.isnan(hd95(np.zeros_like(gt), gt, (1, 1, 1)))


def test_missing_structure_scores_zero_not_nan():
    gt = np.zeros((5, 5, 5), np.uint8)
    gt[1:3, 1:3, 1:3] = 2
    row = label_metrics(np.zeros_like(gt), gt, {2: "x"}, (1, 1, 1))[0]
    assert row["dice"] == 0.0
