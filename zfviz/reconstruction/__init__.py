"""Input reconstruction (issue 14): the third class of the visualization taxonomy.

Activation maximization synthesizes the input a unit prefers (Erhan et al. 2009; Simonyan et al. 2014;
Yosinski et al. 2015; Olah et al. 2017); network inversion reconstructs an image from what a layer kept
of it, by optimization (Mahendran and Vedaldi 2015) or by a learned decoder (Dosovitskiy and Brox 2016);
the generator prior maximizes in the code space of such a decoder (Nguyen et al. 2016).
"""
