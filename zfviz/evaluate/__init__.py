"""Measuring explanations (issue 16): is a map faithful to the model, does it point at the object,
does it depend on the model at all?

- ``perturbation``: deletion and insertion (Petsiuk et al. 2018), pixel flipping MoRF/LeRF and their
  gap (Samek et al. 2017), all steps of all images in batched forwards.
- ``localization``: the pointing game (Zhang et al. 2016) and the energy inside the object mask.
- ``randomization``: cascading model-parameter randomization (Adebayo et al. 2018), scored by
  ``similarity``'s Spearman rank correlation and SSIM (Wang et al. 2004).
"""

from zfviz.evaluate.localization import energy_inside, pointing_game
from zfviz.evaluate.perturbation import curves, deletion, flipping_gap, insertion, pixel_flipping
from zfviz.evaluate.randomization import cascading_randomization, randomizable, randomization_scores
from zfviz.evaluate.similarity import spearman, ssim

__all__ = [
    "cascading_randomization",
    "curves",
    "deletion",
    "energy_inside",
    "flipping_gap",
    "insertion",
    "pixel_flipping",
    "pointing_game",
    "randomizable",
    "randomization_scores",
    "spearman",
    "ssim",
]
