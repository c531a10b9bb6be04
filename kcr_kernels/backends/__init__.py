"""Pod backends: where a kernel's pod (a runner) lives. See :mod:`kcr_kernels.backends.base`."""

from .base import Pod, PodBackend, PodStartError

__all__ = ["Pod", "PodBackend", "PodStartError"]
