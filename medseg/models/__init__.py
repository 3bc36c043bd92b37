"""Models behind one interface (:class:`medseg.models.base.Model`): MONAI ModelSpecs and bundles
today (:mod:`medseg.models.monai`); :func:`medseg.models.registry.open_model` opens any of them."""
