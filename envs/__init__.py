"""Ground-truth worlds. ``make_env(name, seed, frame_size)``; no name = the built-in world."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from envs.env import Env, Observation
from worldsim.core.errors import unknown_name
from worldsim.data.format import parse_frame_size

DEFAULT_ENV = "builtin"


def _builtin(seed: int, frame_size: tuple[int, int], **kwargs: Any) -> Env:
    from envs.builtin import BuiltinWorld  # imports moderngl only when a world is made

    return BuiltinWorld(seed=seed, frame_size=frame_size, **kwargs)


def _doom(seed: int, frame_size: tuple[int, int], **kwargs: Any) -> Env:
    from envs.doom import DoomWorld  # imports vizdoom (the optional [doom] extra) only when made

    return DoomWorld(seed=seed, frame_size=frame_size, **kwargs)


ENV_REGISTRY: dict[str, Callable[..., Env]] = {"builtin": _builtin, "doom": _doom}


def available_envs() -> list[str]:
    """Sorted names accepted by :func:`make_env` (``builtin``, ``doom``)."""
    return sorted(ENV_REGISTRY)


def make_env(name: str | None = None, seed: int = 0, frame_size: Any = (64, 64), **kwargs: Any) -> Env:
    """Build a registered world; an unknown name raises a WorldsimError listing the choices."""
    name = name or DEFAULT_ENV
    if name not in ENV_REGISTRY:
        raise unknown_name("env", name, ENV_REGISTRY)
    return ENV_REGISTRY[name](int(seed), parse_frame_size(frame_size), **kwargs)


__all__ = ["DEFAULT_ENV", "Env", "Observation", "available_envs", "make_env"]
