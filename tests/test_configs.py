import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import envs.record  # noqa: F401  (registers the record schema)
import worldsim.cli.play  # noqa: F401  (registers the play schema)
import worldsim.cli.rollout  # noqa: F401  (registers the rollout schema)
import worldsim.cli.train  # noqa: F401  (registers the train schema)
import worldsim.eval.evaluate  # noqa: F401  (registers the eval schema)
from envs.builtin import BuiltinWorldConfig
from envs.recipe import RecipeConfig
from worldsim.core.config import CONFIG_DIR, override_error, to_schema
from worldsim.core.controller import CameraControllerConfig
from worldsim.core.errors import WorldsimError
from worldsim.diffusion.sampler import SamplerConfig, SamplerOverrides
from worldsim.model.codec import CodecConfig
from worldsim.model.dit import WorldModel, WorldModelConfig

ROOT = Path(__file__).resolve().parent.parent

# Group folder -> the dataclass its YAML files mirror.
SCHEMAS = {
    "world": BuiltinWorldConfig,
    "controller": CameraControllerConfig,
    "model": WorldModelConfig,
    "codec": CodecConfig,
    "sampler": SamplerOverrides,  # teacher.yaml is also a complete SamplerConfig (checked below)
    "recipe": RecipeConfig,
}
PRIMARY = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
GROUP_FILES = sorted(p for p in CONFIG_DIR.glob("*/*.yaml") if p.parent.name != "stage")
STAGE_FILES = sorted(p.stem for p in CONFIG_DIR.glob("stage/*.yaml"))


@pytest.mark.parametrize("name", PRIMARY)
def test_every_primary_config_composes_into_its_dataclass(name):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name=name)
    obj = OmegaConf.to_object(cfg)
    assert obj is not None and to_schema(cfg, type(obj)) == obj  # no key the schema does not know


@pytest.mark.parametrize("path", GROUP_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_group_config_composes_and_matches_its_dataclass(path: Path):
    group = path.parent.name
    schema = SCHEMAS[group]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name=f"{group}/{path.stem}")
    node = OmegaConf.merge(OmegaConf.structured(schema), cfg.get(group) or {})  # raises on unknown keys
    assert isinstance(OmegaConf.to_object(node), schema)


def test_the_sampler_group_is_shared_and_named_as_the_sampler_config():
    from dataclasses import fields

    assert [f.name for f in fields(SamplerOverrides)] == [f.name for f in fields(SamplerConfig)]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        own = compose(config_name="sampler/checkpoint")
        teacher = compose(config_name="sampler/teacher")
        train = OmegaConf.to_object(compose(config_name="train", overrides=["stage=teacher"]))
    own_node = OmegaConf.merge(OmegaConf.structured(SamplerOverrides), own.get("sampler") or {})
    assert OmegaConf.to_object(own_node) == SamplerOverrides()
    preset = SamplerConfig(**OmegaConf.to_container(teacher["sampler"]))  # complete: every field given
    assert train.teacher.sampler == preset and (preset.num_steps, preset.mode) == (8, "few_step")


@pytest.mark.parametrize("name", ["play", "eval", "rollout", "record", "train"])
def test_every_command_shares_the_quiet_hydra_defaults(name):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name=name, return_hydra_config=True)
    assert cfg.hydra.run.dir == "." and cfg.hydra.output_subdir is None
    assert cfg.hydra.job_logging.root.level == "ERROR" and cfg.hydra.hydra_logging.root.level == "ERROR"
    assert "hydra" not in OmegaConf.load(CONFIG_DIR / f"{name}.yaml")  # written once, in base.yaml


@pytest.mark.parametrize("name", ["play", "eval", "rollout", "train"])
def test_bf16_is_null_by_default_in_every_command(name):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        assert compose(config_name=name).bf16 is None  # on where the device computes bf16 natively


@pytest.mark.parametrize("name", ["play", "eval", "rollout", "record"])
def test_every_command_with_a_doom_section_takes_its_levels_on_the_command_line(name):
    """A DOOM model starts on its own training levels unless ``doom.wad`` or ``doom.map`` is set
    (``envs.record.world_config_for``): both unset by default, and either can be set."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        assert (compose(config_name=name).doom.wad, compose(config_name=name).doom.map) == (None, None)
        cfg = compose(config_name=name, overrides=["doom.wad=freedoom1.wad", "doom.map=E1M2"])
    assert (cfg.doom.wad, cfg.doom.map) == ("freedoom1.wad", "E1M2")


@pytest.mark.parametrize("stage", STAGE_FILES)
def test_every_training_stage_preset_composes_and_names_a_known_stage(stage):
    from worldsim.cli.train import STAGES
    from worldsim.train.config import TrainConfig

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name="train", overrides=[f"stage={stage}", "steps=7"])
    obj = to_schema(cfg, TrainConfig)
    # a preset is named after its stage, or is a variant of it (teacher_realtime: the teacher stage)
    assert isinstance(obj, TrainConfig) and obj.stage in STAGES
    assert obj.stage == stage or stage.startswith(obj.stage + "_")
    assert obj.steps == 7  # the command line wins over the preset


def test_a_typo_in_a_config_key_is_rejected():
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        with pytest.raises(Exception, match="num_episode"):
            compose(config_name="record", overrides=["num_episode=3"])
        cfg = compose(config_name="record", overrides=["world.controller.fps=30", "frame_size=96"])
    assert cfg.world.controller.fps == 30


@pytest.mark.parametrize(
    ("name", "override", "line"),
    [
        ("play", "checkpont=x", "unknown config key 'checkpont' (did you mean 'checkpoint'?) for PlayConfig"),
        (
            "train",
            "distill.free_chunk=3",
            "unknown config key 'distill.free_chunk' (did you mean 'distill.free_chunks'?) for DistillConfig",
        ),
        ("eval", "qqq=1", "unknown config key 'qqq' for EvalConfig"),
        ("train", "steps=abc", "steps: Value 'abc' of type 'str' could not be converted to Integer"),
        ("record", "world.controller.fps=fast", "world.controller.fps: Value 'fast' of type 'str' could not be"),
        ("rollout", "sampler=nope", "Could not find 'sampler/nope'; available options in 'sampler': checkpoint"),
        ("play", "checkpoint", "Error parsing override 'checkpoint'; missing EQUAL at '<EOF>'"),
    ],
)
def test_a_bad_override_is_one_line_naming_it(name, override, line):
    """What hydra would print as a report (and advice to add the key with ``+``) is one line."""
    got = override_error(name, [override])
    assert got is not None and "\n" not in got and line in got, got
    assert override_error(name, []) is None and override_error(name, ["--help"]) is None
    assert override_error(name, ["hydra.searchpath=[file:///elsewhere]", override]) is None  # hydra's to judge


def test_play_says_a_typo_in_one_line():
    env = dict(os.environ, SDL_VIDEODRIVER="offscreen")
    r = subprocess.run([sys.executable, "play.py", "checkpont=x"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr == "error: unknown config key 'checkpont' (did you mean 'checkpoint'?) for PlayConfig\n"


def test_a_key_added_with_plus_is_refused_not_dropped():
    """hydra's ``+key=`` bypasses the structured schema; ``to_schema`` (every command uses it) does not."""
    from envs.record import RecordConfig

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name="record", overrides=["+polcy=look_around", "+world.controller.speed=3"])
    with pytest.raises(
        WorldsimError, match=r"unknown config keys 'polcy' \(did you mean 'policy'\?\), 'world.controller.speed'"
    ):
        to_schema(cfg, RecordConfig)


@pytest.mark.parametrize("preset", ["tiny", "cpu"])
def test_model_presets_build(preset):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name=f"model/{preset}")
    mcfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(WorldModelConfig), cfg["model"]))
    # derived from the action encoder and the codec, not configured
    assert mcfg.action_dim is None and mcfg.latent_channels is None and mcfg.latent_size is None
    with pytest.raises(ValueError, match="latent shape is unset"):
        WorldModel(dataclasses.replace(mcfg, action_dim=9))
    model = WorldModel(dataclasses.replace(mcfg, action_dim=9, latent_channels=8, latent_size=(16, 16)))
    assert sum(p.numel() for p in model.parameters()) > 0
