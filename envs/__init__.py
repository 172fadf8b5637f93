"""Ground-truth worlds. ``make_env(name, seed, frame_size)``; no name = the built-in world.

:data:`ENV_REGISTRY` is the one registry: each entry names the native factory and the
versioned Gymnasium id it is also registered under (``worldsim/Builtin-v1``, ``worldsim/Doom-v1``;
see :mod:`envs.gym` and docs/environments.md). Importing ``envs`` registers those ids.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from envs.env import Env, Observation
from worldsim.core.errors import unknown_name
from worldsim.data.format import parse_frame_size

DEFAULT_ENV = "builtin"


@dataclass(frozen=True)
class EnvEntry:
    """A registered world: ``factory(seed, frame_size, **kwargs) -> Env`` and its Gymnasium id."""

    factory: Callable[..., Env]
    gym_id: str


def _builtin(seed: int, frame_size: tuple[int, int], **kwargs: Any) -> Env:
    from envs.builtin import BuiltinWorld  # imports moderngl only when a world is made

    return BuiltinWorld(seed=seed, frame_size=frame_size, **kwargs)


def _doom(seed: int, frame_size: tuple[int, int], gl_context: Any = None, **kwargs: Any) -> Env:
    from envs.doom import DoomWorld  # imports vizdoom (the optional [doom] extra) only when made

    # ViZDoom draws in its own process: a window's GL context (given to every world) is not used.
    return DoomWorld(seed=seed, frame_size=frame_size, **kwargs)


ENV_REGISTRY: dict[str, EnvEntry] = {
    "builtin": EnvEntry(_builtin, "worldsim/Builtin-v1"),
    "doom": EnvEntry(_doom, "worldsim/Doom-v1"),
}


def available_envs() -> list[str]:
    """Sorted names accepted by :func:`make_env` (``builtin``, ``doom``)."""
    return sorted(ENV_REGISTRY)


def make_env(name: str | None = None, seed: int = 0, frame_size: Any = (64, 64), **kwargs: Any) -> Env:
    """Build a registered world; an unknown name raises a WorldsimError listing the choices."""
    name = name or DEFAULT_ENV
    if name not in ENV_REGISTRY:
        raise unknown_name("env", name, ENV_REGISTRY)
    return ENV_REGISTRY[name].factory(int(seed), parse_frame_size(frame_size), **kwargs)


from envs.gym import register_gym_envs  # noqa: E402  (needs ENV_REGISTRY above)

register_gym_envs()

__all__ = ["DEFAULT_ENV", "ENV_REGISTRY", "Env", "EnvEntry", "Observation", "available_envs", "make_env"]
