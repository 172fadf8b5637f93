"""The training loop every stage shares: learning-rate schedule, clipping, EMA, CSV log,
progress bar, periodic evaluation, checkpoints with exact resume, and a clean stop on Ctrl-C.
The module, its EMA and the optimizer live on the run's device (``cfg.device``); files are written
from CPU copies, so a run saved on a GPU resumes on the CPU and the other way round.

A stage supplies ``loss_at(step)`` (a pure function of the step for its data and noise, so a
resumed run replays the same batches), ``periodic(step)`` (metrics to log, usually empty) and
``export(step, metrics)`` (its usable product, e.g. the EMA codec folder).
"""

from __future__ import annotations

import copy
import csv
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from tqdm import tqdm

from worldsim.core.atomic import write_text
from worldsim.core.errors import WorldsimError
from worldsim.core.optim import lr_at
from worldsim.core.precision import describe_bf16, resolve_bf16
from worldsim.train.config import TrainConfig
from worldsim.train.distributed import Dist, average_gradients, barrier, weights_in_sync, wrap
from worldsim.train.state import init_weights, load_train_state, save_train_state

M = TypeVar("M", bound=torch.nn.Module)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _drop_rows_after(log_path: Path, step: int) -> None:
    """Keep the header and the rows up to ``step`` of a run's ``log.csv`` (atomically): a run
    killed between checkpoints logged steps its resume replays, and each step is logged once."""
    lines = log_path.read_bytes().decode("utf-8").splitlines(keepends=True)  # keeps csv's \r\n
    kept = lines[:1] + [row for row in lines[1:] if row.strip() and int(row.split(",", 1)[0]) <= step]
    if len(kept) < len(lines):
        write_text(log_path, "".join(kept))


class TrainLoop(Generic[M]):
    """Owns the optimizer, the EMA copy and the run folder of one stage."""

    def __init__(
        self,
        cfg: TrainConfig,
        module: M,
        metric_names: list[str],
        d: Dist,
        adapt_init: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
        identity: dict[str, Any] | None = None,
        param_groups: list[dict[str, Any]] | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
        ddp: bool = True,
    ):
        """``identity``: what must match to resume, when the stage knows more than ``cfg`` does
        (the sha256 of a teacher it distils); ``cfg.identity()`` by default. ``param_groups``:
        AdamW groups of ``module``'s parameters, each clipped on its own and with an optional
        ``lr_scale`` on the schedule (DMD's generator and fake score); one group by default.
        ``ddp=False``: the stage calls submodules of ``module`` rather than ``module`` itself,
        so under torchrun the loop averages the gradients across ranks after each backward."""
        self.cfg, self.module, self.dist = cfg, module.to(d.device), d
        self.identity = identity if identity is not None else cfg.identity()
        self.metric_names = metric_names
        self.ema: M = copy.deepcopy(module).requires_grad_(False)
        self.net = wrap(module, d) if ddp else module  # what the loss calls: DDP averages gradients across ranks
        self.sync_gradients = not ddp and d.world > 1
        groups = param_groups if param_groups is not None else [{"params": list(module.parameters())}]
        self.opt = torch.optim.AdamW(groups, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, betas=betas)
        self.out = Path(cfg.out)
        self.step = 0
        # The learning-rate schedule belongs to the run: set by its first leg, kept on resume.
        self.schedule_steps = cfg.schedule_steps or cfg.steps
        if cfg.resume:
            self.step, recorded = load_train_state(self.out / "last", module, self.ema, self.opt, self.identity)
            if recorded is not None:
                if cfg.schedule_steps and cfg.schedule_steps != recorded:
                    raise WorldsimError(
                        f"cannot resume {self.out / 'last'}: its learning-rate schedule is {recorded} steps "
                        f"long, schedule_steps={cfg.schedule_steps} was given"
                    )
                self.schedule_steps = recorded
        elif (self.out / "last").exists():
            raise WorldsimError(
                f"{self.out} already holds a run; pass resume=true to continue it or choose another out="
            )
        elif cfg.init_from:
            loaded = init_weights(cfg.init_from, module, self.ema, adapt_init)
            if d.is_main:
                print(f"{cfg.stage}: weights from {loaded}")
        barrier(d)  # nobody writes before every rank has read
        if d.is_main:
            print(f"{cfg.stage}: {describe_bf16(cfg.bf16, str(d.device))}")

    def autocast(self) -> torch.autocast:
        """The stage's bf16 autocast context (``cfg.bf16``; None = where the device has native bf16)."""
        on = resolve_bf16(self.cfg.bf16, str(self.dist.device))
        return torch.autocast(self.dist.device.type, dtype=torch.bfloat16, enabled=on)

    def _save(self) -> None:
        if self.dist.is_main:
            save_train_state(
                self.out / "last",
                self.module,
                self.ema,
                self.opt,
                self.step,
                self.identity,
                self.schedule_steps,
            )

    def run(
        self,
        loss_at: Callable[[int], tuple[torch.Tensor, int]],
        periodic: Callable[[int], dict[str, float]],
        export: Callable[[int, dict[str, float]], None],
    ) -> dict[str, float]:
        """Train from the current step to ``cfg.steps``: ``loss_at(step) -> (loss, samples)`` each
        step, ``periodic(step) -> metrics`` for validation and previews, ``export(step, metrics)``
        for the loadable artefact; logs to ``log.csv``, checkpoints ``last/`` (Ctrl-C and SIGTERM
        save too) -> the last metrics."""
        cfg, main = self.cfg, self.dist.is_main
        self.out.mkdir(parents=True, exist_ok=True)
        log_path = self.out / "log.csv"
        new_log = not (cfg.resume and log_path.exists())
        if main and not new_log:
            _drop_rows_after(log_path, self.step)
        log = open(log_path, "w" if new_log else "a", newline="") if main else None
        writer = csv.writer(log) if log else None
        if writer and new_log:
            writer.writerow(["step", "loss", "lr", "items_per_s", *self.metric_names])
        summary: dict[str, float] = {}
        bar = tqdm(total=cfg.steps, initial=self.step, desc=cfg.stage, unit="step", disable=not main)
        t_last, seen, last_loss = time.perf_counter(), 0, float("nan")
        # SIGTERM (kill, a scheduler's stop) saves like Ctrl-C does.
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            while self.step < cfg.steps:
                for group in self.opt.param_groups:
                    group["lr"] = lr_at(self.step, self.schedule_steps, cfg.optim) * group.get("lr_scale", 1.0)
                loss, items = loss_at(self.step)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                if self.sync_gradients:
                    average_gradients(self.module, self.dist)
                for group in self.opt.param_groups:
                    torch.nn.utils.clip_grad_norm_(group["params"], cfg.optim.grad_clip)
                self.opt.step()
                # EMA with warm-up: early on the average follows the weights closely instead of
                # keeping most of the initialisation (0.999 ** 500 = 0.6 of it at step 500).
                decay = min(cfg.optim.ema_decay, (1 + self.step) / (10 + self.step))
                with torch.no_grad():
                    for pe, pm in zip(self.ema.parameters(), self.module.parameters(), strict=True):
                        pe.lerp_(pm, 1 - decay)
                self.step += 1
                seen += items * self.dist.world
                last_loss = loss.item()
                metrics = periodic(self.step)
                summary.update(metrics)
                if writer and log and (self.step % cfg.log_every == 0 or metrics):
                    now = time.perf_counter()
                    cells = [f"{metrics[m]:.4f}" if m in metrics else "" for m in self.metric_names]
                    lr = self.opt.param_groups[0]["lr"]
                    writer.writerow(
                        [self.step, f"{last_loss:.5f}", f"{lr:.3g}", f"{seen / (now - t_last):.1f}", *cells]
                    )
                    log.flush()
                    t_last, seen = now, 0
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.4f}", **{k: f"{v:.3g}" for k, v in metrics.items()})
                if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps:
                    self._save()
                    if main:
                        export(self.step, summary)
        except KeyboardInterrupt:
            self._save()
            if main:
                print(f"\ninterrupted at step {self.step}: saved {self.out / 'last'}; resume with resume=true")
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            bar.close()
            if log:
                log.close()
        summary["step"] = self.step
        summary["final_loss"] = last_loss
        if self.dist.world > 1:
            summary["ranks_in_sync"] = float(weights_in_sync(self.module, self.dist))
        return summary
