import pytest

from medseg.errors import ModelError
from medseg.models.networks import build_network
from medseg.models.registry import available_models, resolve_spec
from medseg.models.spec import load_spec, spec_from_dict

BASE = {
    "name": "x",
    "network": {"class": "UNet", "out_channels": 3, "kwargs": {"channels": [4, 8], "strides": [2]}},
    "labels": {0: {"name": "bg"}, 1: {"name": "a"}, 2: {"name": "b", "color": [1, 2, 3]}},
    "inference": {"roi_size": [16, 16, 16]},
}


def test_shipped_specs_validate_and_build():
    models = available_models()
    assert {"phantom-unet3d", "phantom-unet2d"} <= set(models)
    for path in models.values():
        spec = load_spec(path)
        assert spec.weights_path().name.endswith(".pt")
        assert spec.labels[3].name == "liver"
        build_network(spec)


@pytest.mark.parametrize(
    "patch, field",
    [
        ({"labels": {0: {"name": "bg"}, 7: {"name": "far"}}}, "out_channels"),
        ({"inference": {"roi_size": [16, 16]}}, "roi_size"),
        ({"preprocessing": {"orientation": "RRS"}}, "orientation"),
        ({"preprocessing": {"spacing": [1, -1, 1]}}, "spacing"),
        ({"network": {"class": "UNet", "out_channels": 3, "bogus": 1}}, "bogus"),
        ({"labels": {0: {"name": "bg", "color": [300, 0, 0]}}}, "color"),
    ],
)
def test_invalid_specs_name_the_field(patch, field):
    with pytest.raises(ModelError, match=field):
        spec_from_dict({**BASE, **patch}, "bad.yaml")


def test_unsupported_network_class():
    spec = spec_from_dict({**BASE, "network": {"class": "Evil", "out_channels": 3}})
    with pytest.raises(ModelError, match="not supported"):
        build_network(spec)


def test_bad_kwargs_are_a_model_error():
    spec = spec_from_dict({**BASE, "network": {"class": "UNet", "out_channels": 3, "kwargs": {"nope": 1}}})
    with pytest.raises(ModelError, match="cannot build"):
        build_network(spec)


def test_resolve_by_name_and_path(tmp_path):
    assert resolve_spec("phantom-unet3d").name == "phantom-unet3d"
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ModelError, match="YAML"):
        resolve_spec(bad)
