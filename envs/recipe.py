"""``worldsim-recipe``: record a whole training/validation data set from a recipe config.

    worldsim-recipe configs/recipe/builtin_v1.yaml data/builtin_v1 [--scale 0.1]

Each part of the recipe is one ``worldsim-record`` run into ``<out>/<split>/<part>``; rerunning
resumes every part. Seed ranges of parts must not overlap (checked), so validation worlds are
never seen in training. ``--scale`` multiplies every part's episode count (for quick trials).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from envs.record import RecordConfig, record
from worldsim.errors import WorldsimError, clean_errors


@dataclass
class RecipePart:
    name: str
    split: str  # train | val
    policy: str
    seed: int
    num_episodes: int


@dataclass
class RecipeConfig:
    frame_size: Any = field(default_factory=lambda: [64, 64])
    episode_len: int = 64
    avoid_obstacles: bool = False  # passed to every part's worldsim-record run
    parts: list[RecipePart] = field(default_factory=list)


def load_recipe(path: str | Path) -> RecipeConfig:
    p = Path(path)
    if not p.is_file():
        raise WorldsimError(f"recipe {p} does not exist")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(RecipeConfig), OmegaConf.load(p))
    except Exception as e:  # omegaconf reports unknown keys and type errors with their path
        raise WorldsimError(f"recipe {p}: {str(e).splitlines()[0]}") from e
    recipe: RecipeConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    check_disjoint_seeds(recipe)
    return recipe


def check_disjoint_seeds(recipe: RecipeConfig) -> None:
    spans = sorted((p.seed, p.seed + p.num_episodes, f"{p.split}/{p.name}") for p in recipe.parts)
    for (_a0, a1, an), (b0, _, bn) in zip(spans, spans[1:], strict=False):
        if b0 < a1:
            raise WorldsimError(f"recipe parts {an} and {bn} share world seeds {b0}..{a1 - 1}")
    for p in recipe.parts:
        if p.split not in ("train", "val"):
            raise WorldsimError(f"recipe part {p.name}: split must be 'train' or 'val', got {p.split!r}")


def run_recipe(recipe: RecipeConfig, out: str | Path, scale: float = 1.0) -> dict[str, int]:
    """Record every part; returns episodes per part folder."""
    counts = {}
    for p in recipe.parts:
        folder = Path(out) / p.split / p.name
        n = max(1, round(p.num_episodes * scale))
        print(f"== {p.split}/{p.name}: {n} episodes of {p.policy}, world seeds {p.seed}..{p.seed + n - 1}")
        cfg = RecordConfig(
            policy=p.policy,
            num_episodes=n,
            episode_len=recipe.episode_len,
            frame_size=recipe.frame_size,
            seed=p.seed,
            out=str(folder),
            avoid_obstacles=recipe.avoid_obstacles,
        )
        counts[f"{p.split}/{p.name}"] = len(record(cfg))
    return counts


@clean_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="worldsim-recipe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("recipe", help="a recipe YAML, e.g. configs/recipe/builtin_v1.yaml")
    parser.add_argument("out", help="folder to record into (resumed if it exists)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every part's episode count")
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error("--scale must be positive")
    counts = run_recipe(load_recipe(args.recipe), args.out, args.scale)
    print("recorded: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
