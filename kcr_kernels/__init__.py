"""kcr-kernels: Jupyter kernels on pooled, isolated pods with durable state and files."""

__version__ = "0.1.0"
