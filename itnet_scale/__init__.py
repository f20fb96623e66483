"""itnet_scale: distributed pretraining of ITNet, a learnable integral transform."""

__version__ = "0.1.0"
