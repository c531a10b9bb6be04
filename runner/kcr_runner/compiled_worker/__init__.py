"""The compiled-program worker: every cell is written, compiled and run as a new program.

Started as ``python -m kcr_runner.compiled_worker LANGUAGE``; the language's ``ProgramSpec``
in ``kcr_runner/languages.py`` says how to build and run a cell. Files the program writes in
the workspace persist between cells; memory does not.
"""
