"""``worldsim-recipe``: record a whole training/validation data set from a recipe config.

    worldsim-recipe builtin_v1 data/builtin_v1 [--scale 0.1] [--jobs 4] [--no-preview]

Each part of the recipe is one ``worldsim-record`` run into ``<out>/<split>/<part>``; rerunning
resumes every part. Seed ranges of parts must not overlap (checked), so validation worlds are
never seen in training. ``--scale`` multiplies every part's episode count (for quick trials);
``--jobs`` records that many parts at once, each in its own process with its own GL context
(an episode depends only on its seed, so the data are the same); ``--no-preview`` skips each
part's preview.mp4 and contact sheet.
"""

from __future__ import annotations

import argparse
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from envs.builtin import BuiltinWorldConfig
from envs.doom import DoomConfig
from envs.record import RecordConfig, record
from worldsim.core.config import CONFIG_DIR
from worldsim.core.errors import WorldsimError, clean_errors, unknown_name


@dataclass
class RecipePart:
    """One recorded folder ``<out>/<split>/<name>``: ``num_episodes`` episodes of ``policy`` in worlds
    ``seed .. seed + num_episodes - 1``; ``split`` is ``train`` or ``val``.
    """

    name: str
    split: str  # train | val
    policy: str
    seed: int
    num_episodes: int
    doom: dict[str, Any] = field(default_factory=dict)  # env=doom: this part's changes to the recipe's doom
    episode_len: int | None = None  # frames per episode; None: the recipe's


@dataclass
class RecipeConfig:
    """A dataset recipe (``configs/recipe/*.yaml``): the world, shared frame size and episode
    length (a part may set its own), and its parts. With ``env: doom`` each part records with
    ``doom`` updated by the part's own ``doom`` (e.g. another wad for held-out levels); the
    built-in world's settings, its camera controller included (``world.controller.fps: 30`` for
    a 30 frames/s world), are ``world``."""

    env: str = "builtin"
    frame_size: Any = field(default_factory=lambda: [64, 64])
    episode_len: int = 64
    avoid_obstacles: bool = False  # passed to every part's worldsim-record run
    world: BuiltinWorldConfig = field(default_factory=BuiltinWorldConfig)  # env=builtin: every part's
    doom: DoomConfig = field(default_factory=DoomConfig)
    parts: list[RecipePart] = field(default_factory=list)


def shipped_recipes() -> dict[str, Path]:
    """The recipes shipped in ``worldsim/configs/recipe``, by name."""
    return {q.stem: q for q in sorted((CONFIG_DIR / "recipe").glob("*.yaml"))}


def recipe_path(path: str | Path) -> Path:
    """A recipe file: ``path`` itself when it is a file, else a shipped recipe named by its bare
    name (``builtin_v1``) or by its old checkout path (``configs/recipe/builtin_v1.yaml``)."""
    p = Path(path)
    if p.is_file():
        return p
    shipped = shipped_recipes()
    if p.stem in shipped and (p.parent == Path(".") or p.parent.parts[-2:] == ("configs", "recipe")):
        return shipped[p.stem]
    raise WorldsimError(f"recipe {p} does not exist (shipped recipes: {', '.join(shipped)})")


def load_recipe(path: str | Path) -> RecipeConfig:
    """Load and validate a recipe file or shipped recipe name (:func:`recipe_path`).

    Raises ``WorldsimError`` for a missing file, unknown keys or wrong types, and for the
    checks of :func:`check_disjoint_seeds`.
    """
    p = recipe_path(path)
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(RecipeConfig), OmegaConf.load(p))
    except Exception as e:  # omegaconf reports unknown keys and type errors with their path
        raise WorldsimError(f"recipe {p}: {str(e).splitlines()[0]}") from e
    recipe: RecipeConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    check_disjoint_seeds(recipe)
    return recipe


def check_disjoint_seeds(recipe: RecipeConfig) -> None:
    """Raise ``WorldsimError`` if two parts share a world seed (held-out worlds must stay unseen) or
    a part's split is not ``train``/``val``.
    """
    spans = sorted((p.seed, p.seed + p.num_episodes, f"{p.split}/{p.name}") for p in recipe.parts)
    for (_a0, a1, an), (b0, _, bn) in zip(spans, spans[1:], strict=False):
        if b0 < a1:
            raise WorldsimError(f"recipe parts {an} and {bn} share world seeds {b0}..{a1 - 1}")
    for p in recipe.parts:
        if p.split not in ("train", "val"):
            raise WorldsimError(f"recipe part {p.name}: split must be 'train' or 'val', got {p.split!r}")
        if p.doom and recipe.env != "doom":
            raise WorldsimError(f"recipe part {p.name}: a doom section needs env: doom (this recipe's: {recipe.env!r})")
        part_doom(recipe, p)


def part_doom(recipe: RecipeConfig, part: RecipePart) -> DoomConfig:
    """The DOOM settings ``part`` records with: the recipe's, updated by the part's ``doom``.
    Raises ``WorldsimError`` for a key :class:`envs.doom.DoomConfig` does not have or a value of
    the wrong type."""
    unknown = sorted(set(part.doom) - {f.name for f in fields(DoomConfig)})
    if unknown:
        raise unknown_name(f"doom setting of recipe part {part.name}", unknown[0], [f.name for f in fields(DoomConfig)])
    try:
        merged = OmegaConf.merge(OmegaConf.structured(recipe.doom), part.doom)
    except Exception as e:  # omegaconf names the key and the type it wanted
        raise WorldsimError(f"recipe part {part.name}: doom: {str(e).splitlines()[0]}") from e
    doom: DoomConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    return doom


def _record_count(cfg: RecordConfig) -> int:
    return len(record(cfg))


def run_recipe(
    recipe: RecipeConfig, out: str | Path, scale: float = 1.0, jobs: int = 1, preview: bool = True
) -> dict[str, int]:
    """Record every part (``jobs`` at a time); returns episodes per part folder."""
    if jobs < 1:
        raise WorldsimError(f"jobs must be at least 1, got {jobs}")
    configs = {}
    for p in recipe.parts:
        n = max(1, round(p.num_episodes * scale))
        print(f"== {p.split}/{p.name}: {n} episodes of {p.policy}, world seeds {p.seed}..{p.seed + n - 1}")
        configs[f"{p.split}/{p.name}"] = RecordConfig(
            env=recipe.env,
            world=recipe.world,
            doom=part_doom(recipe, p),
            policy=p.policy,
            num_episodes=n,
            episode_len=recipe.episode_len if p.episode_len is None else p.episode_len,
            frame_size=recipe.frame_size,
            seed=p.seed,
            out=str(Path(out) / p.split / p.name),
            preview=preview,
            avoid_obstacles=recipe.avoid_obstacles,
        )
    if jobs == 1:
        return {name: _record_count(cfg) for name, cfg in configs.items()}
    # spawn, not fork: every part opens its own GL context in a fresh process.
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {name: pool.submit(_record_count, cfg) for name, cfg in configs.items()}
        return {name: f.result() for name, f in futures.items()}


@clean_errors
def main(argv: list[str] | None = None) -> None:
    """Console entry point ``worldsim-recipe <recipe> <out> [--scale] [--jobs] [--no-preview]``."""
    parser = argparse.ArgumentParser(
        prog="worldsim-recipe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("recipe", help=f"a recipe YAML, or a shipped recipe's name ({', '.join(shipped_recipes())})")
    parser.add_argument("out", help="folder to record into (resumed if it exists)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every part's episode count")
    parser.add_argument("--jobs", type=int, default=1, help="parts recorded at once, one process each")
    parser.add_argument("--no-preview", action="store_true", help="skip each part's preview.mp4 and contact sheet")
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error("--scale must be positive")
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    counts = run_recipe(load_recipe(args.recipe), args.out, args.scale, args.jobs, not args.no_preview)
    print("recorded: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
