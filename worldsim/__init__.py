"""worldsim: a local neural game engine (see README and docs/)."""

import sys
from typing import Any

import gymnasium

__version__ = "0.1.0"


def load_engine(path: Any, device: str = "cpu", **kwargs: Any) -> Any:
    """``worldsim.load_engine(checkpoint_folder)`` -> :class:`worldsim.inference.engine.Engine` (imported lazily)."""
    from worldsim.inference.engine import load_engine as _load

    return _load(path, device=device, **kwargs)


WORLD_MODEL_GYM_ID = "worldsim/WorldModel-v1"


def _register_gym_envs() -> None:
    """Register ``worldsim/WorldModel-v1`` (entry point by name: no torch until it is made) and,
    through ``import envs``, every world's id. ``envs`` imports this package first; while it is
    being imported it registers its own ids at its end."""
    if WORLD_MODEL_GYM_ID not in gymnasium.registry:
        gymnasium.register(id=WORLD_MODEL_GYM_ID, entry_point="worldsim.gym.world_model:WorldModelEnv")
    if "envs" not in sys.modules:
        import envs  # noqa: F401  (registers the worlds)


_register_gym_envs()
