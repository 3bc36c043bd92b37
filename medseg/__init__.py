"""medseg: 3D medical volume segmentation that keeps geometry exact."""

from __future__ import annotations

__version__ = "0.1.0"

from medseg.errors import MedsegError  # noqa: E402
from medseg.volume import Volume  # noqa: E402

__all__ = ["MedsegError", "Volume", "__version__"]
