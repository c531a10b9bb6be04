"""``python -m kcr_runner.r_worker``."""

from __future__ import annotations

from ..subprocess_worker import start
from .worker import RWorker


def main() -> None:
    start(RWorker, "r")


if __name__ == "__main__":
    main()
