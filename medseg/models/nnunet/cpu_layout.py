"""nnU-Net networks on the CPU in the channels-last layout, with oneDNN convolutions.

PyTorch runs a 3D convolution on the CPU in the layout of its input. In NCDHW (PyTorch's default and
nnU-Net's) oneDNN reorders every thin feature map (16-32 channels at full patch resolution) to its
blocked layout and back on each call, and sends layers with few channels to the reference
``slow_conv3d`` kernel; in channels-last (NDHWC) it reads and writes them as they are. Measured on
this project's development VM (2 AVX-512 cores), 8 windows of 48^3: a 16->16 convolution 143.8 ms
in NCDHW against 79.7 ms channels-last, 32->16 229.3 against 132.2 ms; the 32-64 channel layers run
at the same speed in both.

:func:`channels_last_network` keeps a network's activations channels-last from its input to its
output by replacing the forward of the layers nnU-Net's architectures are built from
(``dynamic_network_architectures``: convolutions, instance norms, transposed convolutions; the
element-wise layers, ``torch.cat`` and the residual adds keep the layout by themselves):

- convolutions call ``torch.mkldnn_convolution`` with channels-last weights;
- instance norms compute each channel's mean and variance over the spatial axes of the NDHWC
  tensor and apply ``weight / sqrt(var + eps)`` and the shift in one pass, instead of
  ``F.instance_norm``, which makes an NCDHW copy first (and ``torch.var_mean`` over the spatial
  axes of an NDHWC tensor is as slow as that copy);
- transposed convolutions whose kernel equals their stride (nnU-Net's upsampling) are a matrix
  product per voxel (``C_in -> kernel voxels x C_out``) whose result is laid out into the finer grid;
- the segmentation head (``decoder.seg_layers``, 1x1x1 convolutions) is a matrix product that
  writes the logits in NCDHW, the layout the network returns.

The arithmetic is the same in float32 (sums in another order: results agree to float32 rounding,
checked in ``tests/models/test_nnunet_cpu_layout.py``). Layers of other types, or configurations
outside the above (padding modes, groups, running statistics), keep their own forward.
Under CPU autocast (``--precision bf16``) the convolutions and matrix products cast their inputs as
autocast would (autocast does not see ``torch.mkldnn_convolution``); the norms compute in float32.
"""

from __future__ import annotations

import math
import types

__all__ = ["channels_last_network"]


def channels_last_network(network) -> int:
    """Make ``network`` (in place) run channels-last with oneDNN convolutions on the CPU; returns how
    many layers were replaced (0 when oneDNN is not available: the network is left as it was)."""
    import torch

    if not torch.backends.mkldnn.is_available():
        return 0
    n = 0
    heads = getattr(getattr(network, "decoder", None), "seg_layers", ())
    outputs = {id(m) for m in heads if type(m) in (torch.nn.Conv3d, torch.nn.Conv2d) and _pointwise(m)}
    for module in network.modules():
        kind = type(module)
        if id(module) in outputs:
            module.forward = types.MethodType(_output_forward, module)
        elif kind in (torch.nn.Conv3d, torch.nn.Conv2d) and _plain_conv(module):
            module.weight.data = module.weight.data.contiguous(memory_format=_layout(module.weight.dim()))
            module.forward = types.MethodType(_conv_forward, module)
        elif kind in (torch.nn.InstanceNorm3d, torch.nn.InstanceNorm2d) and not module.track_running_stats:
            module.forward = types.MethodType(_instance_norm_forward, module)
        elif kind in (torch.nn.ConvTranspose3d, torch.nn.ConvTranspose2d) and _upsampling(module):
            module.forward = types.MethodType(_upsampling_forward, module)
        else:
            continue
        n += 1
    if n:
        network.forward = types.MethodType(_network_forward(type(network).forward), network)
    return n


def _layout(dim: int):
    import torch

    return torch.channels_last_3d if dim == 5 else torch.channels_last


def _is_channels_last(x) -> bool:
    return x.dim() in (4, 5) and x.is_contiguous(memory_format=_layout(x.dim()))


def _plain_conv(conv) -> bool:
    return conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


def _pointwise(conv) -> bool:
    padding = (0,) if conv.padding == "valid" else conv.padding
    return (
        not isinstance(padding, str)
        and not any(padding)
        and all(k == 1 for k in conv.kernel_size)
        and all(st == 1 for st in conv.stride)
        and conv.groups == 1
    )


def _upsampling(transposed) -> bool:
    return (
        tuple(transposed.kernel_size) == tuple(transposed.stride)
        and not any(transposed.padding)
        and not any(transposed.output_padding)
        and transposed.groups == 1
        and all(d == 1 for d in transposed.dilation)
    )


def _network_forward(forward):
    def run(self, x):
        import torch

        if x.device.type != "cpu" or x.dim() not in (4, 5):
            return forward(self, x)
        out = forward(self, x.contiguous(memory_format=_layout(x.dim())))
        if isinstance(out, torch.Tensor):
            return out.contiguous()
        return [o.contiguous() for o in out]  # deep supervision: a list of outputs

    return run


def _autocast_inputs(layer, x):
    """``x`` and the layer's weight and bias, cast as CPU autocast would cast a convolution's (autocast
    does not see ``torch.mkldnn_convolution`` nor these matrix products); as they are without autocast."""
    import torch

    weight, bias = layer.weight, layer.bias
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        x, weight = x.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    return x, weight, bias


def _conv_forward(self, x):
    import torch

    x, weight, bias = _autocast_inputs(self, x)
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16):
        return type(self).forward(self, x)
    layout = _layout(x.dim())
    out = torch.mkldnn_convolution(
        x.contiguous(memory_format=layout), weight.contiguous(memory_format=layout), bias,
        self.padding, self.stride, self.dilation, self.groups,
    )  # fmt: skip
    # oneDNN answers a one-channel input (both layouts at once) in NCDHW
    return out.contiguous(memory_format=layout)


def _output_forward(self, x):
    """The segmentation head (a 1x1x1 convolution): a matrix product of the channels-last features that
    writes the logits in NCDHW, the layout the network returns (a channels-last output's NCDHW copy of
    118 TotalSegmentator classes at 48^3 took 47.6 ms, the product 30.6 ms)."""
    import torch

    if x.device.type != "cpu" or not _is_channels_last(x):
        return type(self).forward(self, x)
    x, weight, bias = _autocast_inputs(self, x)
    n, c_in, *spatial = x.shape
    c_out = weight.shape[0]
    features = x.permute(0, *range(2, x.dim()), 1).reshape(n, -1, c_in).transpose(1, 2)  # (N, C_in, S) view
    matrix = weight.reshape(c_out, c_in).expand(n, c_out, c_in)
    if bias is None:
        out = torch.bmm(matrix, features)
    else:
        out = torch.baddbmm(bias.view(1, c_out, 1).expand(n, c_out, features.shape[2]), matrix, features)
    return out.view(n, c_out, *spatial)


def _instance_norm_forward(self, x):
    import torch

    if x.device.type != "cpu" or not _is_channels_last(x) or x.shape[1] != self.num_features:
        return type(self).forward(self, x)
    n, c, *spatial = x.shape
    flat = x.permute(0, *range(2, x.dim()), 1).reshape(n, -1, c)  # a view: the data are NDHWC
    if flat.dtype != torch.float32:
        flat = flat.float()
    voxels = flat.shape[1]
    mean = flat.sum(1, keepdim=True).div_(voxels)
    centered = flat - mean
    # the sum of squares plane by plane (float32, short sums), the planes' sums in float64: as accurate
    # as F.instance_norm (a variance over all voxels in one float32 sum loses ~1e-5)
    plane = int(math.prod(spatial[1:]))
    norms = torch.linalg.vector_norm(centered.view(n, -1, plane, c), dim=2)
    var = norms.double().square_().sum(1, keepdim=True).div_(voxels).float()
    scale = (var + self.eps).rsqrt_()
    if self.affine:
        scale.mul_(self.weight.float())
        out = torch.addcmul(self.bias.float(), centered, scale, out=centered)
    else:
        out = centered.mul_(scale)
    return out.to(x.dtype).view(n, *spatial, c).permute(0, x.dim() - 1, *range(1, x.dim() - 1))


def _upsampling_forward(self, x):
    """A transposed convolution with kernel == stride: each input voxel becomes one kernel-sized block of
    the output, ``block[k, :] = x_voxel @ weight[:, :, k] + bias``."""

    if x.device.type != "cpu" or not _is_channels_last(x):
        return type(self).forward(self, x)
    x, weight, bias = _autocast_inputs(self, x)
    n, c_in, *spatial = x.shape
    c_out, kernel = weight.shape[1], tuple(weight.shape[2:])
    k = len(kernel)
    # weight (C_in, C_out, *kernel) -> (C_in, *kernel, C_out) -> (C_in, K * C_out)
    matrix = weight.permute(0, *range(2, 2 + k), 1).reshape(c_in, -1)
    rows = x.permute(0, *range(2, 2 + k), 1).reshape(-1, c_in)
    blocks = rows @ matrix  # (N * voxels, K * C_out)
    if bias is not None:
        blocks = blocks.view(-1, c_out).add_(bias).view(blocks.shape)
    # (N, *spatial, *kernel, C_out) -> (N, s0, k0, s1, k1, ..., C_out) -> channels-last (N, C_out, *fine)
    blocks = blocks.view(n, *spatial, *kernel, c_out)
    interleave = (0, *[i for a in range(k) for i in (1 + a, 1 + k + a)], 1 + 2 * k)
    fine = [s * kk for s, kk in zip(spatial, kernel)]
    out = blocks.permute(interleave).reshape(n, *fine, c_out)
    return out.permute(0, k + 1, *range(1, k + 1))
