"""Training state on disk, all safetensors: weights, EMA, optimizer moments, RNG, data position.

    <dir>/weights.safetensors    the trained module's state dict
    <dir>/ema.safetensors        its exponential moving average
    <dir>/optim.safetensors      optimizer tensors, flattened as ``<param index>.<name>``
    <dir>/rng.safetensors        torch CPU RNG state (batches and noise come from seeded CPU generators)
    <dir>/state.json             step, learning-rate schedule length, optimizer param groups and
                                 scalar state, the run's config
Written to ``<dir>.tmp`` then renamed, so an interruption never leaves a half checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from worldsim.core.atomic import staged_dir, write_bytes, write_text
from worldsim.core.errors import WorldsimError


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for name, val in st.items():
            if torch.is_tensor(val):
                tensors[f"{idx}.{name}"] = val.cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, val in list(tensors.items()) + list(meta["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = val
    return {"state": state, "param_groups": meta["param_groups"]}


def save_train_state(
    path: str | Path,
    module: torch.nn.Module,
    ema: torch.nn.Module,
    opt: torch.optim.Optimizer,
    step: int,
    config: dict[str, Any],
    schedule_steps: int,
) -> None:
    """Write a resumable snapshot to folder ``path``: weights, EMA, optimizer, CPU RNG and
    ``state.json`` (``step``, ``schedule_steps``: the learning-rate schedule's length, ``config``).
    Atomic: written to a temp folder, then swapped in as a whole
    (:func:`worldsim.core.atomic.staged_dir`; on Linux the old ``path`` never disappears).
    """
    with staged_dir(path) as tmp:
        for name, m in (("weights", module), ("ema", ema)):
            tensors = {k: v.detach().cpu().contiguous() for k, v in m.state_dict().items()}
            write_bytes(tmp / f"{name}.safetensors", save(tensors))
        tensors, meta = _flatten_optimizer(opt)
        write_bytes(tmp / "optim.safetensors", save(tensors))
        write_bytes(tmp / "rng.safetensors", save({"cpu": torch.get_rng_state()}))
        state = {"step": step, "schedule_steps": schedule_steps, "optimizer": meta, "config": config}
        write_text(tmp / "state.json", json.dumps(state, indent=2))


def load_train_state(
    path: str | Path, module: torch.nn.Module, ema: torch.nn.Module, opt: torch.optim.Optimizer, config: dict[str, Any]
) -> tuple[int, int | None]:
    """Restore everything in place; refuses a run whose config differs. Returns the step and the
    recorded schedule length (None for a state saved before it was recorded)."""
    root = Path(path)
    if not (root / "state.json").is_file():
        raise WorldsimError(f"cannot resume: no training state in {root}")
    meta = json.loads((root / "state.json").read_text())
    config = json.loads(json.dumps(config))  # compare as stored (tuples become lists)
    if meta["config"] != config:
        diffs = sorted(k for k in set(meta["config"]) | set(config) if meta["config"].get(k) != config.get(k))
        raise WorldsimError(f"cannot resume {root}: config differs in {diffs}")
    module.load_state_dict(load_file(str(root / "weights.safetensors")))
    ema.load_state_dict(load_file(str(root / "ema.safetensors")))
    opt.load_state_dict(_unflatten_optimizer(load_file(str(root / "optim.safetensors")), meta["optimizer"]))
    torch.set_rng_state(load_file(str(root / "rng.safetensors"))["cpu"])
    schedule = meta.get("schedule_steps")
    return int(meta["step"]), (int(schedule) if schedule is not None else None)


def init_weights(
    path: str | Path,
    module: torch.nn.Module,
    ema: torch.nn.Module,
    adapt: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
) -> str:
    """Load earlier weights into a fresh run (``init_from``). A training state folder (``last/``)
    gives the weights and the EMA; an exported folder gives its file whose tensors fit ``module``
    (``model.safetensors`` of a checkpoint, ``codec.safetensors`` of a codec) to both. ``adapt``
    maps each loaded state dict onto this run's network first (the teacher stage: action
    weights of another encoder). Returns what was loaded, for the log."""
    root = Path(path)
    if not root.is_dir():
        raise WorldsimError(f"init_from: {root} is not a folder")
    want = module.state_dict()

    def load(f: Path) -> dict[str, torch.Tensor]:
        t = load_file(str(f))
        return adapt(t) if adapt is not None else t

    if (root / "weights.safetensors").is_file() and (root / "ema.safetensors").is_file():
        files = {module: root / "weights.safetensors", ema: root / "ema.safetensors"}
        tensors = {target: load(f) for target, f in files.items()}
        for target, f in files.items():
            if not _fits(tensors[target], want):
                raise WorldsimError(f"init_from: {f} does not fit this stage's network (other names or shapes)")
    else:
        exported = [root / n for n in ("model.safetensors", "codec.safetensors") if (root / n).is_file()]
        if not exported:
            raise WorldsimError(f"init_from: {root} holds no training state (last/) and no exported weights")
        fitting = [(f, t) for f in exported if _fits(t := load(f), want)]
        if not fitting:
            names = ", ".join(f.name for f in exported)
            raise WorldsimError(f"init_from: {names} in {root} do not fit this stage's network (other shapes)")
        f, t = fitting[0]
        files, tensors = {module: f, ema: f}, {module: t, ema: t}
    for target, t in tensors.items():
        target.load_state_dict(t)
    return ", ".join(sorted({str(f) for f in files.values()}))


def _fits(tensors: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> bool:
    return tensors.keys() == want.keys() and all(tensors[k].shape == want[k].shape for k in want)
