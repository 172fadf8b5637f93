"""Registry of action encoders by stable name; third-party encoders join via entry points.

The registry is the single source of truth. A plugin package declares, in its metadata::

    [project.entry-points."worldsim.action_encoders"]
    my_encoder = "my_package.encoders"

and loading that entry point only imports the module, whose ``@register_action_encoder``
decorators add its classes here.
"""

from __future__ import annotations

import importlib.metadata
import warnings

from worldsim.core.actions.encoder import ActionEncoder
from worldsim.core.errors import WorldsimError, unknown_name

ENTRY_POINT_GROUP = "worldsim.action_encoders"

_REGISTRY: dict[str, type[ActionEncoder]] = {}
_plugins_loaded = False


def register_action_encoder(cls: type[ActionEncoder]) -> type[ActionEncoder]:
    """Class decorator: add an encoder under its ``name``; a second, different class is an error."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__qualname__} needs a non-empty class attribute 'name'")
    if not isinstance(getattr(cls, "version", None), int):
        raise TypeError(f"{cls.__qualname__} needs an integer class attribute 'version'")
    existing = _REGISTRY.get(name)
    # The same class seen again (a module imported twice, or reloaded) may re-register.
    same = existing is not None and (existing.__module__, existing.__qualname__) == (cls.__module__, cls.__qualname__)
    if existing is not None and not same:
        raise ValueError(f"action encoder name {name!r} is taken by {existing.__module__}.{existing.__qualname__}")
    _REGISTRY[name] = cls
    return cls


def load_plugins(force: bool = False) -> list[str]:
    """Import every module named in the ``worldsim.action_encoders`` entry-point group.

    Returns the entry-point names loaded. A plugin that fails to import is reported as a
    warning and skipped, so one broken package does not take the built-ins down with it.
    """
    global _plugins_loaded
    if _plugins_loaded and not force:
        return []
    _plugins_loaded = True
    loaded = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
            loaded.append(ep.name)
        except Exception as e:  # a broken third-party package must not break worldsim
            warnings.warn(f"action encoder plugin {ep.name!r} ({ep.value}) failed to load: {e}", stacklevel=2)
    return loaded


def available_action_encoders() -> list[str]:
    """Names of all registered encoders, built-ins and plugins."""
    _ensure_loaded()
    return sorted(_REGISTRY)


def get_action_encoder_class(name: str) -> type[ActionEncoder]:
    """The class registered as ``name`` (plugins loaded first).

    Raises ``WorldsimError`` "unknown action encoder 'x'; valid: ..." for an unregistered name.
    """
    _ensure_loaded()
    if name not in _REGISTRY:
        raise unknown_name("action encoder", name, _REGISTRY)
    return _REGISTRY[name]


def make_action_encoder(name: str, key_names: list[str]) -> ActionEncoder:
    """Build the encoder registered as ``name`` for a key list."""
    cls = get_action_encoder_class(name)
    try:
        return cls(key_names)
    except WorldsimError:
        raise
    except (KeyError, ValueError) as e:
        raise WorldsimError(f"action encoder {name!r} cannot work with keys {key_names}: {e}") from e


def _ensure_loaded() -> None:
    import worldsim.core.actions.builtin  # noqa: F401  (registers the built-ins)

    load_plugins()
