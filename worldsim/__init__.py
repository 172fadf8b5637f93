"""worldsim: a local neural game engine (see README and docs/)."""

from typing import Any

__version__ = "0.1.0"


def load_engine(path: Any, device: str = "cpu", **kwargs: Any) -> Any:
    """``worldsim.load_engine(checkpoint_folder)`` -> :class:`worldsim.inference.engine.Engine` (imported lazily)."""
    from worldsim.inference.engine import load_engine as _load

    return _load(path, device=device, **kwargs)
