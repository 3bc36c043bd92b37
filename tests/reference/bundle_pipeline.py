"""A MONAI bundle's own inference pipeline, run by MONAI, as the reference medseg is compared with.

This **executes the bundle's config** (MONAI's ``ConfigParser`` instantiates its ``network_def``,
``preprocessing``, ``inferer`` and ``postprocessing``, running any ``$`` expression in them): use
it on bundles you trust, for parity tests and benchmarks only. medseg itself never calls it.

What runs is what the bundle's ``SupervisedEvaluator`` does for one image, without ignite: the
preprocessing transforms on ``{"image": path}``, the inferer over the network under ``no_grad``,
the postprocessing (activation, ``Invertd`` back to the image's grid, argmax) with its
``SaveImaged`` left out. Weights are loaded from ``models/model.pt`` with ``weights_only=True``.

Example:
    >>> labels = BundleReference("spleen_ct_segmentation")("ct.nii.gz")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from medseg.models.bundle import _WRITERS, _config_path, _short


class BundleReference:
    """A bundle's network, transforms and inferer, instantiated by MONAI once; call it on image paths."""

    def __init__(self, folder: str | Path) -> None:
        from monai.bundle import ConfigParser

        bundle = Path(folder).resolve()
        config_path = _config_path(bundle)
        parser = ConfigParser()
        parser.read_config(str(config_path))
        parser["bundle_root"] = str(bundle)
        post = parser.config.get("postprocessing")
        if isinstance(post, dict) and isinstance(post.get("transforms"), list):  # the writers left out
            kept = [
                t for t in post["transforms"] if not (isinstance(t, dict) and _short(t.get("_target_")) in _WRITERS)
            ]
            parser["postprocessing"] = {**post, "transforms": kept}
        self.network = parser.get_parsed_content("network_def").to("cpu")
        state = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
        self.network.load_state_dict(state)
        self.network.eval()
        self.preprocessing = parser.get_parsed_content("preprocessing")
        self.inferer = parser.get_parsed_content("inferer")
        if hasattr(self.inferer, "device"):  # a bundle asks for cuda:0 when it sees one; the reference runs on CPU
            self.inferer.device = None
            self.inferer.sw_device = None
        self.postprocessing = parser.get_parsed_content("postprocessing")

    def __call__(self, image: str | Path) -> np.ndarray:
        """Labels of ``image`` on its own grid (int16)."""
        data = self.preprocessing({"image": str(image)})
        with torch.no_grad():
            data["pred"] = self.inferer(data["image"][None].to("cpu"), self.network)[0]
        data = self.postprocessing(data)
        pred = data["pred"]
        pred = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
        if pred.ndim == 4 and pred.shape[0] == 1:
            pred = pred[0]
        elif pred.ndim == 4:  # postprocessing without argmax: take it here
            pred = pred.argmax(0)
        return np.rint(pred).astype(np.int16)


def write_bundle_from_spec(spec, folder: str | Path, postprocessing: str = "probabilities") -> Path:
    """Write a ModelSpec (network, preprocessing, windows, labels, weights) as a MONAI bundle folder.

    ``postprocessing``: ``probabilities`` (the spleen bundle's softmax -> ``Invertd`` -> argmax) or
    ``labels`` (the whole-body bundle's softmax -> argmax -> ``Invertd(nearest_interp=True)``).
    Used to build bundles with meaningful weights (the shipped models) for parity checks.
    """
    folder = Path(folder)
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(exist_ok=True)
    pp, inf, it = spec.preprocessing, spec.inference, spec.preprocessing.intensity
    transforms: list[dict] = [
        {"_target_": "LoadImaged", "keys": "image"},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": pp.orientation},
        {"_target_": "Spacingd", "keys": "image", "pixdim": [s or -1 for s in pp.spacing], "mode": "bilinear"},
    ]
    if it.kind == "ct_window":
        transforms.append(
            {
                "_target_": "ScaleIntensityRanged",
                "keys": "image",
                "a_min": it.a_min,
                "a_max": it.a_max,
                "b_min": it.b_min,
                "b_max": it.b_max,
                "clip": it.clip,
            }
        )
    elif it.kind == "zscore":
        transforms.append({"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": it.nonzero})
    if it.rescale is not None:
        transforms.append(
            {"_target_": "ScaleIntensityd", "keys": "image", "minv": it.rescale[0], "maxv": it.rescale[1]}
        )
    transforms.append({"_target_": "EnsureTyped", "keys": "image"})
    invert = {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image"}
    softmax = {"_target_": "Activationsd", "keys": "pred", "softmax": True}
    argmax = {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}
    if postprocessing == "probabilities":
        post = [softmax, {**invert, "nearest_interp": False, "to_tensor": True}, argmax]
    elif postprocessing == "labels":
        post = [softmax, argmax, {**invert, "nearest_interp": True, "to_tensor": True}]
    else:
        raise ValueError(f"postprocessing must be probabilities or labels, not {postprocessing!r}")
    post.append({"_target_": "SaveImaged", "keys": "pred", "output_dir": "$@bundle_root + '/eval'"})
    net = spec.network
    config = {
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": {
            "_target_": net.cls,
            "spatial_dims": net.spatial_dims,
            "in_channels": net.in_channels,
            "out_channels": net.out_channels,
            **net.kwargs,
        },
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": transforms},
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": list(inf.roi_size),
            "sw_batch_size": inf.sw_batch_size,
            "overlap": inf.overlap,
            "mode": inf.blend,
            "padding_mode": inf.padding_mode,
            "device": "@device",
        },
        "postprocessing": {"_target_": "Compose", "transforms": post},
    }
    metadata = {
        "name": f"{spec.name}-bundle",
        "version": spec.version or "0.1",
        "network_data_format": {
            "outputs": {
                "pred": {
                    "num_channels": net.out_channels,
                    "channel_def": {str(k): v.name for k, v in sorted(spec.labels.items())},
                }
            }
        },
    }
    (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2))
    state = torch.load(spec.weights_path(), map_location="cpu", weights_only=True)
    torch.save(state, folder / "models" / "model.pt")
    return folder
