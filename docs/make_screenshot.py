"""Make the README's "Review in napari" screenshot: the sample chest CT, segmented by the default model.

Runs medseg's own pipeline (ct-anatomy on CPU) and `medseg view`'s launcher, on Xvfb when there
is no display, and writes docs/napari_review.png (a small PNG, committed).

    python docs/make_screenshot.py [-o docs/napari_review.png]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "docs" / "napari_review.png")
    args = parser.parse_args()

    from medseg.inference.pipeline import infer_file
    from medseg.viewer.display import virtual_display

    scan = ROOT / "sample_data" / "chest_ct.nii.gz"
    with tempfile.TemporaryDirectory() as tmp:
        result = infer_file(scan, output=Path(tmp) / "chest_ct_seg.nii.gz", model="ct-anatomy", device="cpu")
        with virtual_display():
            from PIL import Image

            from medseg.viewer.launch import fit_window, open_viewer, save_screenshot

            viewer = open_viewer(scan, [result.labels_path], show=True)
            fit_window(viewer, (1200, 720))
            shot = save_screenshot(viewer, args.output)
            viewer.close()
    # a palette PNG keeps the file small; the screenshot has few distinct colours
    Image.open(args.output).convert("RGB").quantize(colors=128).save(args.output, optimize=True)
    print(f"wrote {args.output} ({shot.shape[1]}x{shot.shape[0]}, {args.output.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
