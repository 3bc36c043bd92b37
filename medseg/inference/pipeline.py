"""Scan in, labels out: the one case pipeline behind ``medseg infer``, ``medseg plan`` and every batch.

A :class:`Segmenter` holds a model loaded once (any :class:`~medseg.models.base.Model`) and the
memory budgets, and serves cases through five stages, each a method:

``start_case`` (where the outputs go) -> ``read_case`` (the scan, with the reader options; DICOM
SEG can be written for it) -> ``check`` (the model takes it) -> ``plan`` (the memory planner, window tuning included)
-> ``segment`` (the model's preparation, forward step over the plan's windows and way back to the
source grid) -> ``write`` (labels, statistics, preview, sidecar).

``medseg infer`` runs them back to back (:func:`infer_file`, :meth:`Segmenter.run`); ``medseg plan``
runs ``read_case``, ``check`` and ``plan`` and prints what ``segment`` would run; the batch's reader, compute and writer
stages (threads, worker processes or Dask workers, :mod:`medseg.batch.case`) call the same
methods. A :class:`Case` carries one timing record through them: the sidecar and the batch ledger
store the same numbers. Errors are exceptions; what a user sees of one is
:func:`medseg.errors.describe_error`, in the CLI and in a batch's failed case alike.

Example:
    >>> seg = Segmenter("phantom-unet3d", device="cpu")  # doctest: +SKIP
    >>> result = seg.segment(read_volume("scan.nii.gz"))  # doctest: +SKIP
    >>> result.labels.shape == result.image.shape  # doctest: +SKIP
    True
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg import __version__
from medseg.errors import InputError, MedsegError
from medseg.inference.budget import auto_host_budget, framework_host_bytes, parse_bytes
from medseg.inference.crop import Region, align_to_model_grid, crop, paste
from medseg.inference.engine import MemoryFallbackWarning, infer_labels
from medseg.inference.estimate import Workload
from medseg.inference.host_memory import process_rss_bytes
from medseg.inference.modality import check_modality, look_at
from medseg.inference.outputs import OUTPUT_FORMATS, check_dicom_seg_input, output_paths, write_outputs
from medseg.inference.plan import Plan
from medseg.inference.planner import PlanResult, plan_memory, plan_without_network
from medseg.io import ReadOptions, read_volume
from medseg.models.base import AlgorithmOutput, Model
from medseg.models.ct_anatomy.body import body_region
from medseg.models.registry import check_model_options, open_model
from medseg.progress import NULL_PROGRESS, Progress
from medseg.volume import Volume


class ModalityWarning(UserWarning):
    """A model was run on a scan that does not look like what it accepts (``--force-modality``)."""

    medseg_warning = True


@dataclass(frozen=True)
class CaseOptions:
    """How a case is run and what is written for it (the same for every case of a batch).

    Attributes:
        stats: write per-label statistics files.
        preview: write a PNG montage.
        overlap: sliding-window overlap (None: the model's).
        output_format: ``nifti``, ``dicom-seg`` or ``nifti+dicom-seg``.
        read: reader options (DICOM series, irregular spacing, tilt).
        statistics: compute per-label statistics even without ``stats`` (a batch's cohort table).
        force_modality: run a model on a scan that does not look like what it accepts (the
            mismatch is kept in the sidecar as a warning).
        crop_to_body: segment only the body's bounding box (CT; labels outside are background).
        split_masks: also write one binary mask per label (``<stem>_masks/<name>.nii.gz``).
    """

    stats: bool = False
    preview: bool = False
    overlap: float | None = None
    output_format: str = "nifti"
    read: ReadOptions = field(default_factory=ReadOptions)
    statistics: bool = False
    force_modality: bool = False
    crop_to_body: bool = False
    split_masks: bool = False

    def __post_init__(self) -> None:
        if self.output_format not in OUTPUT_FORMATS:
            raise MedsegError(f"unknown output format '{self.output_format}' (choose from {', '.join(OUTPUT_FORMATS)})")
        if self.overlap is not None and not 0.0 <= float(self.overlap) < 1.0:
            raise MedsegError(f"overlap must be in [0, 1), got {self.overlap}")


@dataclass
class Case:
    """One case travelling through the stages; large arrays are dropped once written."""

    input_path: Path
    paths: dict[str, Path]
    options: CaseOptions
    t0: float = field(default_factory=time.perf_counter)
    volume: Volume | None = None
    plan: Plan | None = None
    labels: np.ndarray | None = None
    input_sha256: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    #: a batch's case id and the input's size/mtime fingerprint (for its ledger)
    case_id: str = ""
    fingerprint: Any = None
    #: what the modality check found, the crop segmented, and notes from the model (the sidecar's)
    modality: dict | None = None
    region: Region | None = None
    cropped: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass
class Segmentation:
    """Labels on ``image``'s own grid, the plan that made them and the stage timings."""

    image: Volume
    labels: np.ndarray
    plan: Plan
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class InferResult:
    """What one case produced: its files, label counts, statistics and the timing record."""

    input: Path
    labels_path: Path
    sidecar_path: Path
    outputs: dict[str, str]
    label_counts: dict[str, int]
    shape: tuple[int, ...]
    seconds: float
    model: str
    device: str
    plan: Plan
    timings: dict[str, float] = field(default_factory=dict)
    statistics: list[dict] | None = None

    def summary_line(self) -> str:
        found = sum(1 for v in self.label_counts.values() if v > 0)
        dims = "x".join(str(s) for s in self.shape)
        return (
            f"{self.input.name} -> {self.labels_path.name}: {found}/{len(self.label_counts)} labels found, "
            f"{dims} voxels, {self.seconds:.1f}s ({self.model}, {self.device})"
        )


class Segmenter:
    """A model loaded once, serving cases.

    Args:
        model: a model name (``medseg models``), a ModelSpec YAML, a MONAI bundle folder, a
            ModelSpec or a :class:`~medseg.models.base.Model`.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (ignored for an already opened Model).
        gpu_memory, host_memory: budgets for the planner (``"12GB"``, bytes, or None: what is free).
        trust_bundle: evaluate a MONAI bundle's config (runs its code).
        tune_allocator: let each run set glibc's allocator for its windows (the ``infer``, ``plan``
            and ``batch`` commands ask for it; library use and the viewer leave the process alone).
        model_options: the family's options (``open_model``'s ``options``).
        plan_device: plan for this device instead of the model's (a GPU absent here; see ``plan_device``).
    """

    def __init__(
        self,
        model: str | Path | Model | None = None,
        device: str = "auto",
        gpu_memory: str | int | None = None,
        host_memory: str | int | None = None,
        trust_bundle: bool = False,
        tune_allocator: bool = False,
        model_options: dict | None = None,
        plan_device: str | None = None,
    ) -> None:
        self.model = open_model(model, device, trust_bundle, model_options).load()
        self.device = self.model.device
        #: the device plans are made for when it is not the one the model runs on here: ``medseg plan
        #: --device cuda --gpu-memory 12GB`` on a machine without the GPU (the model is traced on this CPU)
        self.plan_device = plan_device
        #: memory budgets in bytes for the planner; None = what is free when planning (``auto``)
        self.gpu_budget = parse_bytes(gpu_memory)
        self.host_budget = parse_bytes(host_memory)
        self.tune_allocator = tune_allocator
        #: said after "nothing fits the budget" (a batch worker plans within its share of the host)
        self.budget_note = ""
        self.load_seconds = self.model.load_seconds

    # --- stages (start_case and read_case need no model) ------------------------------------------
    def check(self, case: Case) -> Case:
        """The model takes this volume: channels, and the modality it accepts (unless forced)."""
        self.model.check_input(case.volume)
        case.modality = check_modality(self.model, case.volume, case.options.force_modality)
        if case.modality and case.modality.get("forced"):
            warnings.warn(case.modality["warning"], ModalityWarning, stacklevel=2)
        return case

    def plan(self, case: Case, progress: Progress = NULL_PROGRESS) -> Case:
        """The memory plan (for the body's box with ``crop_to_body``)."""
        t = time.perf_counter()
        case.plan = self.plan_case(self.work_volume(case), case.options.overlap, progress=progress).plan
        case.timings["plan"] = time.perf_counter() - t
        return case

    def segment_case(self, case: Case, progress: Progress = NULL_PROGRESS) -> Case:
        result = self.segment(self.work_volume(case), case.plan, progress)
        case.labels = result.labels if case.region is None else paste(result.labels, case.volume.shape, case.region)
        case.timings.update(result.timings)
        case.notes.extend(result.notes)
        return case

    def work_volume(self, case: Case) -> Volume:
        """What the model segments: the scan, or with ``crop_to_body`` its body's box (found once)."""
        if case.options.crop_to_body and not case.cropped:
            case.region, case.cropped = self._body_region(case), True
        return case.volume if case.region is None else crop(case.volume, case.region)

    def _body_region(self, case: Case) -> Region | None:
        look = look_at(case.volume)
        if not (look.kind == "CT" and look.hu):
            message = f"--crop-to-body needs CT in HU to find the body; the scan looks like {look.words}"
            raise InputError(message, case.volume.source)
        t = time.perf_counter()
        region = body_region(case.volume)  # the classical model's coarse body mask
        if region is not None and self.model.has_network:  # a network resamples to its own grid
            region = align_to_model_grid(region, case.volume.shape, self.model.model_grid(case.volume))
        case.timings["crop"] = time.perf_counter() - t
        if region is None:
            case.notes.append("crop to body: no body found; the whole scan was segmented")
        return region

    def write(self, case: Case) -> InferResult:
        """Every output of the case; the timing record is final here (sidecar and ledger share it)."""
        opts = case.options
        written = write_outputs(
            case.input_path,
            case.volume,
            case.labels,
            case.plan,
            self.model,
            case.paths,
            case.timings,
            case.t0,
            stats=opts.stats,
            preview=opts.preview,
            statistics=opts.statistics,
            input_sha256=case.input_sha256 if case.input_path.is_file() else None,
            extra=self._sidecar_extra(case),
        )
        result = InferResult(
            case.input_path,
            case.paths["labels"] if case.paths.get("labels") is not None else case.paths["dicom_seg"],
            case.paths["sidecar"],
            written.outputs,
            written.label_counts,
            case.volume.shape,
            written.timings["total"],
            self.model.name,
            self.device,
            case.plan,
            written.timings,
            written.statistics,
        )
        case.volume = case.labels = None  # written: the arrays are no longer needed
        return result

    @staticmethod
    def _sidecar_extra(case: Case) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if case.modality is not None:
            extra["modality"] = case.modality
        if case.options.crop_to_body:
            extra["crop_to_body"] = case.region.to_dict(case.volume.shape) if case.region else None
        extra["notes"] = list(case.notes)
        return extra

    def process(self, case: Case, progress: Progress = NULL_PROGRESS) -> InferResult:
        """The model's stages of a case that has been read: check, plan, segment, write."""
        self.check(case)
        progress.stage("plan")
        self.plan(case, progress)
        self.segment_case(case, progress)
        progress.stage("write")
        return self.write(case)

    def run(
        self,
        input_path: str | Path,
        output: str | Path | None = None,
        options: CaseOptions | None = None,
        progress: Progress = NULL_PROGRESS,
    ) -> InferResult:
        """Every stage of one case, back to back."""
        case = start_case(input_path, output, options)
        progress.stage("read")
        return self.process(read_case(case), progress)

    # --- planning ------------------------------------------------------------------------------
    def plan_case(
        self, volume: Volume, overlap: float | None = None, strict: bool = True, progress: Progress = NULL_PROGRESS
    ) -> PlanResult:
        """The plan ``segment`` runs for ``volume``: the memory planner's choice under this
        segmenter's budgets, then the window batch and memory layout timed on this CPU.

        ``strict``: a plan that does not fit an explicit budget is an error (otherwise it is
        returned with ``fits=False``, as ``medseg plan`` shows it); with ``auto`` budgets the
        smallest plan is run with a warning.
        """
        model = self.model
        check_model_options(model, overlap=overlap)
        framework = self._framework_host(volume)
        absent = self.plan_device is not None and self.plan_device != self.device
        if absent and (not model.has_network or self.gpu_budget is None):
            raise MedsegError(
                f"planning for {self.plan_device}, a GPU this machine does not have, needs an explicit --gpu-memory "
                "and a network run by medseg's engine (MONAI ModelSpecs and bundles); "
                f"{model.name} ({model.family}) is not planned that way yet"
                if self.gpu_budget is not None
                else f"planning for {self.plan_device}, a GPU this machine does not have, needs --gpu-memory "
                "(e.g. 12GB or 24GB)"
            )
        if not model.has_network:
            # the budget is resolved once: the plan carries it, and the run follows the plan (nnU-Net decides
            # from it whether its logits stream and how many windows run at once)
            budget = self.host_budget if self.host_budget is not None else auto_host_budget()
            result = plan_without_network(model.algorithm_bytes(volume, budget), framework, budget)
        else:
            result = plan_memory(
                Workload.of(volume, model),
                model.windows,
                model.memory_terms(),
                self.plan_device or self.device,
                gpu_budget=self.gpu_budget,
                host_budget=self.host_budget,
                overlap=overlap,
                framework_host=framework,
                tune_allocator=self.tune_allocator,
            )
        if not result.fits and strict:
            size = f"the scan is {'x'.join(map(str, volume.shape))} ({np.prod(volume.shape) / 1e6:.1f} M voxels): "
            message = size + (f"{result.message}; {self.budget_note}" if self.budget_note else result.message)
            if self.gpu_budget is not None or self.host_budget is not None:
                raise MedsegError(message)
            warnings.warn(message + "; trying the smallest plan", MemoryFallbackWarning, stacklevel=2)
        plan = result.plan
        if absent:
            note = f"planned for {self.plan_device}, which this machine does not have (traced on its CPU)"
            result.plan = plan = plan.replace(notes=(*plan.notes, note))
        if model.has_network and plan.device == "cpu" and model.spatial_dims == 3 and plan.host_allocator == "fast":
            # smaller batches than planned use less memory, so every candidate fits the budget
            progress.stage("time windows")  # the first run on this CPU times each batch (cached after)
            batch, channels_last = model.tune_windows(plan.roi_size, plan.sw_batch_size)
            result.plan = plan.replace(sw_batch_size=batch, channels_last=channels_last)
        return result

    def plan_for(self, volume: Volume, overlap: float | None = None) -> Plan:
        """The plan ``segment`` runs for ``volume`` (see :meth:`plan_case`)."""
        return self.plan_case(volume, overlap).plan

    def _framework_host(self, volume: Volume) -> int:
        """The process's own host memory around the model (:func:`~medseg.inference.budget.framework_host_bytes`)."""
        model = self.model
        terms = model.memory_terms()
        weights_here = terms.weights if terms is not None and self.device == "cpu" else 0
        scan = volume.array.nbytes if isinstance(volume.array, np.ndarray) else 0
        key = (__version__, torch.__version__, model.family, model.name, model.weights_sha256, self.device)
        return framework_host_bytes(key, lambda: max(0, process_rss_bytes() - weights_here - scan))

    # --- the model's work ----------------------------------------------------------------------
    def segment(self, volume: Volume, plan: Plan | None = None, progress: Progress = NULL_PROGRESS) -> Segmentation:
        """Labels on ``volume``'s own grid (same shape, voxel for voxel)."""
        model = self.model
        model.check_input(volume)
        plan = plan or self.plan_for(volume)
        timings, notes = {}, []
        if not model.has_network:
            t = time.perf_counter()
            progress.stage("segment")
            labels = model.run_algorithm(volume, progress, plan.budget_bytes.get("host"))
            if isinstance(labels, AlgorithmOutput):  # its own steps' timings go into the sidecar too
                notes, steps, labels = list(labels.notes), dict(labels.timings), labels.labels
                timings.update({k: round(float(v), 4) for k, v in steps.items()})
            timings["inference"] = time.perf_counter() - t
        else:
            t = time.perf_counter()
            progress.stage("preprocess")
            image, record = model.prepare(volume)
            timings["preprocess"] = time.perf_counter() - t
            t = time.perf_counter()
            progress.stage("inference")
            model.use_layout(plan.channels_last)
            # windows and the way back to the source grid are interleaved (slab streaming): one timing
            labels = infer_labels(model, image, plan, record, progress.update)
            timings["inference"] = time.perf_counter() - t
        if labels.shape != volume.shape:  # a broken invariant, never a user error
            raise AssertionError(f"labels {labels.shape} do not match the input grid {volume.shape}")
        return Segmentation(volume, labels, plan, timings, notes)


def start_case(input_path: str | Path, output: str | Path | None = None, options: CaseOptions | None = None) -> Case:
    """A new case: where its outputs go (an unusable output path fails here, before any work)."""
    options = options or CaseOptions()
    input_path = Path(input_path)
    return Case(input_path, output_paths(input_path, output, options.output_format, options.split_masks), options)


def read_case(case: Case) -> Case:
    """Read the case's scan with its reader options; DICOM SEG output is checked against it at once."""
    t = time.perf_counter()
    case.volume = read_volume(case.input_path, case.options.read)
    case.timings["read"] = time.perf_counter() - t
    if case.paths.get("dicom_seg") is not None:
        check_dicom_seg_input(case.volume)
    return case


def infer_file(
    input_path: str | Path,
    output: str | Path | None = None,
    model: str | Path | Model | Segmenter | None = None,
    device: str = "auto",
    stats: bool = False,
    preview: bool = False,
    overlap: float | None = None,
    progress: Progress = NULL_PROGRESS,
    output_format: str = "nifti",
    gpu_memory: str | int | None = None,
    host_memory: str | int | None = None,
    trust_bundle: bool = False,
    read_options: ReadOptions | None = None,
    tune_allocator: bool = False,
    force_modality: bool = False,
    crop_to_body: bool = False,
    model_options: dict | None = None,
    split_masks: bool = False,
) -> InferResult:
    """Segment one scan (file or DICOM folder) and write its outputs atomically (nothing is left behind on failure).

    ``output_format``: ``nifti`` (label NIfTI), ``dicom-seg`` (DICOM SEG referencing the source
    series), or ``nifti+dicom-seg`` (both). ``gpu_memory``/``host_memory``/``tune_allocator``: see
    :class:`Segmenter`; ignored when ``model`` is a Segmenter. The scan is read before the model
    is loaded, so a bad input fails at once. ``force_modality``, ``crop_to_body``: see :class:`CaseOptions`;
    ``model_options``: see :class:`Segmenter`. ``split_masks``: also one mask file per label.
    """
    options = CaseOptions(
        stats,
        preview,
        overlap,
        output_format,
        read_options or ReadOptions(),
        force_modality=force_modality,
        crop_to_body=crop_to_body,
        split_masks=split_masks,
    )
    if isinstance(model, Segmenter):
        return model.run(input_path, output, options, progress)
    case = start_case(input_path, output, options)
    progress.stage("read")
    read_case(case)
    progress.stage("load model")
    seg = Segmenter(model, device, gpu_memory, host_memory, trust_bundle, tune_allocator, model_options)
    case.timings["model_load"] = seg.load_seconds
    return seg.process(case, progress)
