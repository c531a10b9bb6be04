"""Where the folder sync hooks into Jupyter Server: the kernel WebSocket to the gateway.

:class:`FolderSyncConnection` is Jupyter Server's ``GatewayWebSocketConnection`` (the
relay between a browser's kernel WebSocket and the gateway's) with two stops:

* an ``execute_request`` from the client waits for :meth:`KernelFolderSync.before_cell`
  (F's changes go to the kernel) before it is relayed; the messages behind it keep their
  order, control-channel messages (interrupts) are never held;
* the ``execute_reply`` to such a request waits for :meth:`KernelFolderSync.after_cell`
  (the cell's files come into F) before it reaches the client, so once a client has the
  reply the files are next to the notebook; the messages behind it keep their order.

Neither waits longer than ``KCRFolderSync.wait_timeout``: a longer sync goes on in the
background (the kernel's next sync waits for it) and the notebook is told. Notices are
``stream`` messages on stderr with the cell's request as parent, so they show in the cell.
Silent executes (``silent: true``) do not sync. Without a sync for the kernel (no session,
sync off) messages pass straight through.
"""

from __future__ import annotations

import asyncio
import collections
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from jupyter_server.gateway.connections import GatewayWebSocketConnection

from .folder_sync import KernelFolderSync

SETTINGS_KEY = "kcr_folder_sync"
#: Messages larger than this are never parsed to look for a control-channel bypass.
_PEEK_LIMIT = 1 << 16


def _parse(message: Any, marker: str) -> dict | None:
    if not isinstance(message, str) or marker not in message:
        return None
    try:
        msg = json.loads(message)
    except ValueError:
        return None
    return msg if isinstance(msg, dict) else None


class FolderSyncConnection(GatewayWebSocketConnection):
    """``GatewayWebSocketConnection`` that syncs the notebook's folder around each cell."""

    def _manager(self):
        return self.websocket_handler.settings.get(SETTINGS_KEY)

    def _state(self) -> dict:
        state = self.__dict__.get("_kcr")
        if state is None:
            state = self.__dict__["_kcr"] = {
                "in": collections.deque(),
                "out": collections.deque(),
                "in_task": None,
                "out_task": None,
                "tracked": {},  # msg_id -> (header, KernelFolderSync)
                "tasks": set(),
            }
        return state

    # -- client → gateway ----------------------------------------------------------------------

    def handle_incoming_message(self, message: str) -> None:
        manager = self._manager()
        if manager is None or not manager.enabled:
            super().handle_incoming_message(message)
            return
        state = self._state()
        if state["in"] or state["in_task"] is not None:
            if (
                isinstance(message, str)
                and len(message) < _PEEK_LIMIT
                and '"control"' in message
                and (_parse(message, '"control"') or {}).get("channel") == "control"
            ):
                super().handle_incoming_message(message)  # interrupts are never held
                return
        elif _parse(message, '"execute_request"') is None:
            super().handle_incoming_message(message)
            return
        state["in"].append(message)
        if state["in_task"] is None:
            state["in_task"] = asyncio.ensure_future(self._pump_in(state))

    async def _pump_in(self, state: dict) -> None:
        try:
            while state["in"]:
                message = state["in"].popleft()
                msg = _parse(message, '"execute_request"')
                if (
                    msg is not None
                    and msg.get("channel", "shell") == "shell"
                    and (msg.get("header") or {}).get("msg_type") == "execute_request"
                    and not (msg.get("content") or {}).get("silent")
                ):
                    await self._before_cell(state, msg)
                GatewayWebSocketConnection.handle_incoming_message(self, message)
        except Exception:
            self.log.exception("kcr folder sync: relaying to the gateway failed")
        finally:
            state["in_task"] = None

    async def _before_cell(self, state: dict, msg: dict) -> None:
        manager = self._manager()
        try:
            sync = await manager.for_kernel(self.kernel_id)
        except Exception:
            self.log.exception("kcr folder sync: kernel %s: no folder", self.kernel_id)
            return
        if sync is None:
            return
        header = msg.get("header") or {}
        state["tracked"][header.get("msg_id")] = (header, sync)
        notices = await self._bounded(sync, sync.before_cell(), manager.wait_timeout)
        for text in notices:
            self._notify(header, text, direct=True)

    # -- gateway → client ----------------------------------------------------------------------

    def handle_outgoing_message(self, incoming_msg: str, *args: Any) -> None:
        state = self.__dict__.get("_kcr")
        if state is None or (not state["tracked"] and not state["out"]):
            super().handle_outgoing_message(incoming_msg, *args)
            return
        state["out"].append(incoming_msg)
        if state["out_task"] is None:
            state["out_task"] = asyncio.ensure_future(self._pump_out(state))

    async def _pump_out(self, state: dict) -> None:
        try:
            while state["out"]:
                message = state["out"].popleft()
                msg = _parse(message, '"execute_reply"')
                if msg is not None and (msg.get("header") or {}).get("msg_type") == "execute_reply":
                    parent_id = (msg.get("parent_header") or {}).get("msg_id")
                    tracked = state["tracked"].pop(parent_id, None)
                    if tracked is not None:
                        header, sync = tracked
                        manager = self._manager()
                        notices = await self._bounded(sync, sync.after_cell(), manager.wait_timeout)
                        for text in notices:
                            self._notify(header, text, direct=True)
                GatewayWebSocketConnection.handle_outgoing_message(self, message)
        except Exception:
            self.log.exception("kcr folder sync: relaying to the client failed")
        finally:
            state["out_task"] = None

    # -- helpers -------------------------------------------------------------------------------

    async def _bounded(self, sync: KernelFolderSync, job, timeout: float) -> list[str]:
        """Run ``job`` (a sync pass) but wait at most ``timeout`` s for it."""
        task = asyncio.ensure_future(job)
        state = self._state()
        state["tasks"].add(task)
        task.add_done_callback(state["tasks"].discard)
        task.add_done_callback(self._log_failure)
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            return [
                f"[kcr] syncing {sync.label} with the kernel takes longer than {timeout:g} s; "
                "it goes on in the background (the next cell waits for it)."
            ]
        except Exception:
            return []

    def _log_failure(self, task: asyncio.Future) -> None:
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            self.log.error("kcr folder sync: kernel %s: %s", self.kernel_id, error, exc_info=error)

    def _notify(self, parent: dict, text: str, direct: bool = False) -> None:
        """Show ``text`` in the cell of request ``parent`` (a stderr stream message)."""
        msg = {
            "header": {
                "msg_id": uuid.uuid4().hex,
                "msg_type": "stream",
                "username": "kcr",
                "session": parent.get("session", ""),
                "date": datetime.now(UTC).isoformat(),
                "version": "5.3",
            },
            "msg_id": "",
            "msg_type": "stream",
            "parent_header": parent,
            "metadata": {},
            "content": {"name": "stderr", "text": text.rstrip("\n") + "\n"},
            "buffers": [],
            "channel": "iopub",
        }
        msg["msg_id"] = msg["header"]["msg_id"]
        GatewayWebSocketConnection.handle_outgoing_message(self, json.dumps(msg))
