"""Review in napari with exact geometry: ``medseg view`` and the npe2 plugin (reader, writer, widget, samples).

napari and Qt are imported only inside the functions that need them; :mod:`medseg.viewer.geometry`
and :mod:`medseg.viewer.layers` work without them.
"""
