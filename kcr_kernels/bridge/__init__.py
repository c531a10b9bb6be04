"""The bridge kernel: a local ZMQ kernel process in front of a kcr kernel.

``python -m kcr_kernels.bridge -f CONNECTION_FILE [options]`` is what the
``kcr-*`` kernelspecs run (the ``kcr-provisioner`` adds the options). One job
per module:

* :mod:`.args` — the command line (ipykernel's arguments accepted and ignored)
  and the ``KERNEL_*`` environment passed on to the kernel;
* :mod:`.sockets` — the connection file's ZMQ sockets: signing, heartbeat,
  iopub (XPUB, ``iopub_welcome`` for every subscriber);
* :mod:`.kernel` — the process: wires the sockets to a kernel, start-up
  statuses, signals, exit codes (:func:`.kernel.main`);
* :mod:`.gateway` — gateway mode: relays messages to a gateway kernel's
  WebSocket, reconnects;
* :mod:`.gateway_api` — the gateway's REST calls (also used by the
  provisioner), safe in forked and spawned processes;
* :mod:`.local` — local mode: one sandboxed runner of its own behind a
  :class:`~kcr_kernels.session.KernelSession`.

This package imports nothing on import, so the provisioner can use
:mod:`.args` and :mod:`.gateway_api` without loading ZMQ or tornado's
WebSocket client.
"""
