"""The unit atlas (issue 26): every unit of a net, what drives it, in one browsable folder.

``collect`` makes one streamed pass over an image set and keeps, for every unit of every requested
layer at once, what the pages show (``UnitStats``); ``write`` turns that into ``atlas.json`` and the
units' thumbnails. Bottom-up: ``histogram`` (the per-unit histograms), ``collect``, ``write``.
"""
