"""Why a kernel operation failed, as typed exceptions; and the one place they become HTTP.

Domain code (the kernel, its pod moves, leases) raises a :class:`KernelError`
subclass that carries the facts as attributes; ``str(error)`` is the message a
user sees. Only :func:`http_error` (called by the manager's REST-facing
methods, see ``manager.translate_errors``) turns them into
``tornado.web.HTTPError``, so the status codes are decided here and nowhere else:

=======================  ======  =============================================
error                    status  when
=======================  ======  =============================================
UnknownKernel            404     no such kernel in the registry
UnknownKernelSpec        404     no such kernelspec
UnknownLanguage          404     no pool serves the kernelspec's language
KernelExists             409     a start asked for an id that is in use
RegistryUnavailable      503     the kernel store failed (or is known to be down)
NoPodAvailable           503     the pool is at ``max`` with every pod leased
PodFailed                503     the pod did not start, answer, or get its files
HeldElsewhere            503     another replica did not hand the kernel over
InterruptFailed          500     the runner refused the interrupt
=======================  ======  =============================================
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import TypeVar

from tornado import web

from kcr_kernels.runner_client import RunnerError
from kcr_kernels.stores import StoreError

T = TypeVar("T")


class KernelError(Exception):
    """A kernel operation failed; ``kernel_id`` names the kernel (may be empty)."""

    def __init__(self, message: str, kernel_id: str = ""):
        super().__init__(message)
        self.kernel_id = kernel_id


class UnknownKernel(KernelError):
    """The registry has no kernel ``kernel_id`` (or the id is not a valid one)."""

    def __init__(self, kernel_id: str):
        super().__init__(f"Kernel does not exist: {kernel_id}", kernel_id)


class UnknownKernelSpec(KernelError):
    """No kernelspec is called ``kernel_name``."""

    def __init__(self, kernel_name: str):
        super().__init__(f"No such kernel spec: {kernel_name}")
        self.kernel_name = kernel_name


class UnknownLanguage(KernelError):
    """No pool serves ``language``."""

    def __init__(self, language: str, kernel_id: str = ""):
        super().__init__(f"No pool serves language {language!r}", kernel_id)
        self.language = language


class KernelExists(KernelError):
    """A kernel start asked for an id that another kernel already has."""

    def __init__(self, kernel_id: str):
        super().__init__(f"Kernel {kernel_id} already exists", kernel_id)


class RegistryUnavailable(KernelError):
    """The kernel store failed; ``cause`` is the :class:`StoreError`."""

    def __init__(self, cause: Exception, kernel_id: str = ""):
        super().__init__(f"The kernel registry is unavailable: {cause}", kernel_id)
        self.cause = cause


class NoPodAvailable(KernelError):
    """The pool of ``language`` has no pod to give (at ``max``, every pod leased)."""

    def __init__(self, language: str, detail: str, kernel_id: str = ""):
        super().__init__(f"No pod available for {language}: {detail}", kernel_id)
        self.language = language


class PodFailed(KernelError):
    """The kernel's new pod did not start, did not answer, or did not get its files.

    ``stage`` is ``"start"``, ``"connect"`` or ``"files"``; ``cause`` the original error.
    """

    _WHAT = {
        "start": "The kernel's pod did not start",
        "connect": "The kernel's pod did not answer",
        "files": "The kernel's files could not be restored",
    }

    def __init__(self, stage: str, cause: Exception, kernel_id: str = ""):
        super().__init__(f"{self._WHAT[stage]}: {cause}", kernel_id)
        self.stage = stage
        self.cause = cause


class HeldElsewhere(KernelError):
    """Another replica (``holder``) holds the kernel and did not hand it over in ``timeout`` s."""

    def __init__(self, kernel_id: str, holder: str | None, timeout: float):
        super().__init__(
            f"Kernel {kernel_id} is running on another gateway replica ({holder}) that did not "
            f"hand it over within {timeout:g} s; try again",
            kernel_id,
        )
        self.holder = holder
        self.timeout = timeout


class InterruptFailed(KernelError):
    """The runner did not take the interrupt; the message is the runner's."""


_STATUS: dict[type[KernelError], int] = {
    UnknownKernel: 404,
    UnknownKernelSpec: 404,
    UnknownLanguage: 404,
    KernelExists: 409,
    RegistryUnavailable: 503,
    NoPodAvailable: 503,
    PodFailed: 503,
    HeldElsewhere: 503,
    InterruptFailed: 500,
}


def http_error(error: KernelError) -> web.HTTPError:
    """The HTTP error a client gets for ``error`` (the table in this module's docstring)."""
    status = next((s for cls, s in _STATUS.items() if isinstance(error, cls)), 500)
    return web.HTTPError(status, str(error))


async def quietly(coro: Awaitable[T], log: logging.Logger | logging.LoggerAdapter) -> T | None:
    """Await ``coro``; an expected failure (store, runner, kernel error) is a warning, not raised.

    For clean-up steps that must not stop the steps after them.
    """
    try:
        return await coro
    except (StoreError, RunnerError, KernelError) as e:
        log.warning("%s", e)
        return None
