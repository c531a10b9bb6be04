"""``python -m kcr_runner.java_worker``."""

from __future__ import annotations

from ..subprocess_worker import start
from .worker import JavaWorker


def main() -> None:
    start(JavaWorker, "java")


if __name__ == "__main__":
    main()
