"""Each speed lever's effect on ``Segmenter.segment`` (preprocessing, windows, inversion, argmax), one
lever switched off at a time, in this process, on the cases of ``speed_vs_monai.py``.

Levers (medseg/inference/speed.py, host_memory.py, engine.py, invert.py): the fast host
allocator (vs strict), batch norms folded into convolutions, the timed window batch and
channels-last layout (vs the model's batch in the default layout), reuse of constant windows, the
running-maximum class argmax (vs ``torch.argmax(0)``, wherever labels are taken), the inversion
that interpolates only cells whose corners disagree (vs every class at every source voxel). Prints
the best of ``--repeats`` runs per configuration and its ratio to "all levers on".

    python benchmarks/speed_levers.py --repeats 3
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))  # tests.reference: the reference pipelines


def _configs():
    """(label, plan changes, unfolded network, slow paths); a batch of None is the model's own. Slow
    paths: ``argmax`` (torch.argmax), ``inversion`` (dense), ``reuse`` (no constant-window reuse)."""
    return [
        ("all levers on", {}, False, ()),
        ("strict host allocator", {"host_allocator": "strict"}, False, ()),
        ("batch norms not folded", {}, True, ()),
        ("model's window batch, default layout", {"channels_last": False, "sw_batch_size": None}, False, ()),
        ("no constant-window reuse", {}, False, ("reuse",)),
        ("torch.argmax(0)", {}, False, ("argmax",)),
        ("dense inversion (every class, every voxel)", {}, False, ("inversion",)),
        (
            "all off",
            {"host_allocator": "strict", "channels_last": False, "sw_batch_size": None},
            True,
            ("argmax", "inversion", "reuse"),
        ),
    ]


def run(name: str, scan: Path, spec, repeats: int) -> None:
    import numpy as np
    import torch

    from medseg.inference import engine
    from medseg.inference import invert as inv_module
    from medseg.inference.pipeline import Segmenter
    from medseg.io import read_volume
    from medseg.models.checkpoints import load_network
    from tests.reference import monai_full_buffer as reference

    seg = Segmenter(spec, "cpu", tune_allocator=True)  # as `medseg infer` runs it
    model = seg.model
    folded = model.network
    unfolded, _ = load_network(spec, "cpu")
    volume = read_volume(scan)
    plan = seg.plan_for(volume)
    fast = (inv_module._argmax_planes, inv_module.source_labels, engine.CONSTANT_WINDOW_MAX_BYTES)

    def torch_argmax(part, dtype=np.uint8):
        return part.argmax(0).to(torch.uint8 if dtype == np.uint8 else torch.int16)

    def dense_inversion(part, x, out_shape, inv, dtype):
        return inv_module.channel_argmax(reference.source_planes(part, x, out_shape, inv), dtype)

    results = []
    for label, changes, unfold, slow in _configs():
        changes = dict(changes)
        if changes.get("sw_batch_size", 0) is None:
            changes["sw_batch_size"] = spec.inference.sw_batch_size
        p = plan.replace(**changes)
        model.use_layout(False)
        model.network = unfolded if unfold else folded
        model.network.to(memory_format=torch.contiguous_format)
        if "argmax" in slow:
            inv_module._argmax_planes = torch_argmax
        if "inversion" in slow:
            inv_module.source_labels = dense_inversion
        if "reuse" in slow:  # no window's logits kept, so none is reused
            engine.CONSTANT_WINDOW_MAX_BYTES = 0
        try:
            seg.segment(volume, p)  # warm-up (oneDNN primitives for these shapes)
            best = float("inf")
            for _ in range(repeats):
                t = time.perf_counter()
                seg.segment(volume, p)
                best = min(best, time.perf_counter() - t)
        finally:
            inv_module._argmax_planes, inv_module.source_labels, engine.CONSTANT_WINDOW_MAX_BYTES = fast
        results.append((label, p, best))
    on = results[0][2]
    print(f"\n{name}: {volume.shape} voxels; plan: batch {plan.sw_batch_size}, channels_last {plan.channels_last}")
    print(f"  {'configuration':<44}{'seconds':>9}{'vs all on':>11}")
    for label, _, secs in results:
        print(f"  {label:<44}{secs:>9.2f}{secs / on:>10.2f}x")


def main() -> None:
    import speed_vs_monai as svm
    import torch

    from medseg.io import read_volume, write_nifti
    from medseg.models.networks import build_network
    from medseg.models.registry import resolve_spec
    from medseg.phantom import make_phantom

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(2)
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs; torch threads 2")
    print(f"date: {datetime.now(timezone.utc).isoformat(timespec='minutes')}")
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        w = Path(tmp) / "spleen.pt"
        torch.save(build_network(svm.spleen_like_spec(w)).state_dict(), w)
        phantom = ROOT / "sample_data" / "phantom_ct.nii.gz"
        run("phantom_ct + phantom-unet3d", phantom, resolve_spec(None), args.repeats)
        run("phantom_ct + spleen recipe", phantom, svm.spleen_like_spec(w), args.repeats)
        # a clinical CT's voxel size: the source grid is 17x the model's, so inversion weighs
        ct_like = Path(tmp) / "ct_like.nii.gz"
        write_nifti(make_phantom(7000, spacing=(0.8, 0.8, 2.5))[0], ct_like)
        run("phantom at 0.8x0.8x2.5 mm + phantom-unet3d", ct_like, resolve_spec(None), args.repeats)
        real = ROOT.parent / "shared" / "data" / "dicom" / "dcmqi" / "data" / "segmentations" / "ct-3slice"
        if real.is_dir():
            nii = Path(tmp) / "real_ct.nii.gz"
            write_nifti(read_volume(real), nii)
            run("real CT 512x512x3 + spleen recipe", nii, svm.spleen_like_spec(w), args.repeats)


if __name__ == "__main__":
    main()
