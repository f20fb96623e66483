"""Pretraining on DeepSpeed: the config, the DeepSpeed JSON, and (one job per file) the loop, logging. Checkpoints
are :mod:`itnet_scale.checkpoint`."""
