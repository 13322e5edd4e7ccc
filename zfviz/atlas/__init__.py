"""The unit atlas (issue 26): every unit of a net, what drives it, in one browsable folder.

Bottom-up: ``histogram`` (exact per-unit histograms over a stream), ``collect`` (the one streamed pass
keeping every unit's top ``k``, histogram, per-class sums and selectivity; the crops and the next layer's
strongest units), ``unit_images`` (each unit's sprite of patches and projections, its maximization images),
``concepts`` (dissection labels), ``export`` (``atlas.json`` and the thumbnails), ``pages`` (the static pages).
``zfviz viz atlas`` (``zfviz.commands.viz_atlas``) runs them in that order.
"""
