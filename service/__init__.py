"""dtrain service: driver, parameter server, optimizers, data preparation, checkpoints."""

__version__ = "0.1.0"
