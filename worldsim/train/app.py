"""``worldsim-train``: the training stages behind one hydra app (``stage=codec``; more stages later).

worldsim-train stage=codec data=data/builtin_v1/train val_data=data/builtin_v1/val out=runs/codec
worldsim-train stage=codec out=runs/codec resume=true      # continue exactly where it stopped
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from worldsim.config import CONFIG_DIR
from worldsim.errors import clean_errors, unknown_name
from worldsim.train.codec_stage import CodecTrainConfig, train_codec

ConfigStore.instance().store(name="train_schema", node=CodecTrainConfig)

STAGES: dict[str, Callable[[Any], dict[str, float]]] = {"codec": train_codec}


@hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name="train")
@clean_errors
def _main(cfg: Any) -> None:
    tc: CodecTrainConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    if tc.stage not in STAGES:
        raise unknown_name("training stage", tc.stage, STAGES)
    try:
        summary = STAGES[tc.stage](tc)
    except KeyboardInterrupt:
        sys.exit(130)
    print(f"{tc.stage}: " + ", ".join(f"{k} {v:.4g}" for k, v in summary.items()) + f" -> {tc.out}/last")


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
