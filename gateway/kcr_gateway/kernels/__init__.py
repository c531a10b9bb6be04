"""The gateway's durable kernels; the module map is in :mod:`.manager`'s docstring."""

from .checkpoints import KCRCheckpointer
from .culling import KCRCuller
from .file_saving import KCRFileSaver
from .leases import KCRLeaseKeeper
from .manager import KCRKernelManager
from .remote_kernel import KernelState, RemoteKernel

__all__ = [
    "KCRCheckpointer",
    "KCRCuller",
    "KCRFileSaver",
    "KCRKernelManager",
    "KCRLeaseKeeper",
    "KernelState",
    "RemoteKernel",
]
