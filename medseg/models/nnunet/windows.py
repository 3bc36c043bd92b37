"""nnU-Net's sliding windows, as its predictor runs them: tile positions, Gaussian, zero padding, mirroring TTA,
folds averaged in float16; on the CPU the channels-last network on one worker thread per core; and the logits in
first-axis bands (exported as they finish) when the host budget asks."""

from __future__ import annotations

import collections
import contextlib
import itertools

import numpy as np

from medseg.models.nnunet.export import _export_step, _slide, _source_rows


class NnUNetWindows:
    """The windows half of :class:`~medseg.models.nnunet.model.NnUNetModel` (a mixin)."""

    def predict_logits(self, data, progress=None, one_view: bool = False):
        """nnU-Net's sliding-window logits on the preprocessed ``(c, z, y, x)`` tensor, folds averaged
        (``one_view``: one window or mirrored copy at a time, see :meth:`views_in_flight`)."""

        total = None
        for i, state in enumerate(self.states):
            if i or len(self.states) > 1:
                self.network.load_state_dict(state)
            logits = self._sliding_window(data, progress, i, len(self.states), one_view)
            total = logits if total is None else total.add_(logits)  # float16, as the reference sums folds
        if len(self.states) > 1:
            total /= len(self.states)
        return total

    def _sliding_window(self, data, progress, fold_index: int, n_folds: int, one_view: bool = False):
        import torch
        from acvl_utils.cropping_and_padding.padding import pad_nd_image
        from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window

        device = torch.device(self.device)
        patch = tuple(int(p) for p in self.configuration_manager.patch_size)
        padded, revert = pad_nd_image(data, patch, "constant", {"value": 0}, True, None)
        size = padded.shape[1:]
        slicers = []
        if len(patch) < len(size):  # 2D configuration: every slice of the first axis
            steps = compute_steps_for_sliding_window(size[1:], patch, self.step_size)
            for d in range(size[0]):
                for sx in steps[0]:
                    for sy in steps[1]:
                        slicers.append((slice(None), d, slice(sx, sx + patch[0]), slice(sy, sy + patch[1])))
        else:
            steps = compute_steps_for_sliding_window(size, patch, self.step_size)
            for sx, sy, sz in itertools.product(*steps):
                slicers.append((slice(None), *(slice(s, s + p) for s, p in zip((sx, sy, sz), patch))))
        # nnU-Net's own precision: Gaussian, logit and weight sums in float16 (the reference does so on every
        # device); a float32 sum flips near-tied voxels of a weakly trained model
        gaussian = compute_gaussian(patch, sigma_scale=1.0 / 8, value_scaling_factor=10, dtype=torch.float16,
                                    device=torch.device("cpu"))  # fmt: skip
        heads = self.label_manager.num_segmentation_heads
        logits = torch.zeros((heads, *size), dtype=torch.float16)
        weight = torch.zeros(size, dtype=torch.float16)
        with torch.inference_mode(), self._autocast(device), self._view_workers(one_view):
            for n, (sl, pred) in enumerate(self._predict_windows(padded, slicers, device)):
                pred *= gaussian
                logits[sl] += pred
                weight[sl[1:]] += gaussian
                if progress is not None:
                    progress.update((fold_index + (n + 1) / len(slicers)) / n_folds)
        torch.div(logits, weight, out=logits)
        return logits[(slice(None), *revert[1:])]

    def _autocast(self, device):
        """nnU-Net's float16 autocast on CUDA; on the CPU float32 (the reference's) or, with
        ``precision="bf16"``, bfloat16 autocast (convolutions in bf16, several times faster on CPUs
        with AVX-512 BF16 or AMX; the window logits go into the same float16 sums as without it, as the
        reference's do)."""
        import torch

        if device.type == "cuda":
            return torch.autocast("cuda", enabled=True)
        if self.precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _predict_windows(self, padded, slicers, device):
        """``(slicer, logits)`` of each window, in ``slicers``' order. Without TTA on the CPU the windows run
        on :meth:`_view_workers`' threads, one per worker in flight while the caller sums the previous
        one (single-threaded: with 118 classes the sums are a sixth of a window's time); with TTA a
        window at a time (its mirrored copies run on the workers)."""
        pool, workers = self._pool
        if pool is None or self._tta_views() > 1:
            for sl in slicers:
                yield sl, self._mirror_and_predict(padded[sl][None].to(device))[0].to("cpu")
            return
        # one window per worker in flight; the caller sums a finished one while the next ones run
        pending: collections.deque = collections.deque()
        todo = iter(slicers)
        for sl in itertools.islice(todo, workers):
            pending.append((sl, pool.submit(self._view, padded[sl][None], None)))
        while pending:
            sl, future = pending.popleft()
            out = future.result()[0]
            for nxt in itertools.islice(todo, 1):
                pending.append((nxt, pool.submit(self._view, padded[nxt][None], None)))
            yield sl, out
            del out

    def _mirror_and_predict(self, x):
        """The window's logits, averaged over nnU-Net's mirrorings (same order and sums as the reference).

        On the CPU the mirrored copies run on :meth:`_view_workers`' threads, one copy per thread at a
        time; on CUDA ``self.tta_batch`` copies go through the network together."""
        import torch

        axes = self.mirror_axes if self.tta else None
        if not axes:
            return self.network(x).float()
        dims = [a + 2 for a in axes]
        combos = [c for i in range(len(dims)) for c in itertools.combinations(dims, i + 1)]
        views = [None, *combos]
        pool, workers = self._pool
        step = workers if pool is not None else self.tta_batch()
        prediction = None
        for start in range(0, len(views), step):  # a group at a time: at most ``step`` outputs alive
            group = views[start : start + step]
            if pool is not None:
                outs = list(pool.map(lambda f: self._view(x, f), group))
            else:
                out = self.network(torch.cat([x if f is None else torch.flip(x, f) for f in group])).float()
                outs = [out[i : i + 1] if f is None else torch.flip(out[i : i + 1], f) for i, f in enumerate(group)]
            for one in outs:  # the views' order, as the reference sums them
                prediction = one.clone() if prediction is None else prediction.add_(one)
            del outs
        prediction /= len(views)
        return prediction

    def _view(self, x, flip):
        """One mirrored copy's logits, flipped back (run on a worker thread: inference mode and autocast
        are per thread)."""
        import torch

        with torch.inference_mode(), self._autocast(x.device):
            out = self.network(x if flip is None else torch.flip(x, flip)).float()
        return out if flip is None else torch.flip(out, flip)

    @contextlib.contextmanager
    def _view_workers(self, one_view: bool = False):
        """On the CPU: one worker thread per core (:meth:`views_in_flight`), each running whole mirrored
        copies (TTA) or whole windows single-threaded (``torch.set_num_threads(1)`` for the scope,
        restored after). Measured on the 2-core development VM: 8 copies of a 48^3 window 668 ms
        against 784 ms with both cores on each copy (each copy's feature maps stay in one core's
        cache; no synchronisation inside a layer)."""
        import torch

        threads = torch.get_num_threads()
        workers = self.views_in_flight(one_view)
        if self.device != "cpu" or workers < 2:
            yield
            return
        from concurrent.futures import ThreadPoolExecutor

        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(workers, thread_name_prefix="medseg-tta") as pool:
                self._pool = (pool, workers)
                yield
        finally:
            self._pool = (None, 1)
            torch.set_num_threads(threads)

    def _band_windows(self, data, props: dict, progress=None, one_view: bool = False) -> np.ndarray:
        """The sliding windows and the streamed export interleaved, so that only a band of logits lives.

        The windows run in nnU-Net's order (first-axis start outermost, as ``predict_logits`` runs them),
        a group of equal first-axis start at a time, every fold on the group before the next; each fold
        sums into its own band of float16 logits one patch deep, the Gaussian weights into one shared
        band. Rows before the next group's start are touched by no later window: they are divided by
        their weights, the folds summed and averaged (all in float16 as :meth:`predict_logits`), cropped
        to the unpadded image, and each export chunk of :meth:`_streamed_export` whose source rows are
        all final is exported. Every sum is taken in the same order over the same windows with the same
        values as the full buffer, and the export slices are the same chunks: the labels are identical.
        """
        import torch
        from acvl_utils.cropping_and_padding.padding import pad_nd_image
        from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window

        device = torch.device(self.device)
        patch = tuple(int(p) for p in self.configuration_manager.patch_size)
        padded, revert = pad_nd_image(data, patch, "constant", {"value": 0}, True, None)
        size = padded.shape[1:]
        steps = compute_steps_for_sliding_window(size, patch, self.step_size)
        gaussian = compute_gaussian(patch, sigma_scale=1.0 / 8, value_scaling_factor=10, dtype=torch.float16,
                                    device=torch.device("cpu"))  # fmt: skip
        heads, n_folds = self.label_manager.num_segmentation_heads, len(self.states)
        crop = [slice(int(r.start or 0), int(r.stop)) for r in revert[1:]]
        n_in = crop[0].stop - crop[0].start
        out_shape = [int(n) for n in props["shape_after_cropping_and_before_resampling"]]
        i0, i1, w = _source_rows(n_in, out_shape[0])
        chunk = _export_step(heads, out_shape)
        seg = torch.empty(out_shape, dtype=self._label_dtype())
        depth = patch[0]
        bands = [torch.zeros((heads, depth, *size[1:]), dtype=torch.float16) for _ in range(n_folds)]
        weight = torch.zeros((depth, *size[1:]), dtype=torch.float16)
        starts = list(steps[0])
        total = len(starts) * len(steps[1]) * len(steps[2]) * n_folds
        done, band_start, ready, ready_start, ready_stop, next_out = 0, starts[0], None, 0, 0, 0
        with torch.inference_mode(), self._autocast(device), self._view_workers(one_view):
            for k, sx in enumerate(starts):
                shift = sx - band_start
                for band in bands:
                    _slide(band, 1, shift)
                _slide(weight, 0, shift)
                band_start = sx
                for f in range(n_folds):
                    if n_folds > 1:
                        self.network.load_state_dict(self.states[f])
                    row = [(slice(None), slice(sx, sx + patch[0]), slice(sy, sy + patch[1]), slice(sz, sz + patch[2]))
                           for sy, sz in itertools.product(steps[1], steps[2])]  # fmt: skip
                    for sl, pred in self._predict_windows(padded, row, device):
                        pred *= gaussian
                        bands[f][(slice(None), slice(0, depth), sl[2], sl[3])] += pred
                        if f == 0:
                            weight[(slice(0, depth), sl[2], sl[3])] += gaussian
                        done += 1
                        if progress is not None:
                            progress.update(done / total)
                stop = starts[k + 1] if k + 1 < len(starts) else size[0]
                lo, hi = max(sx, crop[0].start), min(stop, crop[0].stop)
                if hi > lo:
                    final = None
                    for band in bands:
                        part = band[:, lo - sx : hi - sx] / weight[lo - sx : hi - sx]
                        part = part[:, :, crop[1], crop[2]]
                        final = part if final is None else final.add_(part)
                    if n_folds > 1:
                        final /= n_folds
                    ready = final if ready is None else torch.cat([ready, final], 1)
                    ready_stop = hi - crop[0].start
                while next_out < out_shape[0]:
                    b = min(out_shape[0], next_out + chunk)
                    if int(i1[b - 1]) >= ready_stop:
                        break
                    seg[next_out:b] = self._export_slices(ready, ready_start, i0[next_out:b], i1[next_out:b],
                                                          w[next_out:b], out_shape)  # fmt: skip
                    next_out = b
                    if next_out < out_shape[0]:  # rows no later chunk reads
                        keep = int(i0[next_out])
                        ready, ready_start = ready[:, keep - ready_start :], keep
        if next_out < out_shape[0]:  # a broken invariant, never a user error
            raise AssertionError(f"band export stopped at slice {next_out} of {out_shape[0]}")
        return self._uncrop(seg, props)
