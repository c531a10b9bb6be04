"""The Bash worker: one long-lived ``bash`` process; variables, functions and ``cd`` persist.

Started as ``python -m kcr_runner.bash_worker``. See ``worker.BashWorker`` for how cells are
run, how their end is detected and how an interrupt stops a cell without losing the shell.
"""
