"""The unit atlas (issue 26): every unit of a net, what drives it, in one browsable folder.

Bottom-up: ``histogram`` (exact per-unit histograms over a stream), ``collect`` (the one streamed pass
keeping every unit's top ``k``, histogram, per-class sums; the crops and the next layer's strongest
units), ``export`` (``atlas.json`` and the thumbnails), ``pages`` (the static index and layer pages).
``zfviz viz atlas`` (``zfviz.commands.viz_atlas``) runs them in that order.
"""
