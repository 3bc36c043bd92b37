"""nnU-Net's export of the logits to labels on the cropped input grid: nnU-Net's own function, or the same
resampling and argmax slab by slab where nnU-Net's export is ``resample_data_or_seg_to_shape`` (order 1, no
separate z)."""

from __future__ import annotations

from typing import Any

import numpy as np


class NnUNetExport:
    """The export half of :class:`~medseg.models.nnunet.model.NnUNetModel` (a mixin)."""

    def _can_stream_export(self, props: dict) -> bool:
        """nnU-Net's export is ``resample_data_or_seg_to_shape`` (order 1, no separate z) then argmax:
        the one case :meth:`_streamed_export` reproduces. Everything else goes to nnU-Net's function."""
        from nnunetv2.preprocessing.resampling.default_resampling import determine_do_sep_z_and_axis

        cm = self.configuration_manager.configuration
        kwargs = cm.get("resampling_fn_probabilities_kwargs", {})
        if cm.get("resampling_fn_probabilities") != "resample_data_or_seg_to_shape" or self.label_manager.has_regions:
            return False
        if kwargs.get("is_seg", False) or int(kwargs.get("order", 1)) != 1:
            return False
        if len(self.configuration_manager.spacing) != 3:
            return False
        current = self.configuration_manager.spacing
        original = [props["spacing"][i] for i in self.plans_manager.transpose_forward]
        separate, _ = determine_do_sep_z_and_axis(kwargs.get("force_separate_z"), current, original)
        return not separate

    def _streamed_export(self, logits, props: dict) -> np.ndarray:
        """nnU-Net's export, slab by slab: the float16 logits resampled linearly to the cropped input grid
        (``skimage.transform.resize`` order 1, edge mode, as nnU-Net: the same sample positions as
        ``align_corners=False``), rounded to float16 as nnU-Net stores them, argmax (first maximum),
        then uncropped and transposed back. Only one slab of resampled logits exists at a time, where
        nnU-Net holds all classes at full resolution."""
        import torch

        out_shape = [int(n) for n in props["shape_after_cropping_and_before_resampling"]]
        heads = logits.shape[0]
        seg = torch.empty(out_shape, dtype=self._label_dtype())
        i0, i1, w = _source_rows(logits.shape[1], out_shape[0])
        step = _export_step(heads, out_shape)
        for a in range(0, out_shape[0], step):
            b = min(out_shape[0], a + step)
            seg[a:b] = self._export_slices(logits, 0, i0[a:b], i1[a:b], w[a:b], out_shape)
        return self._uncrop(seg, props)

    def _label_dtype(self):
        import torch

        return torch.uint8 if len(self.label_manager.foreground_labels) < 255 else torch.int16

    def _export_slices(self, rows, offset: int, i0, i1, w, out_shape) -> Any:
        """Labels of the output slices whose source rows are ``i0``/``i1`` (model-grid rows, ``rows`` holding
        rows from ``offset`` on) with lerp weights ``w``."""
        import torch

        lo = rows[:, i0 - offset].to(torch.float32)
        hi = rows[:, i1 - offset].to(torch.float32)
        slab = torch.lerp(lo, hi, w.view(1, -1, 1, 1)).permute(1, 0, 2, 3)  # (s, C, y, x)
        del lo, hi
        if tuple(slab.shape[2:]) != tuple(out_shape[1:]):
            slab = torch.nn.functional.interpolate(slab, size=out_shape[1:], mode="bilinear", align_corners=False)
        return slab.to(torch.float16).argmax(1).to(self._label_dtype())

    def _uncrop(self, seg, props: dict) -> np.ndarray:
        import torch
        from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

        full = np.zeros(props["shape_before_cropping"], dtype=np.uint8 if seg.dtype == torch.uint8 else np.uint16)
        full = insert_crop_into_image(full, seg.numpy(), props["bbox_used_for_cropping"])
        return full.transpose(self.plans_manager.transpose_backward)


def _source_rows(n_in: int, n_out: int):
    """Model-grid rows and lerp weights of each output slice of the first axis (``align_corners=False``)."""
    import torch

    scale = n_in / n_out
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * scale - 0.5).clamp_(min=0)
    i0 = src.floor().long().clamp_(max=n_in - 1)
    i1 = (i0 + 1).clamp_(max=n_in - 1)
    return i0, i1, (src - i0).to(torch.float32)


def _export_step(heads: int, out_shape) -> int:
    """Output slices per export chunk: about 64 MiB of float32 resampled logits."""
    plane = heads * int(out_shape[1]) * int(out_shape[2]) * 4
    return max(1, min(int(out_shape[0]), (64 << 20) // max(plane, 1)))


def _slide(band, dim: int, shift: int) -> None:
    """Move ``band``'s rows along ``dim`` ``shift`` places towards 0, zeros behind (in place)."""
    if shift <= 0:
        return
    length = band.shape[dim]
    if shift >= length:
        band.zero_()
        return
    kept = band.narrow(dim, shift, length - shift).clone()
    band.narrow(dim, 0, length - shift).copy_(kept)
    band.narrow(dim, length - shift, shift).zero_()
