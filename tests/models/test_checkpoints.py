"""Weights load safely: hash checked, pickles restricted, TorchScript accepted, mismatches explained."""

import pickle

import pytest
import torch
import yaml

from medseg.errors import ModelError
from medseg.models.checkpoints import load_network
from medseg.models.networks import build_network
from medseg.models.spec import load_spec


class Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def _retarget(spec_path, weights, sha=None, fmt="auto"):
    data = yaml.safe_load(spec_path.read_text())
    data["weights"] = {"path": str(weights), "sha256": sha, "format": fmt}
    spec_path.write_text(yaml.safe_dump(data))
    return load_spec(spec_path)


def test_state_dict_loads_and_hash_is_reported(tiny_model):
    net, digest = load_network(load_spec(tiny_model))
    assert len(digest) == 64 and not net.training


def test_hash_mismatch_is_refused(tiny_model):
    spec = _retarget(tiny_model, tiny_model.parent / "tiny.pt", sha="0" * 64)
    with pytest.raises(ModelError, match="sha256 mismatch"):
        load_network(spec)


def test_pickle_that_needs_code_is_refused_not_run(tiny_model, tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": Evil()}, evil)
    spec = _retarget(tiny_model, evil)
    with pytest.raises(ModelError, match="code execution"):
        load_network(spec)
    assert "code ran" not in capsys.readouterr().out


def test_plain_pickle_file_is_refused(tiny_model, tmp_path):
    p = tmp_path / "plain.pkl"
    p.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ModelError):
        load_network(_retarget(tiny_model, p))


def test_wrong_shaped_checkpoint_names_the_problem(tiny_model, tmp_path):
    spec = load_spec(tiny_model)
    other = spec.model_copy(update={"network": spec.network.model_copy(update={"out_channels": 5})})
    p = tmp_path / "other.pt"
    torch.save({"model": build_network(other).state_dict()}, p)
    with pytest.raises(ModelError, match="does not fit network"):
        load_network(_retarget(tiny_model, p))


def test_wrapped_and_dataparallel_state_dicts_load(tiny_model, tmp_path):
    net = build_network(load_spec(tiny_model))
    p = tmp_path / "wrapped.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, p)
    loaded, _ = load_network(_retarget(tiny_model, p))
    for a, b in zip(loaded.state_dict().values(), net.state_dict().values()):
        assert torch.equal(a, b)


def test_torchscript_weights(tiny_model, tmp_path):
    net = build_network(load_spec(tiny_model)).eval()
    p = tmp_path / "scripted.ts"
    torch.jit.trace(net, torch.zeros(1, 1, 32, 32, 32)).save(str(p))
    loaded, _ = load_network(_retarget(tiny_model, p))
    x = torch.randn(1, 1, 32, 32, 32)
    assert torch.allclose(loaded(x), net(x), atol=1e-5)


def test_missing_weights_file(tiny_model, tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_network(_retarget(tiny_model, tmp_path / "absent.pt"))
