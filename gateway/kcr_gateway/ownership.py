"""Kernels have owners: who may see and drive which kernel.

A kernel belongs to the identity that started it (``KCRUser.username``, see
:mod:`kcr_gateway.identity`); the owner is kept in the kernel's registry record, so it
survives gateway restarts and hand-offs between replicas. Kernels recorded before owners
existed have the owner ``""``: only admins see them.

With ``KCRAuthorizer.kernel_ownership`` on:

* every request on ``/api/kernels/{id}...`` — REST get/delete/interrupt/restart, the
  WebSocket, the files API — by anyone but the owner or an admin is answered exactly as
  for a kernel that does not exist (404 ``Kernel does not exist: <id>``), so other users
  cannot even learn that it exists;
* ``GET /api/kernels`` lists only the caller's kernels (everything for an admin).

The check lives in one place, :meth:`KCRAuthorizer.is_authorized`, which jupyter_server's
``@authorized`` decorator and its kernel WebSocket call before every handler body; the
kernel id comes from the route (``kernel_id``). With ownership off every authenticated
caller may do everything, as before.
"""

from __future__ import annotations

from jupyter_server.auth.authorizer import Authorizer
from tornado import web
from traitlets import Bool

#: Route argument naming the kernel a request is about.
KERNEL_ID_ARG = "kernel_id"


def is_admin(user) -> bool:
    return bool(getattr(user, "admin", False))


def username_of(user) -> str:
    return getattr(user, "username", "") or ""


class KCRAuthorizer(Authorizer):
    """jupyter_server Authorizer that enforces kernel ownership (see the module doc)."""

    kernel_ownership = Bool(
        False,
        config=True,
        help="A kernel belongs to the identity that started it: other users get 404 for it "
        "on every endpoint and do not see it in lists; admins see every kernel. Needs "
        "authentication (auth_token, a token file or JupyterHub).",
    )

    def may_use(self, user, owner: str) -> bool:
        """Whether ``user`` may see and drive a kernel owned by ``owner``."""
        return not self.kernel_ownership or is_admin(user) or owner == username_of(user)

    def list_owner(self, user) -> str | None:
        """Whose kernels ``user`` may list: a user name, or None for all."""
        if not self.kernel_ownership or is_admin(user):
            return None
        return username_of(user)

    def start_env(self, user, env: dict) -> dict:
        """The start request's env with ``KERNEL_USERNAME`` set from the identity (ownership
        on: the client cannot pick it); unchanged when ownership is off."""
        if not self.kernel_ownership:
            return env
        return {**env, "KERNEL_USERNAME": username_of(user)}

    async def is_authorized(self, handler, user, action: str, resource: str) -> bool:
        kernel_id = (handler.path_kwargs or {}).get(KERNEL_ID_ARG)
        if kernel_id is None or not self.kernel_ownership or is_admin(user):
            return True
        kernel = await handler.kernel_manager.adopt(kernel_id)  # 404 if unknown
        if not self.may_use(user, kernel.user):
            handler.log.info(
                "%s %s: kernel %s belongs to another user; %r gets 404",
                handler.request.method,
                handler.request.path,
                kernel_id,
                username_of(user),
            )
            raise web.HTTPError(404, f"Kernel does not exist: {kernel_id}")
        return True
