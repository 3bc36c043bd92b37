"""The channels-last CPU network (medseg/models/nnunet/cpu_layout.py) computes what the network computes."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("dynamic_network_architectures")

from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet  # noqa: E402

from medseg.models.nnunet.cpu_layout import channels_last_network  # noqa: E402
from tests.conftest import requires_cpu_bf16  # noqa: E402

NORM = {"eps": 1e-5, "affine": True}
ACT = {"inplace": True}


def _trained_like(net):
    """Weights of a trained network's scale (He-like), norm affines away from 1/0, in eval mode."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.dim() > 1:
                fan_in = p[0].numel() if "transp" not in name else p.shape[0]
                p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2 + (1.0 if name.endswith("norm.weight") else 0.0))
    return net.eval()


def _plain3d(anisotropic=False):
    kernels = [[1, 3, 3], [3, 3, 3], [3, 3, 3]] if anisotropic else 3
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2]] if anisotropic else [1, 2, 2]
    return PlainConvUNet(1, 3, [16, 32, 64], torch.nn.Conv3d, kernels, strides, 2, 5, [2, 2], True,
                         torch.nn.InstanceNorm3d, NORM, None, None, torch.nn.LeakyReLU, ACT)  # fmt: skip


def _residual3d():
    return ResidualEncoderUNet(2, 3, [16, 32, 64], torch.nn.Conv3d, 3, [1, 2, 2], [1, 2, 2], 4, [1, 1], True,
                               torch.nn.InstanceNorm3d, NORM, None, None, torch.nn.LeakyReLU, ACT)  # fmt: skip


def _plain2d():
    return PlainConvUNet(1, 4, [8, 16, 32, 64], torch.nn.Conv2d, 3, [1, 2, 2, 2], 2, 3, 2, True,
                         torch.nn.InstanceNorm2d, NORM, None, None, torch.nn.LeakyReLU, ACT)  # fmt: skip


@pytest.mark.parametrize(
    "make, shape",
    [
        (_plain3d, (2, 1, 32, 40, 24)),
        (lambda: _plain3d(anisotropic=True), (1, 1, 12, 40, 32)),
        (_residual3d, (1, 2, 24, 32, 40)),
        (_plain2d, (3, 1, 64, 48)),
    ],
    ids=["plain-3d", "plain-3d-anisotropic", "residual-encoder-3d", "plain-2d"],
)
def test_channels_last_network_computes_the_same_logits(make, shape):
    net = _trained_like(make())
    fast = copy.deepcopy(net)
    replaced = channels_last_network(fast)
    kinds = (torch.nn.Conv3d, torch.nn.Conv2d, torch.nn.InstanceNorm3d, torch.nn.InstanceNorm2d,
             torch.nn.ConvTranspose3d, torch.nn.ConvTranspose2d)  # fmt: skip
    assert replaced == sum(isinstance(m, kinds) for m in fast.modules())
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 2 + 0.5
    with torch.inference_mode():
        expected, got = net(x), fast(x)
    assert got.shape == expected.shape and got.is_contiguous()
    scale = float(expected.abs().max())
    assert float((got - expected).abs().max()) <= 2e-5 * max(scale, 1.0)


def test_instance_norm_is_as_accurate_as_torchs():
    """Per-channel statistics of an NDHWC map with a large mean: as close to float64 as F.instance_norm."""
    norm = torch.nn.InstanceNorm3d(16, eps=1e-5, affine=True)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    x = (torch.randn(2, 16, 24, 20, 28) * 0.5 + 30.0).contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        truth = torch.nn.functional.instance_norm(
            x.double(), weight=norm.weight.double(), bias=norm.bias.double(), eps=1e-5
        )
        reference = norm(x)
        assert channels_last_network(torch.nn.Sequential(norm)) == 1
        ours = norm(x)
    assert ours.is_contiguous(memory_format=torch.channels_last_3d)
    reference_error = float((reference - truth).abs().max())
    assert float((ours - truth).abs().max()) <= 4 * reference_error + 1e-6


def test_upsampling_is_the_transposed_convolution():
    up = torch.nn.ConvTranspose3d(32, 16, (1, 2, 2), (1, 2, 2), bias=True)
    x = torch.randn(2, 32, 5, 6, 7).contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        expected = up(x)
        assert channels_last_network(torch.nn.Sequential(up)) == 1
        got = up(x)
    assert got.shape == (2, 16, 5, 12, 14)
    assert got.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_other_layers_keep_their_own_forward():
    """Padding modes, running statistics and overlapping transposed kernels are left alone."""
    reflect = torch.nn.Conv3d(4, 4, 3, padding=1, padding_mode="reflect")
    running = torch.nn.InstanceNorm3d(4, track_running_stats=True)
    overlapping = torch.nn.ConvTranspose3d(4, 4, 3, stride=2)
    for module in (reflect, running, overlapping):
        assert channels_last_network(torch.nn.Sequential(module)) == 0
        assert "forward" not in vars(module)


@requires_cpu_bf16
def test_bf16_autocast_reaches_the_convolutions():
    """Autocast does not see torch.mkldnn_convolution: the layer casts as autocast would (a regression:
    ``--precision bf16`` once ran these convolutions in float32)."""
    net = _trained_like(_plain3d())
    channels_last_network(net)
    conv = net.encoder.stages[0][0].convs[0].conv
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(x).dtype == torch.bfloat16
        assert net(x).shape == (1, 5, 16, 16, 16)
