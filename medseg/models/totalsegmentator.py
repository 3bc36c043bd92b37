"""TotalSegmentator's weights on the user's disk, run with TotalSegmentator's semantics around nnU-Net.

``--model totalsegmentator:TASK`` (``total``, ``total-fast``, ``total-fastest``, ``total_mr``, or any
other task of TotalSegmentator's whose weights are present and that needs no step medseg does not
reproduce). The task tables (task ids, trainers, spacings, class maps, weight folder names, SNOMED
codes) are read from the installed ``totalsegmentator`` package (``medseg[totalsegmentator]``), never
copied. The weights are found where TotalSegmentator keeps them: ``$TOTALSEG_WEIGHTS_PATH``, else
``$TOTALSEG_HOME_DIR/nnunet/results``, else ``~/.totalsegmentator/nnunet/results``.

What TotalSegmentator (``python_api.totalsegmentator`` and ``nnunet.nnUNet_predict_image``, 2.x) does
around nnU-Net, step by step, reproduced here:

1. ``--roi-subset`` (and tasks with a ``crop`` list): the coarse 6 mm ``total`` model (3 mm when the
   task asks for a robust crop) segments the whole scan first; the scan is cropped to the bounding
   box of the wanted structures plus 20 mm (in voxels, truncated), as int32; an empty box gives an
   empty result;
2. closest canonical orientation (``nib.as_closest_canonical``: RAS, axes permuted and flipped);
3. resampling to the task's spacing with ``scipy.ndimage.zoom`` (linear, ``mode="nearest"``,
   corner-aligned grid), values truncated to int32, skipped when the spacing is already exact;
4. nnU-Net per model part (fold 0, no mirroring, tile step 0.8 for the ``total`` tasks, 0.5 for the
   rest), through :class:`~medseg.models.nnunet.NnUNetModel` (nnU-Net's own preprocessing, tiles and
   export); very large scans (over 512x512x900 voxels at the task spacing and 200 slices) in three
   overlapping slabs as TotalSegmentator does;
5. multi-part merge: each part's labels mapped to the task's class ids through TotalSegmentator's
   part maps, later parts overwriting earlier ones where they label a voxel;
6. labels back to the canonical grid with ``scipy.ndimage.zoom`` (nearest), canonical orientation
   undone, the crop undone, labels outside ``--roi-subset`` removed.

Then medseg writes the labels on the input's exact grid, as for every model.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from medseg.devices import resolve_device
from medseg.errors import ModelError, OptionError, install_extra
from medseg.models.base import Accepts, AlgorithmOutput, Label, Model
from medseg.volume import Volume

PREFIX = "totalsegmentator:"
#: TotalSegmentator splits a scan into three slabs above this many voxels at the task spacing
_SPLIT_VOXELS = 512 * 512 * 900
_SPLIT_MARGIN = 20
#: TotalSegmentator's crop margin for ``--roi-subset`` and crop tasks, in mm (voxels after truncation)
_CROP_ADDON_MM = (20, 20, 20)
_CATEGORY = "SegmentedPropertyCategoryCodeSequence.CodeMeaning"


def require_totalsegmentator():
    """TotalSegmentator's task tables, or one line naming the extra that installs them."""
    try:
        from totalsegmentator import map_tasks_config, map_to_binary
    except ImportError as err:
        raise ModelError(
            f"TotalSegmentator weights need its task tables ({err.name} is missing): "
            f"{install_extra('totalsegmentator')}",
            "totalsegmentator",
        ) from err
    return map_tasks_config, map_to_binary


def weights_root() -> Path:
    """Where TotalSegmentator keeps its nnU-Net results folders (its ``config.get_weights_dir``)."""
    if os.environ.get("TOTALSEG_WEIGHTS_PATH"):
        return Path(os.environ["TOTALSEG_WEIGHTS_PATH"])
    if os.environ.get("TOTALSEG_HOME_DIR"):
        home = Path(os.environ["TOTALSEG_HOME_DIR"])
    else:
        home = (Path("/tmp") if str(Path.home()) == "/" else Path.home()) / ".totalsegmentator"
    return home / "nnunet" / "results"


def parse_task(spec: str) -> tuple[str, str]:
    """``total-fast`` -> ``("total", "fast")``; ``total`` -> ``("total", "default")``."""
    task = spec[len(PREFIX) :] if spec.startswith(PREFIX) else spec
    for mode in ("fastest", "fast"):
        for sep in ("-", "_"):
            if task.endswith(sep + mode) and task != mode:
                return task[: -len(mode) - 1], mode
    return task, "default"


def task_config(task: str, mode: str) -> dict[str, Any]:
    """TotalSegmentator's configuration of ``task`` in ``mode`` (its ``get_task_config``, without side effects)."""
    tasks, _ = require_totalsegmentator()
    if task not in tasks.TASK_CONFIGS:
        known = ", ".join(sorted(tasks.TASK_CONFIGS))
        raise ModelError(f"TotalSegmentator has no task {task!r} (tasks: {known})", PREFIX + task)
    config = dict(tasks.DEFAULT_CONFIG)
    raw = tasks.TASK_CONFIGS[task]
    if "sub_modes" in raw:
        if mode not in raw["sub_modes"]:
            if mode == "fastest" and "fast" in raw["sub_modes"]:
                mode = "fast"  # as TotalSegmentator falls back
            else:
                raise ModelError(f"task {task!r} has no {mode} mode", PREFIX + task)
        config.update(raw["sub_modes"][mode])
    else:
        if mode != "default":
            raise ModelError(f"task {task!r} has no {mode} mode", PREFIX + task)
        config.update({k: v for k, v in raw.items() if k not in ("disallow_fast", "commercial", "info_msg")})
    config["plans"] = config.get("plans") or "nnUNetPlans"
    config["commercial"] = bool(raw.get("commercial"))
    return config


def download_task(task_id: int) -> str:
    """The ``totalseg_download_weights -t`` task that fetches dataset ``task_id`` (from its own table)."""
    try:
        from totalsegmentator.bin.totalseg_download_weights import TASK_TO_ID
    except Exception:  # noqa: BLE001 - only for the message
        return "TASK"
    names = [name for name, ids in TASK_TO_ID.items() if task_id in ids]
    return min(names, key=lambda n: (len(TASK_TO_ID[n]), len(n))) if names else "TASK"


def model_folder(
    task_id: int, trainer: str, plans: str, configuration: str, root: Path | None = None, name: str | None = None
) -> Path:
    """The results folder TotalSegmentator's nnU-Net call reads (``get_output_folder``: the one
    ``DatasetNNN_*`` folder under the weights root, then ``trainer__plans__configuration``)."""
    tasks, _ = require_totalsegmentator()
    root = root or weights_root()
    info = tasks.TASK_ID_WEIGHTS_CONFIGS.get(task_id, {})
    expected_name = info.get("foldername") or f"Dataset{int(task_id):03d}_..."
    base = root / info["rel_path"] if info.get("rel_path") else root
    found = sorted(base.glob(f"Dataset{int(task_id):03d}_*")) if base.is_dir() else []
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise ModelError(f"several folders for TotalSegmentator dataset {task_id}: {names}", base)
    folder = (found[0] if found else base / expected_name) / f"{trainer}__{plans}__{configuration}"
    if not (folder / "plans.json").is_file():
        raise ModelError(
            f"TotalSegmentator weights not found: expected {folder}. Fetch them on a machine with internet with "
            f"TotalSegmentator's own `totalseg_download_weights -t {download_task(int(task_id))}` and copy its "
            "~/.totalsegmentator here (or set TOTALSEG_HOME_DIR)",
            name or PREFIX + str(task_id),
        )
    return folder


def snomed_codes() -> dict[str, dict[str, str]]:
    """SNOMED CT codes by structure name from TotalSegmentator's own mapping (empty if it has none)."""
    import csv

    try:
        import totalsegmentator
    except ImportError:
        return {}
    path = Path(totalsegmentator.__file__).parent / "resources" / "totalsegmentator_snomed_mapping.csv"
    if not path.is_file():
        return {}
    codes = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            value = row.get("SegmentedPropertyTypeCodeSequence.CodeValue")
            if value:
                codes[row["Structure"]] = {
                    "scheme": row["SegmentedPropertyTypeCodeSequence.CodingSchemeDesignator"],
                    "value": value,
                    "meaning": row["SegmentedPropertyTypeCodeSequence.CodeMeaning"],
                    "category": "tissue" if "tissue" in row.get(_CATEGORY, "").lower() else "anatomical",
                }
    return codes


def available_tasks(root: Path | None = None) -> list[str]:
    """``totalsegmentator:TASK`` names whose weights are all present (for ``medseg models``)."""
    try:
        tasks, _ = require_totalsegmentator()
    except ModelError:
        return []
    root = root or weights_root()
    if not root.is_dir():
        return []
    names = []
    for task, raw in tasks.TASK_CONFIGS.items():
        modes = list(raw["sub_modes"]) if "sub_modes" in raw else ["default"]
        for mode in modes:
            try:
                config = task_config(task, mode)
                ids = config["task_id"] if isinstance(config["task_id"], list) else [config["task_id"]]
                for tid in ids:
                    model_folder(int(tid), config["trainer"], config["plans"], config["model"], root)
            except (ModelError, KeyError, TypeError, ValueError):
                continue
            names.append(PREFIX + task + ("" if mode == "default" else f"-{mode}"))
    return names


class TotalSegmentatorModel(Model):
    """A TotalSegmentator task run from its weights on disk (see the module docstring)."""

    family = "totalsegmentator"

    def __init__(
        self,
        spec: str,
        device: str = "cpu",
        roi_subset: list[str] | None = None,
        trust_checkpoint: bool = False,
        folds=None,
        tta: bool | None = None,
        step_size: float | None = None,
        root: Path | None = None,
        precision: str | None = None,
    ) -> None:
        super().__init__()
        self.task, self.mode = parse_task(spec)
        self.name = PREFIX + self.task + ("" if self.mode == "default" else f"-{self.mode}")
        if folds or tta or step_size is not None:
            raise OptionError(
                "TotalSegmentator tasks run as TotalSegmentator runs them (fold 0, no TTA, its tile step); "
                "--folds, --tta and --step-size are for nnU-Net folders",
                self.name,
            )
        _, maps = require_totalsegmentator()
        self.config = task_config(self.task, self.mode)
        self._refuse_unsupported()
        self.root = root or weights_root()
        self.task_ids = [int(t) for t in np.atleast_1d(self.config["task_id"])]
        self.multipart = isinstance(self.config["task_id"], list)
        self.class_map = dict(maps.class_map[self.task])
        self.part_maps: dict[int, dict[int, str]] = {}
        if self.multipart:
            parts, by_id = _part_tables(maps, self.task)
            self.part_maps = {tid: dict(parts[by_id[tid]]) for tid in self.task_ids}
        names = set(self.class_map.values())
        roi = [r.strip() for r in (roi_subset or []) if r.strip()]
        unknown = [r for r in roi if r not in names]
        if unknown:
            raise ModelError(
                f"--roi-subset: {', '.join(unknown)} not among the task's {len(names)} structures "
                f"(e.g. {', '.join(sorted(names)[:5])})",
                self.name,
            )
        if roi and not self.task.startswith("total"):
            raise ModelError("--roi-subset works with the total tasks only (as in TotalSegmentator)", self.name)
        self.roi_subset = roi or None
        self.folders = {
            tid: model_folder(
                tid, self.config["trainer"], self.config["plans"], self.config["model"], self.root, self.name
            )  # fmt: skip
            for tid in self._ids_to_run()
        }
        self.step_size = 0.8 if self.task in ("total", "total_v3", "total_mr") else 0.5
        self.resample = self.config.get("resample")
        if isinstance(self.resample, (int, float)):
            self.resample = [float(self.resample)] * 3
        self.crop_names = self.roi_subset or self.config.get("crop")
        self.crop_model: TotalSegmentatorModel | None = None
        if self.crop_names:
            robust = bool(self.config.get("robust_crop")) or self.task.endswith("_mr")
            crop_task = "total_mr" if self.task.endswith("_mr") else "total"
            self.crop_model = TotalSegmentatorModel(f"{crop_task}-{'fast' if robust else 'fastest'}", device,
                                                    root=self.root, precision=precision)  # fmt: skip
        codes = snomed_codes()
        keep = set(self.roi_subset) if self.roi_subset else names
        self.labels = {0: Label("background", (0, 0, 0))}
        for value, name in sorted(self.class_map.items()):
            if name in keep:
                self.labels[int(value)] = Label(name, _color(int(value)), codes.get(name))
        self.accepts = Accepts("MR" if self.task.endswith("_mr") else "CT", 1, "")
        self.windows = None
        self.device = resolve_device(device)
        self.trust_checkpoint = trust_checkpoint
        from medseg.models.nnunet.model import check_precision

        self.precision = check_precision(precision, self.name, self.device)
        self.version = ""
        self.description = (
            f"TotalSegmentator task {self.task} ({self.mode}), datasets {', '.join(map(str, self._ids_to_run()))} "
            f"under {self.root}, {len(self.labels) - 1} structures"
        )
        self.parts: dict[int, Any] = {}

    def _refuse_unsupported(self) -> None:
        c = self.config
        steps = []
        if c.get("cascade"):
            steps.append("a cascade")
        if c.get("crop_model"):
            steps.append(f"cropping by the {c['crop_model']} task")
        if c.get("remove_outside") or c.get("remove_mask"):
            steps.append("removing labels outside a mask")
        if self.task in ("body", "body_mr", "vertebrae_pp", "vertebrae_pp_refined", "appendicular_bones",
                         "appendicular_bones_mr"):  # fmt: skip
            steps.append("task-specific post-processing")
        if c.get("model") != "3d_fullres":
            steps.append(f"the {c.get('model')} configuration")
        if steps:
            raise ModelError(
                f"task {self.task!r} needs {', '.join(steps)}, which medseg does not reproduce; run TotalSegmentator "
                "itself for it",
                PREFIX + self.task,
            )
        if c.get("commercial"):
            raise ModelError(f"task {self.task!r} needs a TotalSegmentator licence; run TotalSegmentator itself",
                             PREFIX + self.task)  # fmt: skip

    def _ids_to_run(self) -> list[int]:
        """The model parts that hold a structure of ``--roi-subset`` (all of them without one)."""
        if not (self.multipart and self.roi_subset):
            return self.task_ids
        return [tid for tid in self.task_ids if any(n in self.roi_subset for n in self.part_maps[tid].values())]

    # --- what it is --------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return "TotalSegmentator (3D nnU-Net)"

    def weights_status(self) -> str:
        return f"{len(self.folders)} nnU-Net model(s) under {self.root}"

    def weights_digest(self) -> str | None:
        from medseg.models.nnunet.model import _combined_digest

        digests = [m.weights_digest() for m in self._part_models().values()]
        if self.crop_model is not None:
            digests.append(self.crop_model.weights_digest())
        self.weights_sha256 = _combined_digest([d for d in digests if d])
        return self.weights_sha256

    def describe(self) -> dict[str, Any]:
        parts = {str(tid): m.describe() for tid, m in self._part_models().items()}
        out = {
            **super().describe(),
            "task": self.task,
            "mode": self.mode,
            "roi_subset": self.roi_subset,
            "resample_mm": self.resample,
            "step_size": self.step_size,
            "parts": {k: {"folder": v["folder"], "checkpoints": v["checkpoints"]} for k, v in parts.items()},
        }
        if self.crop_model is not None:
            out["crop_model"] = self.crop_model.name
        return out

    def _part_models(self):
        from medseg.models.nnunet.model import NnUNetModel

        for tid, folder in self.folders.items():
            if tid not in self.parts:
                self.parts[tid] = NnUNetModel(
                    folder, self.device, folds=[0], tta=False, step_size=self.step_size,
                    trust_checkpoint=self.trust_checkpoint, name=f"{self.name}#{tid}", precision=self.precision,
                )  # fmt: skip
        return self.parts

    # --- loading -------------------------------------------------------------------------------
    def _load(self) -> None:
        for model in self._part_models().values():
            model.load()
        if self.crop_model is not None:
            self.crop_model.load()
        self.weights_digest()

    def model_grid(self, volume: Volume):
        raise ModelError("runs TotalSegmentator's own preprocessing; it has no medseg model grid", self.name)

    def prepare(self, volume: Volume):
        raise ModelError("runs TotalSegmentator's own preprocessing; it has no medseg model grid", self.name)

    def algorithm_bytes(self, volume: Volume, host_budget: int | None = None) -> int:
        """Host peak: the scan, its canonical copy and the resampled grid (float64 during the zoom, then
        int32), then the largest part's nnU-Net peak (:meth:`NnUNetModel.algorithm_bytes`, its own
        phases) on the resampled grid beside the merged labels."""
        n = int(np.prod(volume.shape))
        import nibabel as nib

        spacing = np.sqrt((np.asarray(volume.affine)[:3, :3] ** 2).sum(axis=0))
        canonical_axis = nib.orientations.io_orientation(volume.affine)[:, 0].astype(int)
        target = np.array(self.resample)[canonical_axis] if self.resample is not None else spacing
        shape = tuple(max(1, int(round(s))) for s in np.array(volume.shape) * spacing / target)
        m = int(np.prod(shape))
        grid = Volume(np.broadcast_to(np.float32(0), shape), np.diag([*target, 1.0]))
        parts = max((p.algorithm_bytes(grid, host_budget) for p in self._part_models().values()), default=0)
        steps = 4 * n + 4 * n + 12 * m  # scan (float32), canonical copy, the zoom's float64 output + int32
        return int(max(steps, 4 * n + parts + m + n))

    # --- running -------------------------------------------------------------------------------
    def run_algorithm(self, volume: Volume, progress, host_budget: int | None = None) -> AlgorithmOutput:
        """TotalSegmentator's steps around nnU-Net; each part runs under ``host_budget`` (its logits stream in
        bands when the budget asks)."""
        import nibabel as nib

        timings: dict[str, float] = {}
        notes: list[str] = []
        data = np.asarray(volume.array)
        affine = np.asarray(volume.affine, dtype=np.float64)
        zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0)).astype(np.float32)
        bbox = None
        if self.crop_model is not None:
            t = time.perf_counter()
            coarse = self.crop_model.run_algorithm(volume, None)
            inverse = {name: value for value, name in self.crop_model.class_map.items()}
            mask = np.isin(coarse.labels, [inverse[n] for n in self.crop_names])
            timings.update({f"crop.{k}": v for k, v in coarse.timings.items()})
            if not mask.any():
                notes.append(f"none of {', '.join(self.crop_names)} found by the coarse model: empty result")
                timings["totalseg.crop"] = time.perf_counter() - t
                return AlgorithmOutput(np.zeros(volume.shape, np.uint8), notes, timings)
            addon = (np.array(_CROP_ADDON_MM) / zooms).astype(int)
            idx = np.nonzero(mask)
            bbox = [(max(0, int(i.min()) - a), min(s, int(i.max()) + 1 + a)) for i, a, s in zip(idx, addon, mask.shape)]
            data = data[tuple(slice(a, b) for a, b in bbox)].astype(np.int32)
            affine = affine.copy()
            affine[:3, 3] = (affine @ np.array([bbox[0][0], bbox[1][0], bbox[2][0], 1.0]))[:3]
            timings["totalseg.crop"] = time.perf_counter() - t

        t = time.perf_counter()
        ornt = nib.orientations.io_orientation(affine)
        canon = nib.orientations.apply_orientation(data, ornt)
        canon_affine = affine @ nib.orientations.inv_ornt_aff(ornt, data.shape)
        canon_shape = canon.shape
        spacing = np.sqrt((canon_affine[:3, :3] ** 2).sum(axis=0)).astype(np.float32)
        resampled = False
        if self.resample is not None and not np.array_equal(spacing, np.array(self.resample)):
            from scipy import ndimage

            zoom = spacing / np.array(self.resample)
            canon = ndimage.zoom(np.asarray(canon, dtype=np.float32), zoom, output=np.float64, order=1,
                                 mode="nearest").astype(np.int32)  # fmt: skip
            canon_affine = canon_affine.copy()
            canon_affine[:3, :3] = canon_affine[:3, :3] / zoom
            spacing = np.sqrt((canon_affine[:3, :3] ** 2).sum(axis=0)).astype(np.float32)
            resampled = True
        timings["totalseg.resample"] = time.perf_counter() - t

        seg = self._predict(canon, spacing, progress, timings, host_budget, notes)
        del canon

        t = time.perf_counter()
        if resampled and seg.shape != canon_shape:
            from scipy import ndimage

            seg = ndimage.zoom(seg, np.array(canon_shape) / np.array(seg.shape), order=0, mode="nearest")
        back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")), ornt)
        seg = nib.orientations.apply_orientation(seg, back)
        if bbox is not None:
            full = np.zeros(volume.shape, dtype=seg.dtype)
            full[tuple(slice(a, b) for a, b in bbox)] = seg
            seg = full
        if self.roi_subset:
            seg = seg * np.isin(seg, [v for v in self.labels if v]).astype(seg.dtype)
        timings["totalseg.back"] = time.perf_counter() - t
        return AlgorithmOutput(np.ascontiguousarray(seg.astype(np.uint8)), notes, timings)

    def _predict(
        self, canon: np.ndarray, spacing, progress, timings: dict, host_budget: int | None = None, notes=None
    ) -> np.ndarray:
        """Every part's labels on the canonical, resampled grid, merged into the task's class ids."""
        shape = canon.shape
        split = self.multipart and int(np.prod(shape)) > _SPLIT_VOXELS and shape[2] > 200
        if split:  # TotalSegmentator's three slabs along the third (S) axis, 20 voxels of overlap
            third, m = shape[2] // 3, _SPLIT_MARGIN
            slabs = [slice(0, third + m), slice(third + 1 - m, third * 2 + m), slice(third * 2 + 1 - m, None)]
            keep = [(slice(0, third), slice(0, -m)), (slice(third, third * 2), slice(m - 1, -m)),
                    (slice(third * 2, None), slice(m - 1, None))]  # fmt: skip
        else:
            slabs, keep = [slice(None)], [(slice(None), slice(None))]
        # nnU-Net's axis order (c, z, y, x), float32: made once, every part reads the same slabs
        inputs = [np.ascontiguousarray(canon[:, :, slab].transpose(2, 1, 0)[None], dtype=np.float32) for slab in slabs]
        zyx = [float(s) for s in spacing[::-1]]
        inverse = {name: value for value, name in self.class_map.items()}
        merged = np.zeros(shape, dtype=np.uint8)
        parts = self._part_models()
        for i, (tid, model) in enumerate(parts.items()):
            lut = None
            if self.multipart:
                part = self.part_maps[tid]
                lut = np.zeros(max(part) + 1, dtype=np.uint8)
                for value, name in part.items():
                    lut[value] = inverse[name]
            for data, (dst, src) in zip(inputs, keep):
                sub = _Progress(progress, i, len(parts))
                part_notes: list[str] = []
                seg = model.segment_array(data, zyx, sub, timings, host_budget, part_notes)  # copies its input
                if notes is not None:
                    notes.extend(n for n in part_notes if n not in notes)
                seg = seg.transpose(2, 1, 0)[:, :, src]
                if lut is not None:
                    if seg.size and int(seg.max()) >= len(lut):
                        lut = np.pad(lut, (0, int(seg.max()) + 1 - len(lut)))
                    seg = lut[seg]
                target = merged[:, :, dst]
                np.copyto(target, seg.astype(np.uint8), where=seg != 0)
        return merged


class _Progress:
    """One part's share of the progress bar."""

    def __init__(self, progress, index: int, count: int) -> None:
        self.progress, self.index, self.count = progress, index, count

    def update(self, fraction: float) -> None:
        if self.progress is not None:
            self.progress.update((self.index + fraction) / self.count)


def _part_tables(maps, task: str):
    """TotalSegmentator's part class maps and task-id -> part name for a multi-part task."""
    tables = {
        "total": ("class_map_5_parts", "map_taskid_to_partname_ct"),
        "total_v3": ("class_map_5_parts_total_v3", "map_taskid_to_partname_ct_v3"),
        "total_mr": ("class_map_parts_mr", "map_taskid_to_partname_mr"),
        "headneck_muscles": ("class_map_parts_headneck_muscles", "map_taskid_to_partname_headneck_muscles"),
    }
    if task not in tables:
        raise ModelError(f"task {task!r} has several models but no part map medseg knows", PREFIX + task)
    parts, ids = tables[task]
    return getattr(maps, parts), getattr(maps, ids)


def _color(value: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(value)
    return tuple(int(c) for c in rng.integers(40, 256, 3))
