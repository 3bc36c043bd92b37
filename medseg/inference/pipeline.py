"""Scan in, labels out: the pipeline behind ``medseg infer`` (and, per case, the batch runner).

:class:`Segmenter` loads a model once and segments many volumes; :func:`infer_file` reads a file,
segments it and writes the label NIfTI, its JSON sidecar and optional statistics and preview.

Example:
    >>> seg = Segmenter("phantom-unet3d", device="cpu")  # doctest: +SKIP
    >>> result = seg.segment(read_volume("scan.nii.gz"))  # doctest: +SKIP
    >>> result.labels.shape == result.image.shape  # doctest: +SKIP
    True
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from medseg import __version__
from medseg.errors import InputError, MedsegError
from medseg.inference.plan import Plan, resolve_device
from medseg.io.atomic import TMP_MARKER, write_text_atomic
from medseg.io.validate import channels_of
from medseg.models.spec import ModelSpec
from medseg.postprocess import label_counts as count_labels
from medseg.postprocess import label_statistics
from medseg.progress import NULL_PROGRESS, Progress
from medseg.volume import Volume

_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm.gz", ".dcm")
OUTPUT_FORMATS = ("nifti", "dicom-seg", "nifti+dicom-seg")


@dataclass
class Segmentation:
    image: Volume
    labels: np.ndarray
    plan: Plan
    timings: dict[str, float] = field(default_factory=dict)


class Segmenter:
    """A model loaded once, ready to segment volumes.

    Args:
        model: a model name from ``configs/models``, a ModelSpec YAML path, or a ModelSpec.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    """

    def __init__(
        self,
        model: str | Path | ModelSpec | None = None,
        device: str = "auto",
        gpu_memory: str | int | None = None,
        host_memory: str | int | None = None,
        trust_bundle: bool = False,
    ) -> None:
        from medseg.inference.memory import parse_bytes
        from medseg.models.checkpoints import load_network
        from medseg.models.registry import resolve_spec

        self.spec = resolve_spec(model, trust_bundle=trust_bundle)
        self.device = resolve_device(device)
        #: memory budgets in bytes for the planner; None = what is free when planning (``auto``)
        self.gpu_budget = parse_bytes(gpu_memory)
        self.host_budget = parse_bytes(host_memory)
        self._memory_model = None
        t0 = time.perf_counter()
        self.network, self.weights_sha256 = load_network(self.spec, self.device)
        from medseg.inference.speed import fold_batchnorm

        #: batch norms folded into the convolutions before them (same maths, one pass less)
        self.folded_batchnorms = fold_batchnorm(self.network)
        self._channels_last = False
        self.load_seconds = time.perf_counter() - t0

    def check_input(self, volume: Volume) -> None:
        """Refuse a volume whose channel count the network cannot take."""
        have, want = channels_of(volume), self.spec.network.in_channels
        if have == want:
            return
        if have > 1 and want == 1:
            raise InputError(
                f"is a 4D image with {have} volumes; model '{self.spec.name}' segments a single 3D volume "
                "(extract one volume first)",
                volume.source,
            )
        raise InputError(
            f"has {have} channel(s) but model '{self.spec.name}' expects in_channels={want}", volume.source
        )

    def plan_for(self, volume: Volume, overlap: float | None = None) -> Plan:
        """The memory planner's plan for ``volume`` under this segmenter's budgets (see ``medseg plan``)."""
        import warnings

        from medseg.inference.engine import MemoryFallbackWarning

        result = self.plan_memory(volume, overlap)
        if not result.fits:
            if getattr(self, "gpu_budget", None) is not None or getattr(self, "host_budget", None) is not None:
                raise MedsegError(result.message)
            warnings.warn(result.message + "; trying the smallest plan", MemoryFallbackWarning, stacklevel=2)
        plan = result.plan
        if plan.device == "cpu" and self.spec.network.spatial_dims == 3 and plan.host_allocator == "fast":
            from medseg.inference.speed import tune_windows

            # smaller batches than planned use less memory, so every candidate fits the budget
            batch, cl = tune_windows(self.network, self.spec.network.in_channels, plan.roi_size, plan.sw_batch_size)
            plan = plan.replace(sw_batch_size=batch, channels_last=cl)
        return plan

    def _use_layout(self, plan: Plan) -> None:
        """Put the weights in the plan's memory layout (channels_last_3d or the default)."""
        import torch

        want = bool(plan.channels_last)
        if want != getattr(self, "_channels_last", False) and isinstance(self.network, torch.nn.Module):
            fmt = torch.channels_last_3d if want else torch.contiguous_format
            self.network.to(memory_format=fmt)
            self._channels_last = want

    def plan_memory(self, volume: Volume, overlap: float | None = None):
        """The planner's full answer (plan, per-component estimate, whether it fits) for ``volume``."""
        from medseg.inference.memory import NetworkModel, Workload, plan_memory, process_rss_bytes

        if getattr(self, "_memory_model", None) is None:  # built on first use, then cached
            self._memory_model = NetworkModel.for_spec(self.spec, self.network)
            # this process's size once the model is loaded (later readings include freed heap),
            # less the weights and the scan already in memory: both are their own terms
            weights_here = self._memory_model.weights if self.device == "cpu" else 0
            scan = getattr(volume.array, "nbytes", 0) if isinstance(volume.array, np.ndarray) else 0
            self._framework_host = max(0, process_rss_bytes() - weights_here - scan)
        work = Workload.from_volume(volume, self.spec)
        return plan_memory(
            work,
            self.spec,
            self._memory_model,
            self.device,
            gpu_budget=getattr(self, "gpu_budget", None),
            host_budget=getattr(self, "host_budget", None),
            overlap=overlap,
            framework_host=self._framework_host,
        )

    def segment(self, volume: Volume, plan: Plan | None = None, progress: Progress = NULL_PROGRESS) -> Segmentation:
        """Labels on ``volume``'s own grid (same shape, voxel for voxel)."""
        from medseg.inference.engine import infer_labels
        from medseg.inference.preprocess import preprocess_image

        self.check_input(volume)
        plan = plan or self.plan_for(volume)
        timings = {}
        t = time.perf_counter()
        progress.stage("preprocess")
        image, record = preprocess_image(volume, self.spec)
        timings["preprocess"] = time.perf_counter() - t
        t = time.perf_counter()
        progress.stage("inference")
        n_classes = self.spec.network.out_channels
        dims = self.spec.network.spatial_dims
        self._use_layout(plan)
        labels = infer_labels(self.network, image, plan, record, n_classes, dims, progress.update)
        # windows and inversion to the source grid are interleaved (slab streaming): one timing
        timings["inference"] = time.perf_counter() - t
        timings["invert"] = 0.0
        if labels.shape != volume.shape:  # a broken invariant, never a user error
            raise AssertionError(f"labels {labels.shape} do not match the input grid {volume.shape}")
        return Segmentation(volume, labels, plan, timings)


@dataclass
class InferResult:
    input: Path
    labels_path: Path
    sidecar_path: Path
    outputs: dict[str, str]
    label_counts: dict[str, int]
    shape: tuple[int, ...]
    seconds: float
    model: str
    device: str

    def summary_line(self) -> str:
        found = sum(1 for v in self.label_counts.values() if v > 0)
        dims = "x".join(str(s) for s in self.shape)
        return (
            f"{self.input.name} -> {self.labels_path.name}: {found}/{len(self.label_counts)} labels found, "
            f"{dims} voxels, {self.seconds:.1f}s ({self.model}, {self.device})"
        )


def output_stem(path: Path) -> str:
    if path.is_dir():
        return path.name  # a DICOM folder: "1.2.3" keeps its dots
    name = path.name
    for suffix in _IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def default_output(input_path: Path) -> Path:
    base = input_path.parent if input_path.is_file() else input_path.parent
    return base / f"{output_stem(input_path)}_seg.nii.gz"


def _outputs_for(labels_path: Path) -> dict[str, Path]:
    stem = output_stem(labels_path)
    folder = labels_path.parent
    return {
        "labels": labels_path,
        "sidecar": folder / f"{stem}.json",
        "stats_csv": folder / f"{stem}_stats.csv",
        "stats_json": folder / f"{stem}_stats.json",
        "preview": folder / f"{stem}_preview.png",
    }


def _stats_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0].keys()) if rows else ["label", "name"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def output_paths(
    input_path: str | Path, output: str | Path | None = None, output_format: str = "nifti"
) -> dict[str, Path]:
    """Where ``infer`` writes for ``input_path``: labels, DICOM SEG, sidecar, stats and preview paths.

    With ``output_format="dicom-seg"`` the output (default ``<stem>_seg.dcm``) is the SEG file;
    with ``nifti+dicom-seg`` the SEG goes beside the label NIfTI under the same stem.
    """
    if output_format not in OUTPUT_FORMATS:
        raise MedsegError(f"unknown output format '{output_format}' (choose from {', '.join(OUTPUT_FORMATS)})")
    if output_format == "dicom-seg":
        seg_path = (
            Path(output)
            if output
            else default_output(Path(input_path)).with_name(f"{output_stem(Path(input_path))}_seg.dcm")
        )
        if not seg_path.name.lower().endswith(".dcm"):
            raise MedsegError("DICOM SEG output must be a .dcm file", seg_path)
        if TMP_MARKER in seg_path.name:
            raise MedsegError("output name is reserved for temporary files", seg_path)
        paths = _outputs_for(seg_path.with_name(seg_path.name[: -len(".dcm")] + ".nii.gz"))
        del paths["labels"]  # keys present are exactly the files this run writes
        paths["dicom_seg"] = seg_path
        return paths
    labels_path = Path(output) if output else default_output(Path(input_path))
    if not labels_path.name.lower().endswith((".nii", ".nii.gz")):
        raise MedsegError("output must be a .nii or .nii.gz file", labels_path)
    if TMP_MARKER in labels_path.name:
        raise MedsegError("output name is reserved for temporary files", labels_path)
    paths = _outputs_for(labels_path)
    if output_format == "nifti+dicom-seg":
        paths["dicom_seg"] = labels_path.parent / f"{output_stem(labels_path)}.dcm"
    return paths


def check_dicom_seg_input(volume: Volume) -> None:
    """Fail before inference when a DICOM SEG cannot be written for this input."""
    from medseg.io.dicom_seg import require_highdicom

    require_highdicom()
    dicom = volume.meta.get("dicom")
    if not dicom:
        raise InputError("DICOM SEG output needs a DICOM input series; use --format nifti", volume.source)
    if dicom.get("n_volumes", 1) > 1 or any(f.get("mosaic") is not None for f in dicom["frames"]):
        raise InputError("DICOM SEG output is not supported for 4D or Siemens mosaic series", volume.source)


def write_outputs(
    input_path: Path,
    segmentation: Segmentation,
    segmenter: Segmenter,
    paths: dict[str, Path],
    stats: bool = False,
    preview: bool = False,
    timings: dict[str, float] | None = None,
    statistics: list[dict] | None = None,
    input_sha256: str | None = None,
) -> tuple[dict[str, str], dict[str, int]]:
    """Write labels (NIfTI and/or DICOM SEG), optional stats/preview, then the sidecar, each atomically.

    The sidecar is written last, so its presence means the case is complete. If any write fails,
    the files this call already wrote are removed. Returns ``(outputs, label_counts)``.
    ``statistics``: :func:`~medseg.postprocess.label_statistics` rows already computed for these
    labels (a batch needs them for its cohort table); the label counts are then read from them.
    ``input_sha256``: the input file's sha256 when the caller has already hashed it (a batch does,
    for its ledger), so the sidecar does not read the file again.
    """
    from medseg.io import write_labels
    from medseg.models.checkpoints import sha256_of

    volume, spec = segmentation.image, segmenter.spec
    names = spec.label_names()
    if statistics is None and stats:
        statistics = label_statistics(segmentation.labels, volume, {k: v for k, v in names.items() if k != 0})
    if statistics is None:
        counts = count_labels(segmentation.labels, spec.network.out_channels)
    else:  # every label present or named has a row; the rest are absent
        found = {int(r["label"]): int(r["voxels"]) for r in statistics}
        counts = [found.get(i, 0) for i in range(max(spec.network.out_channels, max(found, default=0) + 1))]
    label_counts = {names.get(i, f"label_{i}"): int(counts[i]) for i in range(1, len(counts))}
    written: list[Path] = []
    t = time.perf_counter()
    try:
        outputs = {}
        if paths.get("labels") is not None:
            written.append(write_labels(segmentation.labels, volume, paths["labels"]))
            outputs["labels"] = str(paths["labels"])
        if paths.get("dicom_seg") is not None:
            from medseg.io.dicom_seg import write_dicom_seg

            label_info = {k: (v.name, tuple(v.color)) for k, v in spec.labels.items() if k != 0}
            written.append(write_dicom_seg(segmentation.labels, volume, paths["dicom_seg"], label_info, spec.name))
            outputs["dicom_seg"] = str(paths["dicom_seg"])
        if stats:
            written.append(write_text_atomic(paths["stats_csv"], _stats_csv(statistics)))
            written.append(write_text_atomic(paths["stats_json"], json.dumps(statistics, indent=2) + "\n"))
            outputs.update(stats_csv=str(paths["stats_csv"]), stats_json=str(paths["stats_json"]))
        if preview:
            from medseg.io.preview import write_preview

            colors = {k: v.color for k, v in spec.labels.items()}
            written.append(write_preview(paths["preview"], volume, segmentation.labels, colors, names))
            outputs["preview"] = str(paths["preview"])
        timings = {**(timings or {}), **segmentation.timings, "write": time.perf_counter() - t}
        if "total" in timings:
            timings["total"] += timings["write"]
        outputs["sidecar"] = str(paths["sidecar"])
        if input_sha256 is None and input_path.is_file():
            input_sha256 = sha256_of(input_path)
        sidecar = _sidecar(
            input_path, volume, spec, segmenter, segmentation, label_counts, outputs, timings, input_sha256
        )
        written.append(write_text_atomic(paths["sidecar"], json.dumps(sidecar, indent=2) + "\n"))
    except BaseException:
        for p in written:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        raise
    return outputs, label_counts


def infer_file(
    input_path: str | Path,
    output: str | Path | None = None,
    model: str | Path | ModelSpec | Segmenter | None = None,
    device: str = "auto",
    stats: bool = False,
    preview: bool = False,
    overlap: float | None = None,
    progress: Progress = NULL_PROGRESS,
    output_format: str = "nifti",
    gpu_memory: str | int | None = None,
    host_memory: str | int | None = None,
    trust_bundle: bool = False,
) -> InferResult:
    """Segment one scan (file or DICOM folder) and write its outputs atomically (nothing is left behind on failure).

    ``output_format``: ``nifti`` (label NIfTI), ``dicom-seg`` (DICOM SEG referencing the source
    series), or ``nifti+dicom-seg`` (both). ``gpu_memory``/``host_memory``: budgets for the memory
    planner (``"12GB"``, bytes, or None for what is free); ignored when ``model`` is a Segmenter.
    """
    from medseg.io import read_volume

    t_start = time.perf_counter()
    input_path = Path(input_path)
    paths = output_paths(input_path, output, output_format)
    progress.stage("read")
    volume = read_volume(input_path)
    if paths.get("dicom_seg") is not None:
        check_dicom_seg_input(volume)
    timings = {"read": time.perf_counter() - t_start}
    if not isinstance(model, Segmenter):
        progress.stage("load model")
    segmenter = (
        model if isinstance(model, Segmenter) else Segmenter(model, device, gpu_memory, host_memory, trust_bundle)
    )
    timings["model_load"] = 0.0 if isinstance(model, Segmenter) else segmenter.load_seconds
    segmenter.check_input(volume)
    result = segmenter.segment(volume, segmenter.plan_for(volume, overlap), progress)
    progress.stage("write")
    timings["total"] = time.perf_counter() - t_start  # write_outputs adds the write time
    outputs, label_counts = write_outputs(input_path, result, segmenter, paths, stats, preview, timings)
    return InferResult(
        input_path,
        paths["labels"] if paths.get("labels") is not None else paths["dicom_seg"],
        paths["sidecar"],
        outputs,
        label_counts,
        volume.shape,
        time.perf_counter() - t_start,
        segmenter.spec.name,
        segmenter.device,
    )


def _dicom_input(volume: Volume) -> dict:
    dicom = volume.meta.get("dicom")
    if not dicom:
        return {}
    keys = ("stack_id", "series_instance_uid", "study_instance_uid", "series_number", "series_description")
    return {
        "dicom": {
            **{k: dicom.get(k) for k in keys},
            "resampled": dicom.get("resampled"),
            "n_files": len(dicom.get("files", [])),
        },
        "warnings": list(volume.meta.get("warnings", [])),
    }


def _sidecar(input_path, volume, spec, segmenter, result, label_counts, outputs, timings, input_sha256) -> dict:
    import monai
    import torch

    return {
        "medseg_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": {
            "path": str(input_path),
            "sha256": input_sha256,
            "shape": list(volume.shape),
            "spacing_mm": [round(s, 6) for s in volume.spacing],
            "orientation": "".join(volume.axcodes),
            "affine": volume.affine.tolist(),
            **_dicom_input(volume),
        },
        "model": {
            "name": spec.name,
            "network": spec.network.cls,
            "spatial_dims": spec.network.spatial_dims,
            "weights": str(spec.weights_path()),
            "weights_sha256": segmenter.weights_sha256,
        },
        "labels": {str(k): {"name": v.name, "color": list(v.color)} for k, v in sorted(spec.labels.items())},
        "label_voxels": label_counts,
        "plan": result.plan.to_dict(),
        "preprocessing": spec.preprocessing.model_dump(),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "outputs": outputs,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "monai": monai.__version__,
            "device": segmenter.device,
        },
    }
