"""Where the hydra configs live, and the typed schemas they mirror: :func:`to_schema` turns a
composed config into its dataclass, refusing keys the schema does not know."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from worldsim.core.errors import WorldsimError

# Shipped inside the package (package data), so a non-editable install has them too.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

T = TypeVar("T")


def _unknown_keys(node: Any, schema: type, prefix: str) -> list[str]:
    """``prefix.key`` for each key of ``node`` (recursively) that dataclass ``schema`` has no field for."""
    if not isinstance(node, DictConfig) or not dataclasses.is_dataclass(schema):
        return []
    try:
        hints = typing.get_type_hints(schema)
    except (NameError, TypeError):  # an annotation not importable here: check this level only
        hints = {}
    names = {f.name for f in dataclasses.fields(schema)}
    bad: list[str] = []
    for key in node.keys():
        name = str(key)
        if name not in names:
            close = difflib.get_close_matches(name, sorted(names), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            bad.append(f"'{prefix}{name}'{hint}")
            continue
        sub = hints.get(name)
        if isinstance(sub, type) and dataclasses.is_dataclass(sub):
            bad += _unknown_keys(node[name], sub, f"{prefix}{name}.")
    return bad


def to_schema(cfg: Any, schema: type[T]) -> T:
    """The composed hydra config as an instance of ``schema``.

    hydra's ``+key=value`` adds a key even to a structured config, where it would be dropped
    without a word (``+polcy=look_around`` recording the default policy): such keys are refused
    here with one line naming them and the nearest valid key."""
    bad = sorted(_unknown_keys(cfg, schema, ""))
    if bad:
        raise WorldsimError(f"unknown config key{'s' if len(bad) > 1 else ''} {', '.join(bad)} for {schema.__name__}")
    return typing.cast(T, OmegaConf.to_object(cfg))
