"""kcr-runner: the in-pod server that executes a kernel's code (see runner/README.md)."""

__version__ = "0.1.0"
