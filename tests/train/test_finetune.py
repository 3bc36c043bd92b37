"""Fine-tuning (``medseg train --init-from``): output channels mapped by label name, label sets of the
corrected cases, clear errors, and a shipped phantom model learning a structure split in two."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from medseg.cli import main
from medseg.errors import InputError, ModelError
from medseg.models.spec import load_spec
from medseg.train.finetune import channel_sources, finetune_spec, head_dims, initial_state, open_parent
from medseg.train.labels import find_label_set, parse_labels_option
from tests.conftest import write_tiny_model


def _names(*names: str) -> dict:
    return {i: (n, None) for i, n in enumerate(names)}


def test_head_remap_keeps_adds_and_drops_channels_by_name(tmp_path):
    parent = open_parent(write_tiny_model(tmp_path / "p", out_channels=4))  # class0..class3
    # class1 and class2 swap places, class3 is dropped, two new labels
    child = finetune_spec(parent.spec, _names("background", "class2", "new_a", "class1", "new_b"), "child")
    assert child.network.out_channels == 5
    assert channel_sources(parent.spec, child) == {0: 0, 1: 2, 2: None, 3: 1, 4: None}
    state, how = initial_state(parent, child, cases=[], log=lambda m: None)
    assert how["class2"] == "kept" and how["new_a"].startswith("new")
    dims = head_dims(child)
    assert dims, "the tiny UNet's last layers follow out_channels"
    sources = [0, 2, None, 1, None]
    for key, value in parent.state.items():
        if key not in dims:
            assert torch.equal(state[key], value), key  # everything else loads unchanged
            continue
        assert all(state[key].shape[d] == 5 for d in dims[key])
        if len(dims[key]) != 1:
            continue
        d = dims[key][0]
        fg_mean = value.index_select(d, torch.arange(1, 4)).mean(d)
        for j, src in enumerate(sources):
            got = state[key].select(d, j)
            if src is None:  # a label no parent channel predicts: the mean of the foreground channels
                assert torch.allclose(got, fg_mean), (key, j)
            else:  # kept labels: their rows copied exactly
                assert torch.equal(got, value.select(d, src)), (key, j)


def test_errors_unknown_model_incompatible_network_and_no_network(tmp_path):
    with pytest.raises(ModelError, match="unknown model"):
        open_parent("no-such-model")
    with pytest.raises(ModelError, match="without a network"):
        open_parent("ct-anatomy")
    with pytest.raises(ModelError, match="nnU-Net v2 folder cannot be fine-tuned"):
        open_parent("nnunet-phantom")
    parent = open_parent(write_tiny_model(tmp_path / "p", out_channels=3))
    other = load_spec(write_tiny_model(tmp_path / "o", out_channels=3, spatial_dims=2))  # a 2D network
    child = finetune_spec(parent.spec, _names("background", "class1"), "c", base=other)
    with pytest.raises(ModelError, match="do not fit network"):
        initial_state(parent, child, cases=[], log=lambda m: None)


def test_label_set_sources(tmp_path):
    labels = tmp_path / "d" / "labels"
    labels.mkdir(parents=True)
    files = [labels / "a.nii.gz", labels / "b.nii.gz"]
    assert find_label_set(tmp_path / "d", files) is None
    sidecar = {"labels": {"0": {"name": "background"}, "1": {"name": "kidney_left", "color": [1, 2, 3]}}}
    (labels / "a.json").write_text(json.dumps(sidecar))
    assert find_label_set(tmp_path / "d", files) == {0: ("background", None), 1: ("kidney_left", (1, 2, 3))}
    (labels / "b.json").write_text(json.dumps({"labels": {"1": {"name": "liver"}}}))
    with pytest.raises(InputError, match="relabel the cases consistently"):
        find_label_set(tmp_path / "d", files)
    (tmp_path / "d" / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1, "kidney": 2}}))
    assert find_label_set(tmp_path / "d", files)[2] == ("kidney", None)
    assert parse_labels_option("liver,kidney")[2] == ("kidney", None)
    with pytest.raises(InputError, match="unique"):
        parse_labels_option("liver,liver")


def test_init_from_a_monai_bundle(tmp_path):
    """A bundle's network (batch norm, its own label names) is a parent like any ModelSpec."""
    from monai.networks.nets import UNet

    net_def = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8], "strides": [2]}
    net_def |= {"num_res_units": 0, "norm": "batch"}
    bundle = tmp_path / "spleen_bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    config = {
        "network_def": {"_target_": "UNet", **net_def},
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                {
                    "_target_": "ScaleIntensityRanged",
                    "keys": "image",
                    "a_min": -57,
                    "a_max": 164,
                    "b_min": 0,
                    "b_max": 1,
                },
            ],
        },
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32]},
    }
    meta = {"network_data_format": {"outputs": {"pred": {"channel_def": {"0": "background", "1": "spleen"}}}}}
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    (bundle / "configs" / "metadata.json").write_text(json.dumps(meta))
    torch.manual_seed(0)
    torch.save(UNet(**net_def).state_dict(), bundle / "models" / "model.pt")
    parent = open_parent(bundle)
    assert parent.family == "monai-bundle"
    child = finetune_spec(parent.spec, _names("background", "spleen", "spleen_hilum"), "spleen-ft")
    state, how = initial_state(parent, child, cases=[], log=lambda m: None)
    assert how == {
        "background": "kept",
        "spleen": "kept",
        "spleen_hilum": "new, mean of the parent's foreground channels",
    }
    for key, dims in head_dims(child).items():
        d = dims[0]
        assert torch.equal(state[key].narrow(d, 0, 2), parent.state[key]), key
        assert torch.equal(state[key].select(d, 2), parent.state[key].select(d, 1)), key  # the one foreground


def test_train_needs_spec_or_init_from(tmp_path):
    result = CliRunner().invoke(main, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "--init-from" in result.output


# -- a shipped model learns a structure split in two ---------------------------------------------------
_SPACING = (2.5, 2.5, 8.0)  # the 2D model's in-plane grid; thick slices keep the phantoms small


def _write_case(folder: Path, case: str, seed: int, spacing=_SPACING) -> None:
    """A phantom whose lungs are relabelled by side (world x > 0 is the patient's right in RAS+):
    label 2 becomes lung_left, the new label 8 lung_right; names in medseg's sidecar."""
    from medseg.io.nifti import write_nifti
    from medseg.phantom import LABELS, make_phantom
    from medseg.volume import Volume

    image, labels = make_phantom(seed, spacing=spacing, oblique=False)
    data = np.asarray(labels.array).copy()
    idx = np.indices(data.shape).reshape(3, -1)
    x = (labels.affine[:3, :3] @ idx + labels.affine[:3, 3:4])[0].reshape(data.shape)
    data[(data == 2) & (x > 0)] = 8
    names = {0: "background", **{k: v[0] for k, v in LABELS.items()}, 2: "lung_left", 8: "lung_right"}
    for sub, vol in (("images", image), ("labels", Volume(data, labels.affine, dict(labels.meta)))):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        write_nifti(vol, str(folder / sub / f"{case}.nii.gz"))
    sidecar = {"labels": {str(k): {"name": v} for k, v in names.items()}}
    (folder / "labels" / f"{case}.json").write_text(json.dumps(sidecar))


def test_finetune_shipped_model_on_a_split_structure(tmp_path):
    data, held = tmp_path / "corrected", tmp_path / "held"
    for i in range(4):
        _write_case(data, f"case{i}", 700 + i)
    _write_case(held, "new", 790)
    run = tmp_path / "lungs-split"
    runner = CliRunner()
    args = ["train", "--init-from", "phantom-unet2d", "--data", str(data), "--out", str(run)]
    args += ["--steps", "20", "--batch-size", "4", "--checkpoint-every", "20", "--threads", "2"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "lung_left (new, from 'lungs')" in result.output and "dropped: lungs" in result.output

    spec = load_spec(run / "model.yaml")
    assert spec.name == "lungs-split" and spec.network.out_channels == 9
    assert spec.labels[8].name == "lung_right" and spec.labels[3].name == "liver"
    prov = spec.provenance
    assert prov["parent"]["name"] == "phantom-unet2d" and len(prov["parent"]["sha256"]) == 64
    assert prov["steps"] == 20 and len(prov["val_cases"]) == 1 and prov["best_step"] == 20
    assert (run / "best.pt").is_file() and (run / "last.pt").is_file()

    # the run folder is a model: infer on a held-out phantom, then evaluate
    out = tmp_path / "pred" / "new_seg.nii.gz"
    result = runner.invoke(main, ["infer", str(held / "images" / "new.nii.gz"), "-o", str(out), "--model", str(run)])
    assert result.exit_code == 0, result.output
    sidecar = json.loads(out.with_name("new_seg.json").read_text())
    assert sidecar["labels"]["8"]["name"] == "lung_right"
    report_path = tmp_path / "eval.json"
    result = runner.invoke(
        main, ["evaluate", str(out.parent), str(held / "labels"), "--model", str(run), "--json", str(report_path)]
    )
    assert result.exit_code == 0, result.output
    dice = {k: v["dice"] for k, v in json.loads(report_path.read_text())["per_label"].items()}
    # measured on this held-out phantom: lung_left 0.96, lung_right 0.95; the parent had no such labels
    assert dice["lung_left"] > 0.6 and dice["lung_right"] > 0.6, dice
    # labels kept from the parent still come out (measured 0.93-0.99)
    for name in ("body", "liver", "spine", "aorta"):
        assert dice[name] > 0.7, (name, dice)


def test_finetune_resume_matches_uninterrupted(tmp_path):
    """--init-from, then interrupted and resumed: the same weights; the run folder opens as a model."""
    from medseg.models.registry import open_model
    from medseg.train.finetune import prepare_finetune
    from medseg.train.loop import TrainConfig, train

    data = tmp_path / "data"
    for i in range(3):
        _write_case(data, f"c{i}", 100 + i, spacing=(8.0, 8.0, 8.0))
    tiny = write_tiny_model(tmp_path / "p", out_channels=8, spacing=(8.0, 8.0, 8.0), roi=[16, 16, 16])
    parent, spec = prepare_finetune(tiny, data, "tiny-ft")
    assert spec.labels[8].name == "lung_right" and spec.network.out_channels == 9
    cfg = TrainConfig(steps=4, batch_size=2, checkpoint_every=2, threads=1)
    full = train(spec, data, tmp_path / "full", cfg, log=lambda m: None, init=parent)
    train(spec, data, tmp_path / "part", cfg, log=lambda m: None, init=parent, stop_at=2)
    train(spec, data, tmp_path / "part", cfg, resume=True, log=lambda m: None, init=parent)
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "model.pt", weights_only=True)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    assert full["val_cases"] and full["best"]["step"] in (2, 4)
    model = open_model(tmp_path / "part")
    assert model.name == "tiny-ft" and model.labels[8].name == "lung_right"
    assert model.spec.weights.path == "best.pt" and model.spec.provenance["parent"]["name"] == "tiny3d"
