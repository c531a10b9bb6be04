"""The gateway's durable kernels; the module map is in :mod:`.manager`'s docstring."""

from .checkpoints import KCRCheckpointer
from .culling import KCRCuller
from .leases import KCRLeaseKeeper
from .manager import KCRKernelManager
from .remote_kernel import KernelState, RemoteKernel

__all__ = [
    "KCRCheckpointer",
    "KCRCuller",
    "KCRKernelManager",
    "KCRLeaseKeeper",
    "KernelState",
    "RemoteKernel",
]
