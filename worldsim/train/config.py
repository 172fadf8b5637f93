"""The one typed schema behind ``worldsim-train`` (all stages), and what each stage must match to resume.

Every default is written here, once; ``worldsim/configs/train.yaml`` only selects config groups.

Stage presets live in ``worldsim/configs/stage/<name>.yaml`` (steps, batch size, learning rate, out);
``worldsim-train stage=teacher`` selects one. Fields a stage does not use are ignored by it and
left out of its resume identity.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from worldsim.core.optim import OptimConfig
from worldsim.diffusion.sampler import SamplerConfig
from worldsim.model.codec import CodecConfig
from worldsim.model.dit import WorldModelConfig


@dataclass
class TeacherConfig:
    """What the AR teacher stage needs beyond the model: its codec, encoder and data mixing."""

    codec_path: str = "assets/codec_builtin_v1"  # a folder written by stage=codec (codec.json)
    encoder: str = "keyboard_mouse"  # action encoder registry name
    objective: str = "diffusion_forcing"  # diffusion_forcing | teacher_forcing (worldsim/train/objectives.py)
    clean_context_prob: float = 0.7  # diffusion forcing: share of samples with clean context chunks
    # Diffusion forcing: the other samples' context chunks are noised to U(0, this). Below 1 the
    # teacher learns on lightly noised context, what the sampler's context_sigma feeds it.
    context_sigma_max: float = 1.0
    context_chunks: int = 2  # clean chunks before the generated one (the rolling window)
    memory_prob: float = 0.5  # share of samples whose oldest context chunk is a retrieved earlier view
    memory_top: int = 3  # the retrieved chunk is drawn from the best-overlapping few
    # How the retrieved chunk is scored: "monte_carlo" (teachers v1 and v2: fov_overlap of random
    # points against each candidate's middle pose) or "bank" (the play-time memory bank's: its
    # fixed view points, each chunk placed by its newest pose, coverage minus the distance term;
    # worldsim/memory/bank.py), so training retrieves what play retrieves.
    memory_scoring: str = "monte_carlo"
    # Share of memory clips drawn from the revisit clips: those whose generated chunk's view an
    # earlier chunk covers by at least ``revisit_min`` while no chunk of the recent context covers
    # ``revisit_context_max`` of it (bank scoring): only the retrieved chunk shows what is to be drawn.
    revisit_prob: float = 0.0
    revisit_min: float = 0.5
    revisit_context_max: float = 0.3
    action_drop: float = 0.1  # share of samples trained with null actions (classifier-free guidance)
    camera_drop: float = 0.25  # share of samples trained without camera rays (actions must carry motion)
    # Share of training samples drawn from the clips whose generated chunk shows the effect of a
    # press of one of ``focus_keys`` (key names of the data), for actions that are rare in the
    # data but change the whole frame, such as the built-in world's light key. 0: uniform clips.
    focus_keys: list[str] = field(default_factory=list)
    focus_prob: float = 0.0
    # Normalise latents with the statistics of the init_from checkpoint, which its weights were
    # trained with, instead of recomputing them from this run's data (which the runs of the
    # shipped teacher did: each leg's data set its own).
    stats_from_init: bool = False
    # Weight in the flow loss of a generated frame whose true mean pixel value (0-255) is below
    # ``dark_mean`` (night in the built-in world); other frames weigh 1, and the loss stays a
    # weighted mean. Small bright details of a dark frame (lit landmarks) are a small share of an
    # unweighted latent loss.
    dark_mean: float = 60.0
    dark_weight: float = 1.0
    # Which frame's darkness sets a generated frame's weight: "target", the frame itself; or
    # "context", the last frame of the chunk before it in the clip (a clip's first chunk weighs
    # 1), so that every frame of a chunk weighs by what the network reads before it. A weight that
    # depends only on the network's inputs leaves the best prediction for those inputs as it was
    # (weights by the target's darkness favour night wherever the light is uncertain).
    dark_weight_by: str = "target"
    # Plücker translations are divided by max(this, max |t|) (latest), or by this (chunk, session)
    translation_scale_m: float = 8.0
    # What the rays are relative to (worldsim/inference/context.py): "latest" (teacher v1: the
    # newest context frame, recomputed every chunk), "chunk" (teacher v2: each chunk's own
    # reference, cacheable) or "session" (the episode's first frame, cacheable).
    camera_reference: str = "latest"
    preview_every: int = 500  # steps between rollout previews (contact sheet + rollout PSNR)
    # The sampler of the previews and the one written into the exported checkpoint, which the
    # engine then plays with. worldsim-train selects the preset worldsim/configs/sampler/teacher.yaml
    # (the shipped teacher's: few_step, 8 steps), where its values are written.
    sampler: SamplerConfig = field(default_factory=SamplerConfig)


@dataclass
class CodecTrainConfig:
    """How the codec stage trains beyond its network: which part learns and how frames weigh."""

    # Train the decoder alone (needs init_from): the latent space stays exactly as it was, so
    # every teacher trained on this codec's latents keeps working with the new decoder.
    freeze_encoder: bool = False
    dark_mean: float = 60.0  # a frame whose mean pixel value (0-255) is below this is dark
    dark_weight: float = 1.0  # a dark frame's weight in the loss (light frames weigh 1)
    # Weight of a per-frame, per-channel loss on the error of the mean and of the contrast (std):
    # L1 + MSE averages over pixels, so a small bias in a dark frame's brightness costs little.
    moment_weight: float = 0.0
    # Where a decoder of other widths than init_from's (codec.decoder_channels, with
    # freeze_encoder) starts: "scratch" where shapes differ, or "slice": init_from's decoder cut
    # to the new widths, keeping at each scale the channels the next layer reads most
    # (codec_stage.slice_decoder), so it starts near the function it replaces.
    decoder_init: str = "scratch"


@dataclass
class DistillConfig:
    """The student stages (reference.md §6): causal ODE pairs from an AR teacher
    (``stage=ode_pairs``), then the few-step student regressing them (``stage=student_ode``).
    The student has its teacher's architecture, conditioning, codec and action encoder; the
    ``model`` and ``codec`` groups are not used by these stages."""

    teacher: str = "assets/teacher_builtin_v2"  # exported AR teacher with a cacheable conditioning
    # ode_pairs: the teacher integrates the flow ODE with ode_steps deterministic Euler steps
    # (shifted schedule) from the noise, on true clean context, and the state is stored at every
    # level of the grid_steps-step schedule (the levels student samplers of 1, 2, 4 ... steps
    # start their steps from), with the end point. ode_steps must be a multiple of grid_steps, so
    # the grid's levels lie on the teacher's path.
    ode_steps: int = 48
    grid_steps: int = 4
    num_pairs: int = 4096  # pairs from the clips of ``data`` (clip mixing: the ``teacher`` group)
    num_val_pairs: int = 256  # pairs from the clips of ``val_data``
    pairs_per_shard: int = 64  # one file per shard; a stopped run resumes at the first missing shard
    # student_ode: the folder written by stage=ode_pairs (its pairs.json names the teacher)
    pairs: str = "runs/ode_pairs"
    student_steps: int = 2  # the student's sampler steps; must divide the pairs' grid_steps
    preview_every: int = 500  # steps between rollout previews on held-out episodes
    # student_dmd (Self-Forcing distribution matching on the student's own rollouts): each
    # iteration the student generates rollout_chunks chunks after a true context from the
    # clips of ``data``, every chunk stopping at a random step of its sampler; the fake score
    # (a copy of the teacher) learns those samples every iteration, the student takes the DMD
    # step every generator_every-th. Scores read each chunk as a rolling cache would hold it.
    rollout_chunks: int = 8
    generator_every: int = 5
    fake_lr_scale: float = 0.2  # the fake score's learning rate relative to optim.lr
    real_guidance: float = 1.0  # classifier-free guidance of the real score on actions (1 = off)
    dmd_sigma_min: float = 0.02  # DMD noise levels: U(min, max), then shifted like the sampler
    dmd_sigma_max: float = 0.98
    beta1: float = 0.0  # AdamW's first-moment decay for both networks (Self-Forcing: 0)
    # Long rollouts (Self-Forcing++'s remedy for drift past the teacher's horizon): before the
    # DMD window the student rolls out more chunks on its own outputs without gradient, U{0 ..
    # free_chunks} of the clip's recorded inputs (the clips grow by free_chunks chunks); with
    # probability idle_prob the player stands still instead (nothing pressed, the last context
    # pose held) for U{0 .. idle_chunks} chunks and the window, which no recording needs.
    free_chunks: int = 0
    idle_prob: float = 0.0
    idle_chunks: int = 0
    # The rollouts' context noise (the student's sampler.context_sigma, exported with it); the
    # scores read the clean context noised to the same level.
    context_sigma: float = 0.0
    # Weight of the still player's regression to the truth (ours; DMD's regression loss, Yin et
    # al. 2024, in the one place the truth needs no recording): the world does not change while
    # nothing is pressed and the pose is held, so every frame of a still rollout's window is the
    # last context frame. Added to the DMD loss of still iterations; 0 = off.
    still_regression: float = 0.0
    # Weight of the recorded rollouts' regression to the clip's frames (ours): the window of a
    # rollout that followed the clip's inputs and poses regresses (MSE, normalised latents) to
    # the frames recorded with them, against DMD's trade of PSNR to the truth for sharpness.
    # Added to the DMD loss of recorded iterations; 0 = off.
    recorded_regression: float = 0.0
    # Where each rolled-out chunk's keys and values come from, exported as the student's sampler
    # cache_write (worldsim.diffusion.sampler: clean_pass, or last_step: its last denoising pass,
    # which needs the schedule's last step to start at context_sigma), and the student's sampler
    # shift (None: the teacher's; 2 steps at context_sigma c: c / (1 - c) for last_step).
    cache_write: str = "clean_pass"
    student_shift: float | None = None
    # Where a focus clip (teacher.focus_keys, teacher.focus_prob) has its press: false, in the
    # window's last chunk (the chunk a teacher clip generates); true, anywhere in the DMD window,
    # so that the chunks after the press, while a long press still holds the key, are trained too.
    focus_window: bool = False
    # Share of the still rollouts (idle_prob) whose chunks after the first read the last true
    # context chunk as a retrieved memory chunk (ours), the view the play-time bank brings back to
    # a player standing still; the scores read it as the rollout did. 0 = off.
    still_memory_prob: float = 0.0
    # Share of the still rollouts in which the player presses ``still_press_key`` once (ours):
    # held U{1 .. still_press_frames} frames from a uniform generated frame between
    # still_press_frames frames before the DMD window and its last frame, as the stability
    # evaluation's presses come (a still player toggling the light). Judged by the scores alone:
    # the still regression is off for them (the truth after a toggle is not recorded), and no
    # chunk from the press on reads memory (the play-time bank's state flips with the press;
    # it would bring the press's own chunk back once that is older than the window, which the
    # rollout does not give). The key must not move the camera, and with still_memory_prob it
    # must be the bank's state key. 0 = off.
    still_press_prob: float = 0.0
    still_press_key: str = "l"
    still_press_frames: int = 8
    # Share of the still rollouts in which the player turns in place instead (ours): nothing
    # pressed, the mouse at a constant yaw rate uniform in (0, still_turn_deg_per_s] degrees per
    # second either way, from the first generated chunk through the window (the turning
    # evaluation's input: 45 degrees/s for 2.1 s), so the window shows views the student made
    # itself after turning away from its context. Judged by the scores alone (the truth of a
    # turn is not recorded): no still regression, no press, and no memory unless still_turn_memory.
    # 0 = off.
    still_turn_prob: float = 0.0
    still_turn_deg_per_s: float = 90.0
    # What a turning still player reads as memory (ours), as often as a still one reads it
    # (still_memory_prob), the scores reading it the same way; no still regression, no press:
    # "off", nothing; "held", the held view (the last true context chunk, the play-time bank's
    # anchor) for every chunk after the first while the turn takes the view away from it; "own",
    # the rollout's own first generated chunk for every chunk once that one is older than the
    # window (from chunk context_chunks + 1 on), as the play-time bank gives a turn the student's
    # own earlier chunks (docs/memory.md, "A memory adapter trained alone").
    still_turn_memory: str = "off"
    # Share of the recorded rollouts that are revisits (ours; issue 22's remedy): the clip is one
    # whose window ends on a view an earlier chunk of the episode (before the true context) covers
    # by at least ``teacher.revisit_min`` while no true context chunk covers
    # ``teacher.revisit_context_max`` of it, and every window chunk reads that earlier chunk (the
    # bank's best for the window's last view, its true latents, as the play-time bank holds a
    # session's start) through the rollout's memory slot, the scores reading it the same way. No
    # free chunks before the window. The window's frames whose view that chunk covers by at least
    # ``revisit_min`` regress to the clip's recorded frames with weight ``revisit_regression``,
    # which needs no fake score: the student steps on every revisit iteration (DMD joins on the
    # ``generator_every`` ones), and only the retrieved chunk shows what the regression asks for.
    # 0 = off.
    revisit_prob: float = 0.0
    revisit_regression: float = 1.0
    # Chunks a revisit rollout generates from the clip's recorded inputs, without gradient and
    # without memory, between the true context and the window (ours): the window then reads the
    # earlier view after the student's own chunks, as play reads it after a long rollout, and
    # neither the true context nor these chunks may cover teacher.revisit_context_max of the
    # window's last view. 0 = the window right after the true context.
    revisit_free_chunks: int = 0
    # Share of the other recorded rollouts (not revisits) that read a memory clip (ours): the clip's
    # first chunk is the earlier chunk of its episode the play-time bank scores best for the
    # window's last view (coverage less the distance term, as the teacher stage's
    # ``memory_scoring: bank`` memory clips; whatever its overlap, with any motion: turns, walks,
    # a view the context already shows), then ``revisit_free_chunks`` free chunks and the window,
    # every window chunk reading that chunk as a revisit's does, and EVERY window frame regresses
    # to the clip's recorded frames with weight ``revisit_regression`` (logged as revisit_mse):
    # where the retrieved view does not show what the camera sees, the truth says so. Revisits
    # alone teach that a retrieved chunk is what to draw (a turn with memory on then draws the
    # view it turns from, docs/memory.md). 0 = off.
    recorded_memory_prob: float = 0.0
    # Give the student a memory embedding (ours; worldsim.model.dit, WorldModelConfig.memory_embedding):
    # a learned vector, zero at first, that marks the chunks its rollouts read as retrieved, so
    # that it can tell a retrieved chunk (rays relative to the generated chunk's reference) from
    # the oldest context chunk it stands in for (rays relative to its own). The scores read
    # memory as the teacher was trained to. A start that has one keeps it either way.
    memory_embedding: bool = False
    # The embedding's learning rate relative to optim.lr: a vector that starts at zero has far to
    # go in a short fine-tuning run, where AdamW moves each weight by about the learning rate per step.
    memory_embedding_lr_scale: float = 100.0
    # Give the student a memory adapter of this rank (ours; worldsim.model.dit, MemoryAdapter):
    # low-rank updates of every block's linears on retrieved frames only, zero at first. 0 = none.
    # A start that has one keeps it either way.
    memory_adapter_rank: int = 0
    # The adapter's learning rate relative to optim.lr (its up-projections start at zero).
    memory_adapter_lr_scale: float = 10.0
    # Train only the student's memory parameters, its embedding and adapter (ours): every other
    # weight stays its start's, so that with no retrieved chunk the student computes exactly
    # what its start did (its turning, idle view and speed are the start's), and what the run
    # changes is how it reads a retrieved chunk. Needs a memory embedding or adapter.
    memory_only: bool = False
    # A student for another time step than its teacher's (ours): true lets the DMD data's camera
    # controller differ from the teacher's (e.g. builtin_v5_30fps, 30 frames/s, for a teacher
    # trained at 15) and exports the student with the data's, the motion per frame its rollouts
    # and recorded regression saw; the teacher scores them at that rate as they come. false: a
    # differing controller is refused (one model, one meaning of an input).
    data_controller: bool = False


@dataclass
class TrainConfig:
    """``worldsim-train``'s whole config (``worldsim/configs/train.yaml`` mirrors it); ``stage`` picks
    the stage and its preset."""

    stage: str = "codec"
    data: str = "data/builtin_v1/train"
    val_data: str | None = "data/builtin_v1/val"
    out: str = "runs/codec"
    steps: int = 3000
    batch_size: int = 16
    seed: int = 0
    bf16: bool | None = None  # bf16 autocast; None = on where the device computes bf16 natively
    # Where the network trains: "cpu", "cuda" or "cuda:<index>" (under torchrun each rank takes
    # cuda:<LOCAL_RANK>). Batches are built on the CPU either way, so a run may resume on another device.
    device: str = "cpu"
    # Processes that build batches ahead of the training step (0: in the training process).
    # Batch i is a pure function of (seed, i), so the count never changes what is trained.
    num_workers: int = 0
    # Length of the learning-rate schedule (warm-up, then cosine decay to 0); 0 = ``steps`` of the
    # run's first leg. Recorded with the run: a resumed leg keeps it whatever its ``steps`` says.
    schedule_steps: int = 0
    log_every: int = 10
    val_every: int = 250
    val_batches: int = 4
    ckpt_every: int = 250
    resume: bool = False
    # Start a new run from earlier weights: a run's training state (<out>/last: weights and EMA) or
    # an exported folder (the stage's network file seeds both); optimizer, step and schedule start fresh.
    init_from: str = ""
    codec: CodecConfig = field(default_factory=CodecConfig)
    model: WorldModelConfig = field(default_factory=WorldModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    codec_train: CodecTrainConfig = field(default_factory=CodecTrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def identity(self) -> dict[str, Any]:
        """What must match to resume: everything that shapes this stage's trajectory."""
        d = asdict(self)
        if self.codec.decoder_channels is None:  # runs from before the option keep their identity
            d["codec"].pop("decoder_channels")
        per_run: tuple[str, ...] = (
            "steps",
            "resume",
            "out",
            "log_every",
            "val_every",
            "val_batches",
            "ckpt_every",
            "val_data",
        )
        per_run += ("schedule_steps",)  # recorded in the run's state instead (loop.py)
        for k in (*per_run, "device", "num_workers"):
            d.pop(k)
        if not self.init_from:  # runs started from scratch keep the identity they had before the option
            d.pop("init_from")
        d["teacher"].pop("preview_every")
        d["teacher"].pop("sampler")
        if self.teacher.context_sigma_max == 1.0:  # runs from before the option keep their identity
            d["teacher"].pop("context_sigma_max")
        if self.teacher.focus_prob == 0.0:  # uniform clips: runs from before the option keep their identity
            d["teacher"].pop("focus_keys")
            d["teacher"].pop("focus_prob")
        if self.teacher.camera_reference == "latest":  # runs from before the option keep their identity
            d["teacher"].pop("camera_reference")
        if self.teacher.memory_scoring == "monte_carlo":  # runs from before the option keep their identity
            d["teacher"].pop("memory_scoring")
        if self.teacher.revisit_prob == 0.0:  # runs from before the option keep their identity
            for k in ("revisit_prob", "revisit_min", "revisit_context_max"):
                d["teacher"].pop(k)
        if not self.teacher.stats_from_init:  # runs from before the option keep their identity
            d["teacher"].pop("stats_from_init")
        if self.teacher.dark_weight == 1.0:  # every frame weighs 1: runs from before the option keep their identity
            d["teacher"].pop("dark_mean")
            d["teacher"].pop("dark_weight")
        if self.teacher.dark_weight == 1.0 or self.teacher.dark_weight_by == "target":
            d["teacher"].pop("dark_weight_by")  # runs from before the option keep their identity
        if self.codec_train == CodecTrainConfig():  # runs from before the options keep their identity
            d.pop("codec_train")
        distill = d.pop("distill")
        if self.stage in DISTILL_STAGES:  # the teacher checkpoint gives model, codec and conditioning
            d["distill"] = {k: distill[k] for k in DISTILL_FIELDS[self.stage]}
            for k, off in DISTILL_OFF.items():  # runs from before the options keep their identity
                if k in d["distill"] and d["distill"][k] == off:
                    d["distill"].pop(k)
        unused = {
            "codec": ("model", "teacher"),
            "teacher": ("codec", "codec_train"),
            "ode_pairs": ("model", "codec", "codec_train", "optim", "init_from", "bf16"),
            "student_ode": ("model", "codec", "codec_train", "teacher"),
            "student_dmd": ("model", "codec", "codec_train"),
        }.get(self.stage, ())
        for k in unused:
            d.pop(k, None)
        if self.stage in CLIP_FIELDS:  # only the clip mixing of the teacher group is used
            d["teacher"] = {k: d["teacher"][k] for k in CLIP_FIELDS[self.stage] if k in d["teacher"]}
            if self.stage == "student_dmd" and self.distill.revisit_prob > 0:  # what a revisit rollout is
                d["teacher"].update(
                    revisit_min=self.teacher.revisit_min, revisit_context_max=self.teacher.revisit_context_max
                )
        return d


# The DMD options added after its first runs, left out of a run's identity at 0 (old runs resume).
LONG_ROLLOUT_FIELDS = (
    "free_chunks",
    "idle_prob",
    "idle_chunks",
    "context_sigma",
    "still_regression",
    "recorded_regression",
)
# The distill options added after the stages' first runs and the values that leave them out of a
# run's identity: the behaviour from before each option (old runs resume).
DISTILL_OFF: dict[str, object] = {
    **dict.fromkeys(LONG_ROLLOUT_FIELDS, 0),
    "cache_write": "clean_pass",
    "student_shift": None,
    "focus_window": False,
    "still_memory_prob": 0.0,
    "still_press_prob": 0.0,
    "still_press_key": "l",
    "still_press_frames": 8,
    "data_controller": False,
    "still_turn_prob": 0.0,
    "still_turn_deg_per_s": 90.0,
    "still_turn_memory": "off",
    "revisit_prob": 0.0,
    "revisit_regression": 1.0,
    "revisit_free_chunks": 0,
    "recorded_memory_prob": 0.0,
    "memory_embedding": False,
    "memory_embedding_lr_scale": 100.0,
    "memory_adapter_rank": 0,
    "memory_adapter_lr_scale": 10.0,
    "memory_only": False,
}
# What each student stage reads from the distill group (its resume identity).
DISTILL_FIELDS = {
    "ode_pairs": ("teacher", "ode_steps", "grid_steps", "num_pairs", "num_val_pairs", "pairs_per_shard"),
    "student_ode": ("teacher", "pairs", "student_steps"),
    "student_dmd": (
        "teacher",
        "student_steps",
        "rollout_chunks",
        "generator_every",
        "fake_lr_scale",
        "real_guidance",
        "dmd_sigma_min",
        "dmd_sigma_max",
        "beta1",
        *LONG_ROLLOUT_FIELDS,
        "cache_write",
        "student_shift",
        "focus_window",
        "still_memory_prob",
        "still_press_prob",
        "still_press_key",
        "still_press_frames",
        "data_controller",
        "still_turn_prob",
        "still_turn_deg_per_s",
        "still_turn_memory",
        "revisit_prob",
        "revisit_regression",
        "revisit_free_chunks",
        "recorded_memory_prob",
        "memory_embedding",
        "memory_embedding_lr_scale",
        "memory_adapter_rank",
        "memory_adapter_lr_scale",
        "memory_only",
    ),
}
DISTILL_STAGES = tuple(DISTILL_FIELDS)
# The teacher-group fields that choose the clips a student stage reads (DMD's rollouts start
# from recent true context only: a retrieved view would leave the window as the rollout goes).
CLIP_FIELDS = {
    "ode_pairs": (
        "memory_prob",
        "memory_top",
        "memory_scoring",
        "revisit_prob",
        "revisit_min",
        "revisit_context_max",
        "focus_keys",
        "focus_prob",
    ),
    "student_dmd": ("focus_keys", "focus_prob"),
}
