"""The one exception type users see as a clean one-line message.

Command-line apps catch :class:`WorldsimError` at the top and print ``error: <message>``
instead of a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable
from typing import TypeVar


class WorldsimError(Exception):
    """Bad input or environment: the message alone must tell the user what to fix."""


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> WorldsimError:
    """The error for a name that is not in a registry, listing the valid ones."""
    return WorldsimError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(valid))}")


F = TypeVar("F", bound=Callable[..., object])


def clean_errors(fn: F) -> F:
    """Decorator for CLI entry points: WorldsimError -> one line on stderr, exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return fn(*args, **kwargs)
        except WorldsimError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]
