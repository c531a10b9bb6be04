"""``python -m kcr_runner.bash_worker``."""

from __future__ import annotations

from ..subprocess_worker import start
from .worker import BashWorker, bash_version


def main() -> None:
    start(BashWorker, "bash", language_version=bash_version())


if __name__ == "__main__":
    main()
