"""kcr-gateway: a Jupyter Kernel Gateway compatible server backed by warm pools of pods."""

__version__ = "0.1.0"
