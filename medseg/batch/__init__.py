"""Cohort batch processing: discovery, an SQLite ledger, local and Dask executors, the runner.

Example:
    >>> from medseg.batch import CaseSettings, LocalPipelineExecutor, discover_cases, run_batch
    >>> settings = CaseSettings(model="phantom-unet3d", device="cpu", stats=True)  # doctest: +SKIP
    >>> summary = run_batch(discover_cases("cohort/"), "out/", settings,
    ...                     LocalPipelineExecutor(settings))  # doctest: +SKIP
    >>> summary.exit_code  # doctest: +SKIP
    0
"""

from __future__ import annotations

from medseg.batch.case import CaseProcessor, CaseResult, CaseSettings, CaseTask
from medseg.batch.cohort import Case, discover_cases, read_manifest, register_case_finder, select_part
from medseg.batch.dicom_cases import dicom_case_finder
from medseg.batch.executors import LocalPipelineExecutor, make_executor, parse_scheduler
from medseg.batch.ledger import CaseRecord, CohortLedger
from medseg.batch.runner import BatchSummary, ledger_path, run_batch

register_case_finder(dicom_case_finder)

__all__ = [
    "BatchSummary",
    "Case",
    "CaseProcessor",
    "CaseRecord",
    "CaseResult",
    "CaseSettings",
    "CaseTask",
    "CohortLedger",
    "LocalPipelineExecutor",
    "discover_cases",
    "ledger_path",
    "make_executor",
    "parse_scheduler",
    "read_manifest",
    "register_case_finder",
    "run_batch",
    "select_part",
]
