"""``ct-anatomy``: a classical, weights-free CT model (body, lungs, airway, bone, fat, muscle).

:mod:`.method` is the algorithm (numpy/scipy on the scan's grid), :mod:`.body` the body mask it
starts from (also used by ``--crop-to-body``), :mod:`.labels` the label table and :mod:`.model` the
:class:`~medseg.models.base.Model` the pipeline sees.
"""
