#!/usr/bin/env python
"""Make stand-in TotalSegmentator weights from the shipped nnU-Net phantom model, for offline parity tests.

TotalSegmentator's real weights cannot be downloaded here. The stand-ins are laid out exactly as
TotalSegmentator keeps its weights (a ``TOTALSEG_HOME_DIR``):

  OUT/nnunet/results/<TotalSegmentator's folder name>/<its trainer>__nnUNetPlans__3d_fullres/
      plans.json  dataset.json  fold_0/checkpoint_final.pth

for the ``total`` task's models: the five parts (291-295, 1.5 mm), ``fast`` (297, 3 mm) and
``fastest`` (298, 6 mm). Folder names, trainer folder names, label ids and names and spacings are
read from the installed ``totalsegmentator`` package (never copied).

Each stand-in is the shipped ``sample_data/models/nnunet-phantom`` fold 0 (trained by nnU-Net's own
planning and training on medseg phantoms at 3 mm, ``scripts/train_nnunet_phantom.py``) with

* the plans' 3d_fullres spacing set to the task's spacing (TotalSegmentator resamples the scan to it
  before nnU-Net, so nnU-Net's own resampling is a no-op, as with the real weights);
* its output head (the 1x1x1 ``seg_layers``) re-indexed to TotalSegmentator's class ids: the channel
  of a phantom structure becomes the channel of the class it stands for (``MAPPING``), every other
  class gets zero weights and a bias of -30 (never the largest logit; -30 x the Gaussian's 10 stays in
  float16); the phantom's "body" has no class: background's weights become the sum of the phantom's
  background and body weights (the head is linear, so its logit is the sum of theirs; measured on a
  fresh 3 mm phantom this keeps body tissue and outside air background, where dropping the body
  channel lets body tissue fall to the organ with the next-highest logit);
* ``trainer_name`` "nnUNetTrainer" (the folder keeps TotalSegmentator's trainer name: it finds the
  folder by it). TotalSegmentator's trainer variants differ from the stock class only in training; and
  on this machine nnU-Net's trainer lookup imports every trainer module, one of which imports
  torchvision, which cannot load beside the CPU build of torch ("operator torchvision::nms does not
  exist"), so a checkpoint naming ``nnUNetTrainerNoMirroring`` cannot be opened by nnU-Net's (and
  TotalSegmentator's) predictor here, while "nnUNetTrainer" is found first.

The labels they give are phantom structures under TotalSegmentator's names, not anatomy.

    python scripts/make_totalseg_standins.py [--out sample_data/models/totalseg-standins]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "sample_data/models/nnunet-phantom/Dataset501_Phantom/nnUNetTrainer__nnUNetPlans__3d_fullres"
#: phantom label -> TotalSegmentator class name, per model (phantom: 2 lungs, 3 liver, 4 spleen, 5 kidneys,
#: 6 spine, 7 aorta). Parts later in the merge order overwrite earlier ones, as in TotalSegmentator:
#: the muscles part's "spinal_cord" covers the vertebrae part's "vertebrae_L1" in the merged map.
MAPPING = {
    291: {2: "lung_upper_lobe_left", 3: "liver", 4: "spleen", 5: "kidney_left"},
    292: {6: "vertebrae_L1"},
    293: {7: "aorta"},
    294: {6: "spinal_cord"},
    295: {},
    297: {2: "lung_upper_lobe_left", 3: "liver", 4: "spleen", 5: "kidney_left", 6: "vertebrae_L1", 7: "aorta"},
    298: {2: "lung_upper_lobe_left", 3: "liver", 4: "spleen", 5: "kidney_left", 6: "vertebrae_L1", 7: "aorta"},
}
OFF_BIAS = -30.0
BODY = 1  # the phantom model's body channel


def task_table() -> dict[int, dict]:
    """Per model id: TotalSegmentator's folder name, trainer, spacing and class map (from its package)."""
    from totalsegmentator.map_tasks_config import TASK_CONFIGS, TASK_ID_WEIGHTS_CONFIGS
    from totalsegmentator.map_to_binary import class_map, class_map_5_parts, map_taskid_to_partname_ct

    out = {}
    for mode in TASK_CONFIGS["total"]["sub_modes"].values():
        ids = mode["task_id"] if isinstance(mode["task_id"], list) else [mode["task_id"]]
        for tid in ids:
            classes = class_map_5_parts[map_taskid_to_partname_ct[tid]] if len(ids) > 1 else class_map["total"]
            out[tid] = {
                "folder": TASK_ID_WEIGHTS_CONFIGS[tid]["foldername"],
                "trainer": mode["trainer"],
                "spacing": float(mode["resample"]),
                "classes": {int(k): v for k, v in classes.items()},
            }
    return out


def remap_head(weights: dict, mapping: dict[int, int], n_out: int) -> dict:
    """``weights`` with every seg layer re-indexed: new channel ``k`` = old channel ``mapping[k]``."""
    out = dict(weights)
    for key in [k for k in weights if ".seg_layers." in k]:
        old = weights[key]
        new = torch.zeros((n_out, *old.shape[1:]), dtype=old.dtype)
        if key.endswith(".bias"):
            new.fill_(OFF_BIAS)
        for k, src in mapping.items():
            new[k] = old[src]
        new[0] = old[0] + old[BODY]  # background = phantom background + body
        out[key] = new
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "sample_data" / "models" / "totalseg-standins")
    args = ap.parse_args()
    checkpoint = torch.load(SOURCE / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    plans = json.loads((SOURCE / "plans.json").read_text())
    dataset = json.loads((SOURCE / "dataset.json").read_text())
    results = args.out / "nnunet" / "results"
    if results.exists():
        shutil.rmtree(results)
    for tid, info in sorted(task_table().items()):
        inverse = {name: value for value, name in info["classes"].items()}
        mapping = {0: 0, **{inverse[name]: phantom for phantom, name in MAPPING[tid].items()}}
        dst = results / info["folder"] / f"{info['trainer']}__nnUNetPlans__3d_fullres"
        (dst / "fold_0").mkdir(parents=True)
        p = json.loads(json.dumps(plans))
        p["dataset_name"] = info["folder"]
        p["configurations"]["3d_fullres"]["spacing"] = [info["spacing"]] * 3
        (dst / "plans.json").write_text(json.dumps(p, indent=2))
        d = dict(dataset)
        d["labels"] = {"background": 0, **{name: value for value, name in sorted(info["classes"].items())}}
        d["name"] = info["folder"]
        d["description"] = (f"medseg stand-in for TotalSegmentator's {info['folder']}: the nnunet-phantom model "
                            f"with its head re-indexed ({MAPPING[tid]}); not TotalSegmentator's weights")  # fmt: skip
        (dst / "dataset.json").write_text(json.dumps(d, indent=2))
        ck = dict(checkpoint)
        ck["network_weights"] = remap_head(checkpoint["network_weights"], mapping, max(info["classes"]) + 1)
        ck["trainer_name"] = "nnUNetTrainer"
        torch.save(ck, dst / "fold_0" / "checkpoint_final.pth")
        print(f"{dst.relative_to(args.out)}: {len(info['classes'])} classes, {info['spacing']} mm, {MAPPING[tid]}")


if __name__ == "__main__":
    main()
