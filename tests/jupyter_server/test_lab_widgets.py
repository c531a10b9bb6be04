"""Widget comms through Jupyter Server's GatewayClient, as JupyterLab's widget manager uses them."""

from __future__ import annotations

import contextlib

from tests.jupyter_server.client import APIError, KernelChannels


async def test_slider_comm_open_and_comm_msg_cross_the_server(api):
    model = await api.start_session()
    ch = await KernelChannels.open(api, model["kernel"]["id"], model["id"])
    try:
        info = await ch.request("comm_info_request", {"target_name": "jupyter.widget"})
        assert info["content"]["status"] == "ok", info["content"]
        run = await ch.execute("import ipywidgets as w; s = w.IntSlider(); s")
        opens = [
            m
            for m in run.outputs
            if m["msg_type"] == "comm_open" and m["content"].get("target_name") == "jupyter.widget"
        ]
        assert opens, [m["msg_type"] for m in ch.received]
        assert all(m["channel"] == "iopub" for m in opens)
        slider = next(
            m for m in opens if m["content"]["data"]["state"].get("_model_name") == "IntSliderModel"
        )
        comm_id = slider["content"]["comm_id"]
        ch.send(
            "comm_msg",
            {
                "comm_id": comm_id,
                "data": {"method": "update", "state": {"value": 7}, "buffer_paths": []},
            },
        )
        check = await ch.execute("print(s.value)")
        assert check.stdout.strip() == "7"
    finally:
        ch.close()
        with contextlib.suppress(APIError):
            await api.call("DELETE", f"/api/sessions/{model['id']}")
