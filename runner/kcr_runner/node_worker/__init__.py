"""The JavaScript/TypeScript worker: one long-lived Node.js process holding one ``vm`` context.

``python -m kcr_runner.node_worker javascript|typescript`` arranges the descriptors and then
execs ``node worker.js`` (the worker itself is JavaScript; see ``worker.js``).
"""
