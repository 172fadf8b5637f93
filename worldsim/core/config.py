"""Where the hydra configs live, and the typed schemas they mirror: :func:`to_schema` turns a
composed config into its dataclass, refusing keys the schema does not know;
:func:`one_line_config_errors` makes a command's bad override (a typo, a value of the wrong type,
a preset that does not exist) one line on stderr instead of hydra's report."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from worldsim.core.errors import WorldsimError

# Shipped inside the package (package data), so a non-editable install has them too.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

DEFAULT_CHECKPOINT = "assets/student_builtin_v11"
"""The shipped model of the built-in world that ``play.py``, ``worldsim-rollout``, ``worldsim-eval``
and ``worldsim-bench`` load when no checkpoint is given (relative: the current folder, then the
worldsim checkout): the 1-step distilled student at 30 frames/s with the slim decoder; its README
says what it scores and how fast it plays. ``worldsim-eval``'s data, horizon and turning rate follow its rate
(``worldsim.eval.evaluate.at_model_rate``)."""

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


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


def _did_you_mean(key: str, schema: Any) -> str:
    """`` (did you mean 'a.b'?)`` for the field of dataclass ``schema`` nearest the last part of
    ``key`` (dotted), or nothing."""
    if not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
        return ""
    parent, _, name = key.rpartition(".")
    close = difflib.get_close_matches(name, sorted(f.name for f in dataclasses.fields(schema)), n=1)
    return f" (did you mean '{parent + '.' if parent else ''}{close[0]}'?)" if close else ""


def _one_line(e: Exception) -> str:
    """hydra's composition error ``e`` as one line (see :func:`override_error`)."""
    cause = e.__cause__
    key = getattr(cause, "full_key", None)
    if key and "not in" in str(cause):  # a key the schema does not have
        schema = getattr(cause, "object_type", None)
        name = getattr(schema, "__name__", "the config")
        return f"unknown config key '{key}'{_did_you_mean(key, schema)} for {name}"
    if key:  # a value the field cannot take
        return f"{key}: {str(cause).splitlines()[0]}"
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    lines = lines[: next((i for i, ln in enumerate(lines) if ln.startswith(("Config search path", "See http"))), None)]
    head, rest = lines[0], lines[1:]
    items = [ln.strip() for ln in rest if ln.startswith("\t")]
    said = [ln.strip().rstrip(":") for ln in rest if not ln.startswith("\t")]
    tail = "; ".join(said) + (": " + ", ".join(items) if items else "")
    return head + (f"; {tail[0].lower()}{tail[1:]}" if tail else "")


def override_error(config_name: str, overrides: list[str]) -> str | None:
    """What hydra would refuse in the command-line ``overrides`` of config ``config_name`` (a key
    the schema lacks, with the nearest one; a value of the wrong type; a preset that does not
    exist, with those that do; an override it cannot parse), as one line; None when it composes.
    A command line with hydra's own flags (``--help``, ``-m`` ...) or settings (``hydra.*``, which
    may change where configs are found or how they compose) is left to hydra whole."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    own = any(a.startswith("-") or a.lstrip("+~").startswith(("hydra.", "hydra/")) for a in overrides)
    if own or GlobalHydra.instance().is_initialized():  # hydra's flags and settings (search path, mode ...)
        return None
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            compose(config_name, overrides=overrides)
    except HydraException as e:
        return _one_line(e)
    return None


def one_line_config_errors(config_name: str) -> Callable[[F], F]:
    """Decorator for a command's ``@hydra.main`` function (put above it): the command line's
    overrides are checked first (:func:`override_error`); a problem is one line on stderr
    (``error: ...``) and exit code 2, as every other bad input of the commands."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            problem = override_error(config_name, sys.argv[1:])
            if problem:
                print(f"error: {problem}", file=sys.stderr)
                sys.exit(2)
            return fn(*args, **kwargs)

        return typing.cast(F, wrapper)

    return decorate
