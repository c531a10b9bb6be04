"""The Python worker: one long-lived IPython ``InteractiveShell`` behind the worker protocol.

Started by the runner as ``python -m kcr_runner.python_worker`` (behind an optional sandbox
prefix); talks to the runner only over its inherited stdin/stdout pipes.
"""
