"""The ``medseg`` command line: a thin click layer over the library.

Heavy modules (torch, monai) are imported inside the commands so that ``medseg --help`` is instant:
measured on the 2-core development VM, importing this module takes 0.2 s and importing the
inference pipeline (torch, MONAI, nibabel, SimpleITK) 2.5-5 s.
Errors a user can act on print as one line and exit 1; ``--debug`` shows the traceback.
"""

from __future__ import annotations

from medseg.cli.app import handle_errors, main
from medseg.cli.data import convert, models, phantom, series
from medseg.cli.review import prompt, view
from medseg.cli.run import batch, infer, plan
from medseg.cli.training import evaluate, train

__all__ = [
    "batch", "convert", "evaluate", "handle_errors", "infer", "main", "models", "phantom", "plan", "prompt", "series",
    "train", "view",
]  # fmt: skip
