"""kcr-python through jupyter_client: start, execute, stdin, interrupt, restart, shutdown.

Every test runs twice: against a real gateway (the bridge relays to its
WebSocket) and in local mode (the bridge runs a sandboxed runner itself).
Kernels are started with pytest-jupyter's ``jp_start_kernel``.
"""

from __future__ import annotations

import signal
from pathlib import Path

from conftest import pid_alive, processes_mentioning, wait_for

from kcr_kernels.provisioner import KCRProvisioner

SLEEP_CELL = "import time\nprint('started', flush=True)\ntime.sleep(60)"


def collect(run, kc, code: str, **kw):
    """Execute ``code``; returns (reply content, list of iopub messages of that cell)."""
    outputs = []
    reply = run(kc.execute_interactive(code, output_hook=outputs.append, timeout=30, **kw))
    return reply["content"], outputs


def by_type(outputs, msg_type):
    return [m["content"] for m in outputs if m["msg_type"] == msg_type]


def start_sleep_cell(run, kc) -> str:
    """Start a cell that sleeps; return its msg_id once it printed that it started."""
    msg_id = kc.execute(SLEEP_CELL)

    async def until_started():
        while True:
            msg = await kc.get_iopub_msg(timeout=30)
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
                return

    run(until_started())
    return msg_id


def interrupted_reply(run, kc, msg_id) -> dict:
    async def reply():
        while True:
            msg = await kc.get_shell_msg(timeout=30)
            if msg["parent_header"].get("msg_id") == msg_id:
                return msg["content"]

    return run(reply())


def test_start_execute_and_outputs(kcr_spec, jp_start_kernel, run, mode):
    km, kc = run(jp_start_kernel(kcr_spec, env={"KERNEL_TEAM": "kcr", "NOT_PASSED": "x"}))
    assert km.provisioner.__class__ is KCRProvisioner
    info = run(kc.kernel_info(reply=True))["content"]
    assert info["status"] == "ok"
    assert info["language_info"]["name"] == "python"

    reply, out = collect(run, kc, "print('hello'); 6 * 7")
    assert reply["status"] == "ok"
    assert by_type(out, "stream") == [{"name": "stdout", "text": "hello\n"}]
    assert by_type(out, "execute_result")[0]["data"]["text/plain"] == "42"
    assert by_type(out, "execute_input")[0]["code"] == "print('hello'); 6 * 7"
    states = [c["execution_state"] for c in by_type(out, "status")]
    assert states[0] == "busy" and states[-1] == "idle"

    reply, out = collect(run, kc, "from IPython.display import HTML; HTML('<i>x</i>')")
    assert by_type(out, "execute_result")[0]["data"]["text/html"] == "<i>x</i>"

    reply, out = collect(
        run, kc, "import os; os.environ.get('KERNEL_TEAM'), 'NOT_PASSED' in os.environ"
    )
    assert by_type(out, "execute_result")[0]["data"]["text/plain"] == "('kcr', False)"

    reply, out = collect(run, kc, "undefined_name")
    assert reply["status"] == "error" and reply["ename"] == "NameError"
    assert by_type(out, "error")[0]["ename"] == "NameError"

    # state is kept between cells
    collect(run, kc, "counter = 41")
    reply, out = collect(run, kc, "counter + 1")
    assert by_type(out, "execute_result")[0]["data"]["text/plain"] == "42"


def test_stdin(kcr_spec, jp_start_kernel, run):
    _km, kc = run(jp_start_kernel(kcr_spec))
    prompts = []

    def answer(msg):
        prompts.append(msg["content"]["prompt"])
        kc.input("kcr user")

    reply, out = collect(
        run, kc, "name = input('who? ')\nprint('hi', name)", allow_stdin=True, stdin_hook=answer
    )
    assert reply["status"] == "ok"
    assert prompts == ["who? "]
    assert by_type(out, "stream")[-1]["text"] == "hi kcr user\n"


def test_interrupt_by_signal_and_by_message(kcr_spec, jp_start_kernel, run):
    km, kc = run(jp_start_kernel(kcr_spec))
    # SIGINT to the bridge (what the provisioner's send_signal does in signal mode)
    msg_id = start_sleep_cell(run, kc)
    run(km.signal_kernel(signal.SIGINT))
    reply = interrupted_reply(run, kc, msg_id)
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"

    # interrupt_request on the control channel (the kernelspec's interrupt_mode)
    assert km.kernel_spec.interrupt_mode == "message"
    msg_id = start_sleep_cell(run, kc)
    run(km.interrupt_kernel())
    reply = interrupted_reply(run, kc, msg_id)
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"

    # the kernel is still fine afterwards
    reply, out = collect(run, kc, "'alive'")
    assert by_type(out, "execute_result")[0]["data"]["text/plain"] == "'alive'"


def test_restart_gives_a_fresh_kernel(kcr_spec, jp_start_kernel, run, mode, request):
    km, kc = run(jp_start_kernel(kcr_spec))
    collect(run, kc, "x = 1")
    old_pid = km.provisioner.pid
    old_remote = km.provisioner.remote_kernel_id
    run(km.restart_kernel())
    run(kc.wait_for_ready(timeout=30))
    reply, _ = collect(run, kc, "x")
    assert reply["ename"] == "NameError"
    wait_for(lambda: not pid_alive(old_pid), what="the old bridge to exit")
    assert km.provisioner.pid != old_pid
    if mode == "gateway":
        gateway = request.getfixturevalue("gateway")
        kernels = gateway.kernel_ids()
        assert old_remote not in kernels
        assert km.provisioner.remote_kernel_id in kernels


def test_shutdown_leaves_no_bridge_and_no_pod(kcr_spec, jp_start_kernel, run, mode, request):
    km, kc = run(jp_start_kernel(kcr_spec))
    collect(run, kc, "open('file.txt', 'w').write('x')")
    info = run(km.provisioner.get_provisioner_info())
    pid = info["pid"]
    assert pid_alive(pid)
    if mode == "gateway":
        gateway = request.getfixturevalue("gateway")
        assert info["remote_kernel_id"] in gateway.kernel_ids()
        leased = gateway.pools()["python"]["leased"]
    else:
        data_dir = info["data_dir"]
        assert processes_mentioning(data_dir), "the local runner should be running"

    run(km.shutdown_kernel())

    assert not pid_alive(pid)
    if mode == "gateway":
        assert info["remote_kernel_id"] not in gateway.kernel_ids()
        wait_for(
            lambda: gateway.pools()["python"]["leased"] == leased - 1,
            what="the gateway to release the pod",
        )
    else:
        wait_for(lambda: not processes_mentioning(data_dir), what="the local runner to exit")
        assert not Path(data_dir).exists()


def test_sigterm_and_sigkill_release_the_remote_kernel(
    kcr_spec, jp_start_kernel, run, mode, request
):
    """A bridge that is killed does not leak its pod: cleanup() deletes it."""
    km, _kc = run(jp_start_kernel(kcr_spec))
    info = run(km.provisioner.get_provisioner_info())
    run(km.provisioner.kill())
    run(km.provisioner.wait())
    assert not pid_alive(info["pid"])
    run(km.provisioner.cleanup())
    if mode == "gateway":
        gateway = request.getfixturevalue("gateway")
        assert info["remote_kernel_id"] not in gateway.kernel_ids()
    else:
        wait_for(lambda: not processes_mentioning(info["data_dir"]), what="the runner to die")
        assert not Path(info["data_dir"]).exists()


def test_provisioner_info_round_trip(kcr_spec, jp_start_kernel, run, mode, request):
    """Another process (a restarted Jupyter Server) finds the kernel again from the info."""
    km, kc = run(jp_start_kernel(kcr_spec))
    info = run(km.provisioner.get_provisioner_info())
    assert info["kernel_id"] == km.kernel_id
    assert info["connection_info"]["shell_port"] == km.shell_port
    if mode == "gateway":
        assert info["gateway_url"] == request.getfixturevalue("gateway").url
        assert info["remote_kernel_id"]
    else:
        assert info["gateway_url"] == "" and info["data_dir"]

    again = KCRProvisioner(kernel_id=km.kernel_id, kernel_spec=km.kernel_spec, parent=None)
    run(again.load_provisioner_info(info))
    assert run(again.get_provisioner_info()) == info
    assert run(again.poll()) is None
    assert again.has_process

    # it can interrupt the kernel's running cell ...
    msg_id = start_sleep_cell(run, kc)
    run(again.send_signal(signal.SIGINT))
    assert interrupted_reply(run, kc, msg_id)["ename"] == "KeyboardInterrupt"

    # ... and shut it down, releasing the remote kernel
    run(again.terminate())
    assert run(again.wait()) == 0
    assert run(again.poll()) == 0
    run(again.cleanup())
    if mode == "gateway":
        assert info["remote_kernel_id"] not in request.getfixturevalue("gateway").kernel_ids()
    else:
        wait_for(lambda: not processes_mentioning(info["data_dir"]), what="the runner to exit")


def test_malformed_messages_get_bad_message_replies_and_the_kernel_keeps_serving(
    kcr_spec, jp_start_kernel, run, mode
):
    """Issue 12: msg_type as a number or a list, no session, content of the wrong type."""
    _km, kc = run(jp_start_kernel(kcr_spec))
    sent = []
    for change in (
        {"msg_type": 5},
        {"msg_type": ["execute_request"]},
        {"session": None},
        {"content": {"code": 1}},
        {"content": {"code": "1", "silent": "no"}},
    ):
        msg = kc.session.msg("execute_request", {"code": "print('must not run')"})
        content = change.pop("content", None)
        if content is not None:
            msg["content"] = content
        msg["header"].update(change)
        kc.shell_channel.send(msg)
        sent.append(msg["header"]["msg_id"])

    async def replies():
        got = {}
        while len(got) < len(sent):
            msg = await kc.get_shell_msg(timeout=30)
            if msg["parent_header"].get("msg_id") in sent:
                got[msg["parent_header"]["msg_id"]] = msg["content"]
        return got

    for content in run(replies()).values():
        assert content["status"] == "error" and content["ename"] == "BadMessage", content
    _reply, out = collect(run, kc, "1+1")
    assert by_type(out, "execute_result")[0]["data"]["text/plain"] == "2"
    assert "must not run" not in str(by_type(out, "stream"))
