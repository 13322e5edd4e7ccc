"""Attribution: the visualization family on one backward mechanism (issue 13).

``attribute(model, inputs, target, method, **options)`` returns a tensor shaped like ``inputs``.
The package reads bottom-up:

- base types: ``state`` (what one call's hooks share, ``Unsupported``), ``targets`` (what is
  explained, where the backward pass starts), ``baselines`` (the reference input: one vocabulary),
  ``options`` (how a method declares its options);
- the mechanism: ``rules`` (how a signal crosses one module), ``canonize`` (temporary model
  rewrites), ``transformer`` (AttnLRP's rules for torchvision's attention blocks), ``composites``
  (which module gets which rule), ``graph`` (ops called as functions, found on autograd's graph),
  ``mechanism`` (hooks and ``backward``);
  the perturbation sweeps ``occlusion`` (with ``occlusion_fast``/``occlusion_chain``);
- ``rows`` and ``smoothgrad`` (copies of a batch through a method), ``registry`` (name -> method
  and its declared options), ``api`` (``attribute``);
- ``methods/``: one module per method, each registering itself; every module there is imported
  here, so ``METHODS`` is complete once ``zfviz.attribution`` is.
"""

from __future__ import annotations

from zfviz.attribution import methods
from zfviz.attribution.api import attribute
from zfviz.attribution.mechanism import Backward, backward
from zfviz.attribution.registry import METHODS, method_spec, method_table, register_method
from zfviz.attribution.targets import Target, parse_target, start_signal

__all__ = [
    "METHODS",
    "Backward",
    "Target",
    "attribute",
    "backward",
    "method_spec",
    "method_table",
    "methods",
    "parse_target",
    "register_method",
    "start_signal",
]
