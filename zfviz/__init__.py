"""zfviz: Zeiler & Fergus (2014), "Visualizing and Understanding Convolutional Networks", end to end."""

__version__ = "0.1.0"
