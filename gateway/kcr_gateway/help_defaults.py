"""Real defaults in ``--help`` for traits whose default is computed at run time.

traitlets prints a trait's *static* default (``Default: ''``) in ``--help`` and
``--help-all``, even when a ``@default`` method computes the value actually used
(an environment variable, a path under ``jupyter --data-dir``). :func:`shown_default`
gives such a trait the text to print instead, e.g.::

    backend = shown_default(Unicode(config=True, help="..."), "$KCR_BACKEND, else 'local'")
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from traitlets import TraitType

T = TypeVar("T", bound=TraitType)


def shown_default(trait: T, text: str | Callable[[], str]) -> T:
    """``trait``, printing ``text`` (or what ``text()`` returns) as its default in --help."""
    trait.default_value_repr = text if callable(text) else (lambda: text)  # type: ignore[method-assign]
    return trait
