"""``worldsim-train``: the training stages behind one hydra app (``stage=codec`` | ``teacher`` |
``ode_pairs`` | ``student_ode`` | ``student_dmd``).

worldsim-train stage=codec data=data/builtin_v1/train val_data=data/builtin_v1/val out=runs/codec
worldsim-train stage=teacher out=runs/teacher            # the AR teacher on the shipped codec's latents
worldsim-train stage=teacher out=runs/teacher resume=true  # continue exactly where it stopped
torchrun --nproc_per_node=2 -m worldsim.cli.train stage=teacher ...   # DDP (gloo on CPU)
worldsim-train stage=ode_pairs          # causal ODE pairs from the real-time teacher (runs/ode_pairs)
worldsim-train stage=student_ode        # the few-step student regresses them (runs/student_ode)
worldsim-train stage=student_dmd        # Self-Forcing DMD on the student's own rollouts (runs/student_dmd)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore

from worldsim.core.atomic import require_writable_dir
from worldsim.core.config import CONFIG_DIR, one_line_config_errors, to_schema
from worldsim.core.errors import clean_errors, unknown_name
from worldsim.train.codec_stage import train_codec
from worldsim.train.config import TrainConfig
from worldsim.train.distributed import shutdown
from worldsim.train.ode_pairs import make_ode_pairs
from worldsim.train.student_dmd_stage import train_student_dmd
from worldsim.train.student_ode_stage import train_student_ode
from worldsim.train.teacher_stage import train_teacher

ConfigStore.instance().store(name="train_schema", node=TrainConfig)

STAGES: dict[str, Callable[[TrainConfig], dict[str, float]]] = {
    "codec": train_codec,
    "teacher": train_teacher,
    "ode_pairs": make_ode_pairs,
    "student_ode": train_student_ode,
    "student_dmd": train_student_dmd,
}


@one_line_config_errors("train")
@hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name="train")
@clean_errors
def _main(cfg: Any) -> None:
    tc = to_schema(cfg, TrainConfig)
    if tc.stage not in STAGES:
        raise unknown_name("training stage", tc.stage, STAGES)
    require_writable_dir(tc.out, "out")
    try:
        summary = STAGES[tc.stage](tc)
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        shutdown()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{tc.stage}: " + ", ".join(f"{k} {v:.4g}" for k, v in summary.items()) + f" -> {tc.out}")


def main() -> None:
    """``worldsim-train stage=<name>`` (hydra overrides on the command line; torchrun for DDP)."""
    _main()


if __name__ == "__main__":
    main()
