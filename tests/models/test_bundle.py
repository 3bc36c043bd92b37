"""MONAI Model Zoo bundles (written here in the zoo layout) map onto ModelSpecs without running code."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medseg.errors import ModelError
from medseg.models.bundle import is_bundle, spec_from_bundle
from medseg.models.networks import build_network
from medseg.models.registry import resolve_spec

SPLEEN = {
    "imports": ["$import glob", "$import os"],
    "bundle_root": ".",
    "output_dir": "$@bundle_root + '/eval'",
    "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
    "network_def": {
        "_target_": "UNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 2,
        "channels": [16, 32, 64, 128, 256],
        "strides": [2, 2, 2, 2],
        "num_res_units": 2,
        "norm": "batch",
    },
    "network": "$@network_def.to(@device)",
    "preprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"},
            {
                "_target_": "ScaleIntensityRanged",
                "keys": "image",
                "a_min": -57,
                "a_max": 164,
                "b_min": 0,
                "b_max": 1,
                "clip": True,
            },
            {"_target_": "EnsureTyped", "keys": "image"},
        ],
    },
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [96, 96, 96], "sw_batch_size": 4, "overlap": 0.5},
}
SPLEEN_META = {
    "name": "Spleen CT segmentation",
    "network_data_format": {
        "outputs": {"pred": {"num_channels": 2, "channel_def": {"0": "background", "1": "spleen"}}}
    },
}

WHOLEBODY = {
    "pixdim": [1.5, 1.5, 1.5],
    "network_def": {
        "_target_": "SegResNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 105,
        "init_filters": 32,
        "blocks_down": [1, 2, 2, 4],
        "blocks_up": [1, 1, 1],
        "dropout_prob": 0.2,
    },
    "preprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": "@pixdim", "mode": "bilinear"},
            {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True},
            {"_target_": "ScaleIntensityd", "keys": "image", "minv": -1.0, "maxv": 1.0},
        ],
    },
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [96, 96, 96], "sw_batch_size": 4, "overlap": 0.25},
}
WHOLEBODY_META = {
    "name": "Whole body CT segmentation",
    "network_data_format": {
        "outputs": {"pred": {"channel_def": {"0": "background", "1": "spleen", "2": "kidney_right", "104": "x"}}}
    },
}


def write_bundle(folder, config, metadata, weights_from=None, yaml_config=False):
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    if yaml_config:
        import yaml

        (folder / "configs" / "inference.yaml").write_text(yaml.safe_dump(config))
    else:
        (folder / "configs" / "inference.json").write_text(json.dumps(config))
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata))
    if weights_from is not None:
        torch.save(weights_from.state_dict(), folder / "models" / "model.pt")
    return folder


def test_spleen_bundle_maps_without_running_expressions(tmp_path):
    bundle = write_bundle(tmp_path / "spleen", SPLEEN, SPLEEN_META)
    (bundle / "models" / "model.pt").write_bytes(b"")
    assert is_bundle(bundle)
    spec = spec_from_bundle(bundle)
    assert spec.network.cls == "UNet" and spec.network.out_channels == 2
    assert spec.network.kwargs["channels"] == [16, 32, 64, 128, 256] and spec.network.kwargs["norm"] == "batch"
    assert spec.preprocessing.orientation == "RAS" and spec.preprocessing.spacing == (1.5, 1.5, 2.0)
    it = spec.preprocessing.intensity
    assert (it.kind, it.a_min, it.a_max, it.b_min, it.b_max, it.clip) == ("ct_window", -57, 164, 0, 1, True)
    assert spec.inference.roi_size == (96, 96, 96) and spec.inference.overlap == 0.5
    assert spec.inference.sw_batch_size == 4 and spec.inference.blend == "constant"  # MONAI's default
    assert spec.labels[1].name == "spleen"
    assert spec.weights_path() == (bundle / "models" / "model.pt").resolve()


def test_bundle_segments_a_scan_like_the_monai_recipe(tmp_path):
    """Weights saved in the bundle load; `--model BUNDLE` runs end to end."""
    from click.testing import CliRunner

    from medseg.cli import main
    from tests.conftest import ROOT

    small = json.loads(json.dumps(SPLEEN))
    small["network_def"].update(channels=[4, 8, 16], strides=[2, 2], num_res_units=0)
    small["inferer"].update(roi_size=[32, 32, 32], sw_batch_size=2)
    small["preprocessing"]["transforms"][3]["pixdim"] = [4.0, 4.0, 4.0]
    torch.manual_seed(0)
    bundle = write_bundle(tmp_path / "b", small, SPLEEN_META, yaml_config=True)
    (bundle / "models" / "model.pt").write_bytes(b"")  # placeholder until the weights are written
    spec = spec_from_bundle(bundle)
    torch.save(build_network(spec).state_dict(), bundle / "models" / "model.pt")
    out = tmp_path / "out.nii.gz"
    scan = ROOT / "sample_data" / "phantom_ct.nii.gz"
    res = CliRunner().invoke(
        main, ["infer", str(scan), "-o", str(out), "--model", str(bundle), "--device", "cpu", "-q"]
    )
    assert res.exit_code == 0, res.output
    sidecar = json.loads((tmp_path / "out.json").read_text())
    assert sidecar["model"]["network"] == "UNet" and sidecar["labels"]["1"]["name"] == "spleen"
    assert resolve_spec(str(bundle)).inference.roi_size == (32, 32, 32)


def test_wholebody_definition_maps_its_network_and_its_final_rescaling(tmp_path):
    bundle = write_bundle(tmp_path / "wb", WHOLEBODY, WHOLEBODY_META)
    (bundle / "models" / "model.pt").write_bytes(b"")
    spec = spec_from_bundle(bundle)  # @pixdim followed, z-score then ScaleIntensityd(-1, 1), 105 labels
    assert spec.preprocessing.intensity.rescale == (-1.0, 1.0)
    factor = json.loads(json.dumps(WHOLEBODY))
    factor["preprocessing"]["transforms"][-1] = {"_target_": "ScaleIntensityd", "keys": "image", "factor": 0.1}
    bundle2 = write_bundle(tmp_path / "wb2", factor, WHOLEBODY_META)
    (bundle2 / "models" / "model.pt").write_bytes(b"")
    with pytest.raises(ModelError, match="ScaleIntensityd .* with a factor has no medseg equivalent"):
        spec_from_bundle(bundle2)
    assert spec.network.cls == "SegResNet" and spec.network.out_channels == 105
    assert spec.network.kwargs["blocks_down"] == [1, 2, 2, 4] and spec.preprocessing.spacing == (1.5, 1.5, 1.5)
    assert spec.preprocessing.intensity.kind == "zscore" and spec.preprocessing.intensity.nonzero
    assert len(spec.labels) == 105 and spec.labels[2].name == "kidney_right" and spec.labels[50].name == "label_50"
    with torch.device("meta"):
        assert sum(p.numel() for p in build_network(spec).parameters()) > 1_000_000


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda c: c["inferer"].update(roi_size="$[96] * 3"), "inferer.roi_size' is a Python expression"),
        (lambda c: c.update(network_def="$monai.networks.nets.UNet(3, 1, 2)"), "network_def' is a Python expression"),
        (lambda c: c["inferer"].update(_target_="SaliencyInferer"), "inferer SaliencyInferer has no medseg"),
        (lambda c: c["preprocessing"]["transforms"][3].update(pixdim="@missing"), "refers to 'missing'"),
        (lambda c: c.pop("network_def"), "no 'network_def'"),
    ],
)
def test_unmappable_constructs_are_named(tmp_path, change, match):
    config = json.loads(json.dumps(SPLEEN))
    change(config)
    bundle = write_bundle(tmp_path / "b", config, SPLEEN_META)
    (bundle / "models" / "model.pt").write_bytes(b"")
    with pytest.raises(ModelError, match=match):
        spec_from_bundle(bundle)


def test_expressions_are_never_executed(tmp_path):
    marker = tmp_path / "executed"
    config = json.loads(json.dumps(SPLEEN))
    config["inferer"]["roi_size"] = f"$open({str(marker)!r}, 'w').write('x') and [96, 96, 96]"
    bundle = write_bundle(tmp_path / "b", config, SPLEEN_META)
    (bundle / "models" / "model.pt").write_bytes(b"")
    with pytest.raises(ModelError, match="trust-bundle"):
        spec_from_bundle(bundle)
    assert not marker.exists()


def test_trust_bundle_evaluates_expressions_with_config_parser(tmp_path):
    config = json.loads(json.dumps(SPLEEN))
    config["roi"] = "$[64] * 3"
    config["inferer"]["roi_size"] = "@roi"
    bundle = write_bundle(tmp_path / "b", config, SPLEEN_META)
    (bundle / "models" / "model.pt").write_bytes(b"")
    with pytest.raises(ModelError, match="Python expression"):
        spec_from_bundle(bundle)
    spec = spec_from_bundle(bundle, trust=True)
    assert spec.inference.roi_size == (64, 64, 64)
    assert np.isclose(spec.preprocessing.spacing[2], 2.0)


def test_not_a_bundle_folder(tmp_path):
    with pytest.raises(ModelError, match="MONAI bundle folder"):
        resolve_spec(str(tmp_path))
