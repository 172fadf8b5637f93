import numpy as np
import pytest

from envs.recipe import RecipeConfig, RecipePart, check_disjoint_seeds, load_recipe, main, run_recipe
from worldsim.core.config import CONFIG_DIR
from worldsim.core.errors import WorldsimError
from worldsim.data.reader import RolloutDataset


def test_shipped_recipes_load_with_disjoint_train_and_val_worlds():
    for path in (CONFIG_DIR / "recipe").glob("*.yaml"):
        recipe = load_recipe(path)
        train = {s for p in recipe.parts if p.split == "train" for s in range(p.seed, p.seed + p.num_episodes)}
        val = {s for p in recipe.parts if p.split == "val" for s in range(p.seed, p.seed + p.num_episodes)}
        assert train and val and not train & val


def test_a_shipped_recipe_is_found_by_name_or_by_its_old_checkout_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # away from any checkout: the recipes ship inside the package
    want = load_recipe(CONFIG_DIR / "recipe" / "builtin_v1.yaml")
    assert load_recipe("builtin_v1") == want
    assert load_recipe("configs/recipe/builtin_v1.yaml") == want
    with pytest.raises(WorldsimError, match="shipped recipes: builtin_v1, builtin_v1_30fps, builtin_v2"):
        load_recipe("builtin_v9")


def test_help_names_every_shipped_recipe(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps the list across lines
    for path in (CONFIG_DIR / "recipe").glob("*.yaml"):
        assert path.stem in help_text


def test_overlapping_seeds_and_bad_keys_are_refused(tmp_path):
    parts = [RecipePart("a", "train", "explore", 0, 10), RecipePart("b", "val", "explore", 5, 10)]
    with pytest.raises(WorldsimError, match="share world seeds 5..9"):
        check_disjoint_seeds(RecipeConfig(parts=parts))
    bad = tmp_path / "r.yaml"
    bad.write_text("episode_len: 8\nepisodes: 3\n")
    with pytest.raises(WorldsimError, match="episodes"):
        load_recipe(bad)
    with pytest.raises(WorldsimError, match="does not exist"):
        load_recipe(tmp_path / "none.yaml")


def test_a_small_recipe_records_every_part(tmp_path):
    recipe = RecipeConfig(
        frame_size=[16, 16],
        episode_len=6,
        parts=[
            RecipePart("explore", "train", "explore", 10, 2),
            RecipePart("turn", "val", "full_turn", 500, 1, episode_len=9),  # a part's own length
        ],
    )
    counts = run_recipe(recipe, tmp_path / "d")
    assert counts == {"train/explore": 2, "val/turn": 1}
    val = RolloutDataset(tmp_path / "d" / "val" / "turn")
    assert val.episodes[0].seed == 500 and val.meta.frame_size == (16, 16)
    train = RolloutDataset(tmp_path / "d" / "train" / "explore")
    assert [len(train.load(i, ("c2w",))["c2w"]) for i in range(2)] == [6, 6] and len(val.load(0, ("c2w",))["c2w"]) == 9


def test_parallel_parts_record_the_same_episodes(tmp_path):
    recipe = RecipeConfig(
        frame_size=[16, 16],
        episode_len=6,
        parts=[RecipePart("explore", "train", "explore_lights", 10, 2), RecipePart("turn", "val", "turns", 500, 2)],
    )
    serial = run_recipe(recipe, tmp_path / "a", preview=False)
    parallel = run_recipe(recipe, tmp_path / "b", jobs=2, preview=False)
    assert serial == parallel == {"train/explore": 2, "val/turn": 2}
    for part in ("train/explore", "val/turn"):
        a, b = RolloutDataset(tmp_path / "a" / part), RolloutDataset(tmp_path / "b" / part)
        assert not (tmp_path / "b" / part / "preview.mp4").exists()
        for i in range(2):
            ea, eb = a.load(i, ("frames", "keys", "mouse")), b.load(i, ("frames", "keys", "mouse"))
            for k in ea:
                np.testing.assert_array_equal(ea[k], eb[k])
    with pytest.raises(WorldsimError, match="jobs"):
        run_recipe(recipe, tmp_path / "c", jobs=0)


def test_a_doom_recipe_gives_each_part_its_doom_settings():
    from envs.doom import DoomConfig
    from envs.recipe import part_doom

    recipe = load_recipe("doom_v1")
    assert recipe.env == "doom" and recipe.doom.wad == "freedoom2.wad"
    wads = {split: {part_doom(recipe, p).wad for p in recipe.parts if p.split == split} for split in ("train", "val")}
    assert wads == {"train": {"freedoom2.wad"}, "val": {"freedoom1.wad"}}  # held-out levels
    part = RecipePart("x", "train", "explore", 0, 1, doom={"map": "MAP07", "tics_per_step": 3})
    assert part_doom(RecipeConfig(env="doom"), part) == DoomConfig(map="MAP07", tics_per_step=3)
    typo = RecipePart("x", "train", "explore", 0, 1, doom={"mapp": 1})
    with pytest.raises(WorldsimError, match="unknown doom setting of recipe part x 'mapp'"):
        check_disjoint_seeds(RecipeConfig(env="doom", parts=[typo]))
    wrong_type = RecipePart("x", "train", "explore", 0, 1, doom={"tics_per_step": "two"})
    with pytest.raises(WorldsimError, match="recipe part x: doom: Value 'two' of type 'str' could not be converted"):
        check_disjoint_seeds(RecipeConfig(env="doom", parts=[wrong_type]))
    with pytest.raises(WorldsimError, match="a doom section needs env: doom"):
        check_disjoint_seeds(RecipeConfig(parts=[RecipePart("x", "train", "explore", 0, 1, doom={"map": "MAP01"})]))


def test_a_30fps_recipe_passes_through_the_15fps_episodes_poses_at_every_second_frame(tmp_path):
    """The shipped 30 frames/s recipe's world, recorded through the recipe: the same world seeds and
    policies as at 15 frames/s, each drawn row held two frames with half its mouse pixels, so the
    camera is where it was at 15 frames/s on every second frame (up to turning in two half steps)
    and a light press lasts as long in seconds."""
    world30 = load_recipe("builtin_v5_30fps").world
    assert world30.controller.fps == 30.0
    parts = [
        RecipePart("explore", "train", "explore_lights", 10, 2),
        RecipePart("back", "val", "go_and_return", 500, 1),
    ]
    run_recipe(RecipeConfig(frame_size=[16, 16], episode_len=33, parts=parts), tmp_path / "15", preview=False)
    run_recipe(
        RecipeConfig(frame_size=[16, 16], episode_len=65, world=world30, parts=parts), tmp_path / "30", preview=False
    )
    for part, episodes in (("train/explore", 2), ("val/back", 1)):
        a, b = RolloutDataset(tmp_path / "15" / part), RolloutDataset(tmp_path / "30" / part)
        assert (a.meta.fps, b.meta.fps) == (15.0, 30.0) and b.meta.controller().fps == 30.0
        for i in range(episodes):
            ea, eb = a.load(i, ("c2w", "keys", "mouse")), b.load(i, ("c2w", "keys", "mouse"))
            np.testing.assert_array_equal(eb["c2w"][::2, :3, :3], ea["c2w"][:, :3, :3])
            np.testing.assert_allclose(eb["c2w"][::2, :3, 3], ea["c2w"][:, :3, 3], atol=0.1)
            assert np.abs(eb["c2w"][1::2, :3, 3] - ea["c2w"][:-1, :3, 3]).max() > 0.1  # halfway frames between
            np.testing.assert_array_equal(eb["keys"][:-1:2], ea["keys"][:-1])
            np.testing.assert_array_equal(eb["keys"][1::2], ea["keys"][:-1])
            np.testing.assert_allclose(eb["mouse"][:-1].reshape(-1, 2, 2).sum(1), ea["mouse"][:-1], atol=1e-5)
