"""One case of a batch, end to end, in three stages that a pipeline can overlap.

``prepare`` (read, validate, hash the input, plan) -> ``infer`` (``Segmenter.segment``: preprocessing,
the network, labels back on the source grid) -> ``finish`` (write the same outputs as
``medseg infer`` with its ``write_outputs``, hash them). A local pipeline runs the three on
different threads so that the next case is read and the previous one written while the current
one is inferred; a Dask worker runs them back to back (:meth:`CaseProcessor.run`).

Everything here is plain data in and out, so it pickles to Dask workers.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medseg.batch.cohort import content_sha256, stat_fingerprint
from medseg.errors import InputError, MedsegError
from medseg.models.checkpoints import sha256_of as file_sha256

#: output kinds, in the order ``write_outputs`` writes them (the sidecar is always last)
OUTPUT_KINDS = ("labels", "stats_csv", "stats_json", "preview", "sidecar")


@dataclass(frozen=True)
class CaseSettings:
    """What every case of a batch is run with (identical on every worker)."""

    model: str | None = None
    device: str = "auto"
    stats: bool = False
    preview: bool = False
    overlap: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    return {"path": str(path), "sha256": file_sha256(path), "size": path.stat().st_size}


def one_line(err: BaseException) -> str:
    """A user-facing one-line reason for a failed case."""
    if isinstance(err, MedsegError):
        return str(err)
    if isinstance(err, MemoryError):
        return "out of memory while segmenting this case"
    text = " ".join(str(err).split())
    return f"unexpected {type(err).__name__}: {text[:200]}" if text else f"unexpected {type(err).__name__}"


@dataclass
class _Work:
    """A case travelling through the stages (large arrays are dropped as soon as they are used)."""

    task: CaseTask
    t0: float
    fingerprint: Any = None
    sha256: str | None = None
    volume: Any = None
    plan: Any = None
    labels: Any = None
    timings: dict[str, float] = field(default_factory=dict)


class CaseProcessor:
    """Runs cases with one loaded model.

    Args:
        segmenter: a loaded :class:`~medseg.inference.pipeline.Segmenter` (the model is loaded once
            and shared by every case this processor runs).
        settings: the batch settings (stats, preview, overlap).
    """

    def __init__(self, segmenter, settings: CaseSettings) -> None:
        self.segmenter = segmenter
        self.settings = settings

    @classmethod
    def load(cls, settings: CaseSettings) -> CaseProcessor:
        from medseg.inference.pipeline import Segmenter

        return cls(Segmenter(settings.model, settings.device), settings)

    # Segmenter.segment is the single source of truth for the maths (preprocessing, the engine and
    # its memory plan, the way back to the source grid), so batch labels are exactly infer's labels.
    def prepare(self, task: CaseTask) -> _Work:
        """Read, validate and hash the input and plan its inference (the reader stage)."""
        from medseg.io import read_volume

        work = _Work(task, time.perf_counter())
        path = Path(task.input_path)
        if not path.exists():
            raise InputError("no such file or folder", path)
        work.fingerprint = stat_fingerprint(path)
        work.sha256 = content_sha256(path)
        t = time.perf_counter()
        volume = read_volume(path)
        work.timings["read"] = time.perf_counter() - t
        self.segmenter.check_input(volume)
        work.plan = self.segmenter.plan_for(volume, self.settings.overlap)
        work.volume = volume
        return work

    def infer(self, work: _Work) -> _Work:
        """The model: preprocessing, windows and labels on the source grid (the compute stage)."""
        segmentation = self.segmenter.segment(work.volume, work.plan)
        work.labels = segmentation.labels
        work.timings.update(segmentation.timings)
        return work

    def finish(self, work: _Work) -> CaseResult:
        from medseg.inference.pipeline import Segmentation, output_paths, write_outputs
        from medseg.postprocess import label_statistics

        volume, labels = work.volume, work.labels
        segmentation = Segmentation(volume, labels, work.plan, {})
        paths = output_paths(work.task.input_path, work.task.labels_path)
        timings = dict(work.timings)
        timings["total"] = time.perf_counter() - work.t0
        t = time.perf_counter()
        names = {k: v for k, v in self.segmenter.spec.label_names().items() if k != 0}
        stats = label_statistics(labels, volume, names)  # the cohort table's rows, and the sidecar's counts
        outputs, _ = write_outputs(
            Path(work.task.input_path),
            segmentation,
            self.segmenter,
            paths,
            self.settings.stats,
            self.settings.preview,
            timings,
            statistics=stats,
            input_sha256=work.sha256 if Path(work.task.input_path).is_file() else None,  # hashed once, in prepare
        )
        described = {kind: describe_output(outputs[kind]) for kind in OUTPUT_KINDS if kind in outputs}
        timings["write"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - work.t0
        fp = work.fingerprint
        return CaseResult(
            case_id=work.task.case_id,
            ok=True,
            input_size=fp.size if fp else None,
            input_mtime_ns=fp.mtime_ns if fp else None,
            input_sha256=work.sha256,
            outputs=described,
            plan=work.plan.to_dict(),
            stats=stats,
            timings={k: round(v, 4) for k, v in timings.items()},
            weights_sha256=self.segmenter.weights_sha256,
            worker=worker_name(),
            seconds=time.perf_counter() - work.t0,
        )

    def run(self, task: CaseTask) -> CaseResult:
        """All three stages back to back; a problem with the input comes back as a failed result."""
        try:
            return self.finish(self.infer(self.prepare(task)))
        except (MedsegError, MemoryError) as err:
            return failed_result(task, err)


def failed_result(task: CaseTask, err: BaseException) -> CaseResult:
    fp = stat_fingerprint(task.input_path)
    return CaseResult(
        case_id=task.case_id,
        ok=False,
        error=one_line(err),
        input_size=fp.size if fp else None,
        input_mtime_ns=fp.mtime_ns if fp else None,
        input_sha256=content_sha256(task.input_path) if fp else None,
        worker=worker_name(),
    )
