"""Visualization methods: one module per method (deconvnet, occlusion, ...); they return tensors."""
