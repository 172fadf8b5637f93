"""Action encoders: the registry, the contract and the built-ins."""

from worldsim.core.actions.encoder import ActionEncoder
from worldsim.core.actions.registry import (
    ENTRY_POINT_GROUP,
    available_action_encoders,
    get_action_encoder_class,
    load_plugins,
    make_action_encoder,
    register_action_encoder,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "ActionEncoder",
    "available_action_encoders",
    "get_action_encoder_class",
    "load_plugins",
    "make_action_encoder",
    "register_action_encoder",
]
