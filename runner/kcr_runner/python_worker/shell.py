"""IPython pieces that send rich output to the runner instead of printing it.

Everything a Jupyter user expects (magics, rich reprs, ``display()``, tracebacks, completion,
inspection) is IPython's own ``InteractiveShell``; this module only swaps the three places where
IPython would write to a terminal: the display publisher, the display hook and the traceback
printer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from IPython.core.displayhook import DisplayHook
from IPython.core.displaypub import DisplayPublisher
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from traitlets import Any as AnyTrait
from traitlets import Instance
from traitlets.config import Config

EventSink = Callable[[str, dict[str, Any]], None]


class EventDisplayPublisher(DisplayPublisher):
    """Publishes ``display()`` calls as ``display_data`` / ``update_display_data`` events."""

    sink = AnyTrait(allow_none=True)

    def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kw):
        content = {"data": data, "metadata": metadata or {}, "transient": transient or {}}
        self.sink("update_display_data" if update else "display_data", content)

    def clear_output(self, wait=False):
        self.sink("clear_output", {"wait": bool(wait)})


class EventDisplayHook(DisplayHook):
    """Sends the value of a cell's last expression as an ``execute_result`` event."""

    sink = AnyTrait(allow_none=True)

    def start_displayhook(self):
        self._content: dict[str, Any] = {"data": {}, "metadata": {}}

    def write_output_prompt(self):
        self._content["execution_count"] = self.prompt_count

    def write_format_data(self, format_dict, md_dict=None):
        self._content["data"] = format_dict
        self._content["metadata"] = md_dict or {}

    def finish_displayhook(self):
        self.sink("execute_result", self._content)


class WorkerShell(InteractiveShell):
    """An ``InteractiveShell`` whose output goes to an event sink (set ``shell.sink``).

    Tracebacks become ``error`` events and are remembered in ``last_error`` for the reply.
    Pager output (``obj?``) becomes a ``page`` payload in the execute reply, as in Jupyter.
    """

    sink = AnyTrait(allow_none=True)
    last_error = Instance(dict, allow_none=True)

    def init_display_pub(self):
        super().init_display_pub()
        self.display_pub.sink = lambda event, content: self.sink(event, content)

    def init_displayhook(self):
        super().init_displayhook()
        self.displayhook.sink = lambda event, content: self.sink(event, content)

    def showtraceback(self, exc_tuple=None, *args, **kwargs):
        """Show the user's traceback without the worker's own frames at its end.

        An interrupt is raised by the worker's SIGINT handler, which would otherwise be
        the last frame shown; frames that set ``__tracebackhide__`` are cut from the tail.
        """
        try:
            etype, value, tb = self._get_exc_info(exc_tuple)
        except ValueError:
            return super().showtraceback(exc_tuple, *args, **kwargs)
        _drop_hidden_tail(tb)
        return super().showtraceback((etype, value, tb), *args, **kwargs)

    def _showtraceback(self, etype, evalue, stb):
        error = {
            "ename": getattr(etype, "__name__", str(etype)),
            "evalue": str(evalue),
            "traceback": list(stb),
        }
        self.last_error = error
        self.sink("error", error)

    def enable_gui(self, gui=None):
        """No GUI event loop in a pod: ``%matplotlib inline`` (gui None/inline) is all there is."""
        if gui not in (None, "inline"):
            raise UsageError(
                f"GUI event loops ({gui}) are not available in a kcr kernel; use %matplotlib inline"
            )

    def ask_exit(self):
        # `exit` / `quit` in a cell: the frontend decides (Jupyter's "ask_exit" payload).
        self.payload_manager.write_payload({"source": "ask_exit", "keepkernel": False})


def make_shell(sink: EventSink) -> WorkerShell:
    """Create the worker's shell: in-memory history, no terminal, colored tracebacks."""
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    config.InteractiveShell.colors = "linux"
    shell = WorkerShell.instance(
        config=config,
        display_pub_class=EventDisplayPublisher,
        displayhook_class=EventDisplayHook,
    )
    shell.sink = sink

    def show_in_pager(self, data, start=0, screen_lines=0, pager_cmd=None):
        if isinstance(data, str):
            data = {"text/plain": data}
        shell.payload_manager.write_payload({"source": "page", "data": data, "start": start})

    shell.set_hook("show_in_pager", show_in_pager, priority=50)
    return shell


def _drop_hidden_tail(tb) -> None:
    """Cut the frames at the end of ``tb`` whose code sets ``__tracebackhide__``."""
    last_visible = None
    while tb is not None:
        if not tb.tb_frame.f_locals.get("__tracebackhide__", False):
            last_visible = tb
        elif last_visible is not None and tb.tb_next is None:
            last_visible.tb_next = None
            return
        tb = tb.tb_next
