"""Network dissection (Bau et al. 2017): which units of a net detect which labelled concepts.

``broden`` reads and writes the Broden layout the procedure scores against; ``concepts`` builds a
small concept set in that layout from Fashion-MNIST; ``quantile`` finds each unit's activation
threshold exactly in streaming passes; ``dissect`` scores every unit against every concept.
"""

from zfviz.dissection.broden import Broden, BrodenItem, Label, write_broden
from zfviz.dissection.dissect import detector_counts, dissect

__all__ = ["Broden", "BrodenItem", "Label", "detector_counts", "dissect", "write_broden"]
