"""nnU-Net v2 results folders as medseg models (:class:`NnUNetModel`); needs the ``nnunet`` extra to run."""

from medseg.models.nnunet.folder import is_nnunet_folder, parse_folds, resolve_folder
from medseg.models.nnunet.model import NnUNetModel

__all__ = ["NnUNetModel", "is_nnunet_folder", "parse_folds", "resolve_folder"]
