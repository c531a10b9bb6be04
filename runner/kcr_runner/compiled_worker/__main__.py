"""``python -m kcr_runner.compiled_worker LANGUAGE``."""

from __future__ import annotations

import sys

from ..languages import get_language
from ..subprocess_worker import start
from .worker import CompiledWorker


def main() -> None:
    if len(sys.argv) != 2:
        print("usage: python -m kcr_runner.compiled_worker LANGUAGE", file=sys.stderr)
        raise SystemExit(2)
    spec = get_language(sys.argv[1])
    if spec.program is None:
        print(f"kcr worker: {spec.name} is not a compiled-program language", file=sys.stderr)
        raise SystemExit(2)
    start(lambda channel, router: CompiledWorker(channel, router, spec), spec.name)


if __name__ == "__main__":
    main()
