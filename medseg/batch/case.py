"""One case of a batch: the case pipeline's stages (:mod:`medseg.inference.pipeline`) grouped for a
batch executor, and the plain data that travels between the batch and its workers.

``prepare`` (fingerprint and hash the input, read it, check it, plan it) -> ``infer`` (segment) ->
``finish`` (write the same outputs as ``medseg infer``, hash them for the ledger). A local pipeline
runs the three on different threads so that the next case is read and the previous one written
while the current one is inferred; worker processes and Dask workers run them back to back
(:meth:`CaseProcessor.run`). The error policy is the pipeline's: any error in a stage fails that
case only, with :func:`medseg.errors.describe_error`'s one line (:func:`failed_result`).

Everything here is plain data in and out, so it pickles to worker processes and Dask workers.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medseg.batch.cohort import content_sha256, stat_fingerprint
from medseg.errors import InputError, describe_error
from medseg.inference.outputs import OUTPUT_KINDS
from medseg.inference.pipeline import Case, CaseOptions, Segmenter, read_case, start_case
from medseg.io import ReadOptions
from medseg.io.atomic import sha256_of


@dataclass(frozen=True)
class CaseSettings:
    """What every case of a batch is run with (identical on every worker)."""

    model: str | None = None
    device: str = "auto"
    stats: bool = False
    preview: bool = False
    overlap: float | None = None
    read: ReadOptions = field(default_factory=ReadOptions)
    #: let each case's run set glibc's allocator for its windows (``medseg batch`` asks for it)
    tune_allocator: bool = False
    force_modality: bool = False
    crop_to_body: bool = False
    #: the family's options (``open_model``'s ``options``: folds, tta, step_size, roi_subset, precision, ...)
    model_options: dict[str, Any] = field(default_factory=dict)
    #: what is written per case, as ``medseg infer --format`` / ``--split-masks``
    output_format: str = "nifti"
    split_masks: bool = False
    #: the planner's budgets, as ``medseg infer --gpu-memory`` / ``--host-memory`` (a batch's worker processes
    #: share the host budget equally)
    gpu_memory: str | int | None = None
    host_memory: str | int | None = None
    trust_bundle: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["read"] = self.read.to_dict()
        return d

    def case_options(self) -> CaseOptions:
        """The pipeline's options for every case: the cohort table needs each case's statistics."""
        return CaseOptions(
            self.stats,
            self.preview,
            self.overlap,
            self.output_format,
            self.read,
            statistics=True,
            force_modality=self.force_modality,
            crop_to_body=self.crop_to_body,
            split_masks=self.split_masks,
        )


@dataclass(frozen=True)
class CaseTask:
    """One unit of work: read ``input_path``, write labels to ``labels_path`` (and siblings)."""

    case_id: str
    input_path: str
    labels_path: str


@dataclass
class CaseResult:
    """What a worker reports back; the client turns it into a ledger row."""

    case_id: str
    ok: bool
    error: str | None = None
    input_size: int | None = None
    input_mtime_ns: int | None = None
    input_sha256: str | None = None
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    plan: dict[str, Any] | None = None
    stats: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    weights_sha256: str | None = None
    worker: str = ""
    seconds: float = 0.0


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def describe_output(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    return {"path": str(path), "sha256": sha256_of(path), "size": path.stat().st_size}


class CaseProcessor:
    """Runs cases with one loaded model.

    Args:
        segmenter: a loaded :class:`~medseg.inference.pipeline.Segmenter` (the model is loaded once
            and shared by every case this processor runs).
        settings: the batch settings (stats, preview, overlap, reader options).
    """

    def __init__(self, segmenter: Segmenter, settings: CaseSettings) -> None:
        self.segmenter = segmenter
        self.settings = settings
        self.options = settings.case_options()

    @classmethod
    def load(cls, settings: CaseSettings) -> CaseProcessor:
        segmenter = Segmenter(
            settings.model,
            settings.device,
            settings.gpu_memory,
            settings.host_memory,
            settings.trust_bundle,
            tune_allocator=settings.tune_allocator,
            model_options=settings.model_options or None,
        )
        return cls(segmenter, settings)

    def prepare(self, task: CaseTask) -> Case:
        """Fingerprint and hash the input, read, check and plan it (the reader stage)."""
        path = Path(task.input_path)
        if not path.exists():
            raise InputError("no such file or folder", path)
        case = start_case(path, task.labels_path, self.options)
        case.case_id = task.case_id
        t = time.perf_counter()
        case.fingerprint = stat_fingerprint(path)
        case.input_sha256 = content_sha256(path)
        case.timings["hash"] = time.perf_counter() - t
        read_case(case)
        return self.segmenter.plan(self.segmenter.check(case))

    def infer(self, case: Case) -> Case:
        """The model: preparation, windows and labels on the source grid (the compute stage)."""
        return self.segmenter.segment_case(case)

    def finish(self, case: Case) -> CaseResult:
        """Write the outputs (the writer stage); the result carries the sidecar's timing record."""
        fp, sha, plan = case.fingerprint, case.input_sha256, case.plan
        result = self.segmenter.write(case)
        described = {kind: describe_output(result.outputs[kind]) for kind in OUTPUT_KINDS if kind in result.outputs}
        return CaseResult(
            case_id=case.case_id,
            ok=True,
            input_size=fp.size if fp else None,
            input_mtime_ns=fp.mtime_ns if fp else None,
            input_sha256=sha,
            outputs=described,
            plan=plan.to_dict(),
            stats=result.statistics or [],
            timings=dict(result.timings),
            weights_sha256=self.segmenter.model.weights_sha256,
            worker=worker_name(),
            seconds=result.timings["total"],
        )

    def run(self, task: CaseTask, stage=None) -> CaseResult:
        """All three stages back to back; ``stage(name)`` is told each stage as it starts. Any
        error fails this case only (:func:`failed_result`)."""
        try:
            if stage:
                stage("reading")
            case = self.prepare(task)
            if stage:
                stage("inference")
            case = self.infer(case)
            if stage:
                stage("writing")
            return self.finish(case)
        except Exception as err:  # noqa: BLE001 - one case's failure is that case's
            return failed_result(task, err)


def failed_result(task: CaseTask, err: BaseException) -> CaseResult:
    """A failed case: the one-line reason (:func:`medseg.errors.describe_error`) and the input's fingerprint."""
    fp = stat_fingerprint(task.input_path)
    return CaseResult(
        case_id=task.case_id,
        ok=False,
        error=describe_error(err),
        input_size=fp.size if fp else None,
        input_mtime_ns=fp.mtime_ns if fp else None,
        input_sha256=content_sha256(task.input_path) if fp else None,
        worker=worker_name(),
    )
